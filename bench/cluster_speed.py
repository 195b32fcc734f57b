"""Matcher speed and memory as active stories grow.

    python bench/cluster_speed.py [--sizes 1000,10000,50000,100000] [--articles 6000]

For each size N (in its own subprocess, so peak RSS is per size): N stories are made active with
three articles each over 30 hours, then --articles new articles are assigned over 6 more hours
(half follow an existing story in other words, half are new events, whose lone articles get their
second look an hour on). Headlines are synthetic but shaped like real ones: a few story-specific
names and places from a large pseudo-word vocabulary, verbs and common words from a small one,
numbers. Prints articles/s (median of 3 timed batches) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "ha",
    "ju",
    "pe",
    "qu",
    "ro",
    "ba",
    "de",
    "fi",
    "go",
]
VERBS = [
    "wins",
    "loses",
    "announces",
    "rejects",
    "signs",
    "launches",
    "halts",
    "backs",
    "sues",
    "meets",
    "warns",
    "unveils",
]
COMMON = [
    "government",
    "minister",
    "company",
    "market",
    "court",
    "police",
    "report",
    "deal",
    "talks",
    "plan",
    "vote",
    "shares",
    "election",
    "storm",
    "crisis",
    "probe",
    "study",
    "health",
    "bank",
    "rate",
    "price",
    "record",
    "year",
    "first",
]


def pseudo(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).title()


class Stream:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.stories: list[tuple[list[str], list[str]]] = []

    def new_story(self) -> int:
        names = [pseudo(self.rng) for _ in range(3)]
        topic = self.rng.sample(COMMON, 3)
        self.stories.append((names, topic))
        return len(self.stories) - 1

    def headline(self, index: int) -> str:
        names, topic = self.stories[index]
        r = self.rng
        words = r.sample(names, 2) + [r.choice(VERBS)] + r.sample(topic, 2)
        if r.random() < 0.3:
            words.append(str(r.randint(2, 500)))
        r.shuffle(words)
        return " ".join(words).capitalize()


def run_size(size: int, articles: int) -> dict[str, float]:
    from bot.stories.matcher import ArticleText, StoryMatcher

    stream = Stream(size)
    matcher = StoryMatcher()
    start = datetime(2026, 11, 1, tzinfo=UTC)
    # The active stories arrive over 30 hours and the timed articles over the next 6, so lone
    # articles get their second look (an hour on) inside the timed batches at every size.
    step = timedelta(hours=30) / (size * 3)
    clock = start
    for _ in range(size):
        index = stream.new_story()
        for _ in range(3):
            matcher.add(index + 1, ArticleText(stream.headline(index), clock))
            clock += step
    rates = []
    batch = articles // 3
    step = timedelta(hours=6) / articles
    for _ in range(3):
        items = []
        for _ in range(batch):
            if stream.rng.random() < 0.5:
                index = stream.rng.randrange(len(stream.stories))
            else:
                index = stream.new_story()
            items.append(ArticleText(stream.headline(index), clock))
            clock += step
        t0 = time.perf_counter()
        for item in items:
            matcher.assign(item)
        rates.append(batch / (time.perf_counter() - t0))
    return {
        "size": size,
        "active": matcher.active_count,
        "rate": statistics.median(rates),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000,100000")
    parser.add_argument("--articles", type=int, default=6000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_size(args.one, args.articles)))
        return
    results = {}
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--articles", str(args.articles)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout)
        results[size] = r
        print(
            f"{size:>7,} active stories: {r['rate']:8,.0f} articles/s   peak RSS {r['rss_mb']:6.0f} MB"
        )
    if 10_000 in results and 100_000 in results:
        ratio = results[10_000]["rate"] / results[100_000]["rate"]
        # time per article at 100k over time per article at 10k; the target is at most 2.0
        print(f"time per article at 100k: {ratio:.2f}x that at 10k (target: at most 2x)")


if __name__ == "__main__":
    main()
