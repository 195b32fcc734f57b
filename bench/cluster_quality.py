"""Story matching quality on labelled data, measured the way the independent check does.

    python bench/cluster_quality.py [--data ../shared/data/uci-news/dev.jsonl] [--seeds 0,1,2]

For each seed: shuffle the articles, drop the labels, re-spread `published` evenly over 36 hours
in arrival order (the original timestamps leak the labels), run `storywire cluster`, and score
BCubed precision/recall/F1 and pairwise F1 against the gold stories. `--in-process` calls the
StoryMatcher directly (faster, for tuning; the CLI runs the same matcher).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "uci-news" / "dev.jsonl"
START = datetime(2014, 3, 10, tzinfo=UTC)
SPREAD = timedelta(hours=36)


def prepare(rows: list[dict], seed: int) -> tuple[list[dict], dict[str, str]]:
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    step = SPREAD / max(len(rows) - 1, 1)
    articles = [
        {
            "id": r["id"],
            "title": r["title"],
            "published": (START + step * i).isoformat(),
            "source": r.get("source", ""),
            "url": r.get("url", ""),
            **({"summary": r["summary"]} if r.get("summary") else {}),
        }
        for i, r in enumerate(rows)
    ]
    return articles, {r["id"]: r["story"] for r in rows}


def run_cli(articles: list[dict]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("".join(json.dumps(a) + "\n" for a in articles))
        cmd = [sys.executable, "-m", "bot", "cluster", str(src), "-o", str(out), "--quiet"]
        subprocess.run(cmd, check=True)
        return {o["id"]: o["story"] for o in map(json.loads, out.read_text().splitlines())}


def run_in_process(articles: list[dict]) -> dict[str, object]:
    from bot.stories.matcher import ArticleText, StoryMatcher

    matcher = StoryMatcher()
    out, merged_into = {}, {}
    for a in articles:
        text = ArticleText(
            a["title"],
            datetime.fromisoformat(a["published"]),
            a.get("summary", ""),
            a["source"],
            a.get("url", ""),
        )
        assignment = matcher.assign(text)
        out[a["id"]] = assignment.story_id
        for merge in assignment.merges:
            merged_into[merge.absorbed] = merge.survivor

    def final(story: object) -> object:
        while story in merged_into:
            story = merged_into[story]
        return story

    return {item: final(story) for item, story in out.items()}


def bcubed(pred: dict[str, object], gold: dict[str, str]) -> tuple[float, float, float]:
    by_pred, by_gold = defaultdict(set), defaultdict(set)
    for item, cluster in pred.items():
        by_pred[cluster].add(item)
    for item in pred:
        by_gold[gold[item]].add(item)
    precision = recall = 0.0
    for item in pred:
        p, g = by_pred[pred[item]], by_gold[gold[item]]
        both = len(p & g)
        precision += both / len(p)
        recall += both / len(g)
    n = len(pred)
    precision, recall = precision / n, recall / n
    return precision, recall, 2 * precision * recall / (precision + recall)


def pairwise_f1(pred: dict[str, object], gold: dict[str, str]) -> float:
    def pairs(labels: Counter) -> int:
        return sum(c * (c - 1) // 2 for c in labels.values())

    joint = Counter((pred[i], gold[i]) for i in pred)
    tp = pairs(joint)
    predicted, actual = pairs(Counter(pred.values())), pairs(Counter(gold[i] for i in pred))
    p = tp / predicted if predicted else 0.0
    r = tp / actual if actual else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", default="0", help="comma-separated shuffle seeds")
    parser.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        articles, gold = prepare(rows, seed)
        t0 = time.perf_counter()
        pred = run_in_process(articles) if args.in_process else run_cli(articles)
        elapsed = time.perf_counter() - t0
        p, r, f = bcubed(pred, gold)
        pf = pairwise_f1(pred, gold)
        results.append((p, r, f, pf))
        print(
            f"seed {seed}: BCubed P={p:.3f} R={r:.3f} F1={f:.3f}  pairwise F1={pf:.3f}  "
            f"stories {len(set(pred.values()))} (gold {len(set(gold.values()))})  "
            f"{len(pred) / elapsed:,.0f} articles/s{' (CLI, incl. start-up)' if not args.in_process else ''}"
        )
    if len(results) > 1:
        med = [statistics.median(x[i] for x in results) for i in range(4)]
        print(
            f"median: BCubed P={med[0]:.3f} R={med[1]:.3f} F1={med[2]:.3f}  pairwise F1={med[3]:.3f}"
        )


if __name__ == "__main__":
    main()
