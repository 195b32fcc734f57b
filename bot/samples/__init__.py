"""Bundled demo data: real 2014 headlines and outlets (UCI News Aggregator, CC BY 4.0).

`build` makes `demo_articles.jsonl.gz` from `shared/data/uci-news/dev.jsonl`:
`python -m bot.samples ../shared/data/uci-news/dev.jsonl`.
"""

from __future__ import annotations

import gzip
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

SAMPLE_FILE = "demo_articles.jsonl.gz"
CATEGORY_FEEDS = {
    "b": "Business Wire (demo)",
    "t": "Tech Wire (demo)",
    "e": "Entertainment Wire (demo)",
    "m": "Health Wire (demo)",
}
START = datetime(2014, 3, 10, 6, 0, tzinfo=UTC)
SPREAD = timedelta(hours=36)


@dataclass(frozen=True, slots=True)
class SampleArticle:
    id: str
    title: str
    url: str
    source: str
    feed: str
    published: datetime


def build(
    dev_jsonl: Path, out: Path, *, stories: int = 10, per_story: int = 32, seed: int = 7
) -> int:
    """Pick the largest stories, cap each, re-spread times over 36 h in a shuffled order."""
    rows = [json.loads(line) for line in dev_jsonl.read_text(encoding="utf-8").splitlines() if line]
    by_story: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_story[row["story"]].append(row)
    chosen = sorted(by_story.values(), key=len, reverse=True)[:stories]
    rng = random.Random(seed)
    picked = [r for group in chosen for r in rng.sample(group, min(per_story, len(group)))]
    rng.shuffle(picked)
    step = SPREAD / max(len(picked) - 1, 1)
    with gzip.open(out, "wt", encoding="utf-8") as fh:
        for i, row in enumerate(picked):
            fh.write(
                json.dumps(
                    {
                        "id": row["id"],
                        "title": row["title"],
                        "url": row["url"],
                        "source": row["source"],
                        "feed": CATEGORY_FEEDS[row["category"]],
                        "published": (START + step * i).isoformat(),
                    }
                )
                + "\n"
            )
    return len(picked)


def load() -> list[SampleArticle]:
    """The bundled articles in release order."""
    data = resources.files(__package__).joinpath(SAMPLE_FILE).read_bytes()
    out = []
    for line in gzip.decompress(data).decode("utf-8").splitlines():
        obj = json.loads(line)
        out.append(
            SampleArticle(
                obj["id"],
                obj["title"],
                obj["url"],
                obj["source"],
                obj["feed"],
                datetime.fromisoformat(obj["published"]),
            )
        )
    return out
