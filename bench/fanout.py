"""Digest fan-out: composition and outbox throughput, and draining against a loopback Bot API.

    python bench/fanout.py [--followers 10000] [--stories 1000] [--drain 2000]

1. One story with --followers followers gets 5 new articles: time to queue every digest (one
   composition shared by all followers) -> outbox rows/s.
2. --stories stories, each with one follower, get 3 new articles each at once -> compositions/s.
3. --drain outbox rows are sent by the real OutboxSender through a real PTB Bot to the loopback
   Bot API server used by the tests (tests/fakes/bot_api.py), without the rate limiter: the raw
   rate relative to Telegram's 30 msg/s ceiling. Then a short run with AIORateLimiter on shows the
   sender held to that ceiling.
Run from the repository root after `pip install -e '.[test]'`. Prints medians where repeated.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.digests.queue import DigestPolicy, queue_story_digests
from bot.digests.schedule import Debounce
from store.db import make_engine
from store.migrate import upgrade
from store.models import Article, Chat, Follow, OutboxMessage, Story

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' loopback Bot API server lives in tests/fakes
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
POLICY = DigestPolicy(debounce=Debounce(quiet=timedelta(0), max_wait=timedelta(0)))
OUTLETS = ["Reuters", "AP", "BBC", "Kyodo", "Yonhap", "NHK", "AFP", "DW"]


def _fresh_engine(tmp: str, name: str) -> Engine:
    engine = make_engine(f"sqlite:///{tmp}/{name}.db")
    upgrade(engine)
    return engine


def _seed(engine: Engine, *, stories: int, followers_per_story: int, new_articles: int) -> None:
    """Stories with followers whose last digest is behind by `new_articles` articles."""
    chats = [
        {
            "id": 10_000_000 + i,
            "type": "private",
            "status": "active",
            "timezone": "UTC",
            "digest_enabled": False,
            "created_at": T0,
            "updated_at": T0,
        }
        for i in range(max(followers_per_story, stories))
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(Chat.__table__), chats)
        conn.execute(
            sa.insert(Story.__table__),
            [
                {
                    "id": s + 1,
                    "headline": f"Summit {s} reinforces ties amid trade talks",
                    "article_count": new_articles,
                    "source_count": min(new_articles, len(OUTLETS)),
                    "first_published_at": T0,
                    "last_published_at": T0,
                    "created_at": T0,
                    "updated_at": T0,
                }
                for s in range(stories)
            ],
        )
        conn.execute(
            sa.insert(Article.__table__),
            [
                {
                    "entry_key": f"{s}-{j}",
                    "canonical_url": f"https://news.example/{s}/{j}",
                    "url": f"https://news.example/{s}/{j}",
                    "title": f"Leaders meet for summit {s} as trade and security talks go on ({OUTLETS[j % 8]})",
                    "summary": f"The leaders of both countries met in Nara for a two-day summit {s}. "
                    f"They discussed trade, security and the supply of chips. Talks go on tomorrow.",
                    "source": OUTLETS[j % len(OUTLETS)],
                    "author": "",
                    "published_at": T0,
                    "fetched_at": T0,
                    "story_id": s + 1,
                }
                for s in range(stories)
                for j in range(new_articles)
            ],
        )
        if followers_per_story > 1:
            rows = [
                {"chat_id": c["id"], "story_id": 1, "last_digested_article_id": 0, "created_at": T0}
                for c in chats[:followers_per_story]
            ]
        else:
            rows = [
                {
                    "chat_id": chats[s]["id"],
                    "story_id": s + 1,
                    "last_digested_article_id": 0,
                    "created_at": T0,
                }
                for s in range(stories)
            ]
        conn.execute(sa.insert(Follow.__table__), rows)


def _outbox_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(OutboxMessage)).scalar_one()


def bench_followers(tmp: str, followers: int) -> tuple[float, int]:
    engine = _fresh_engine(tmp, "followers")
    _seed(engine, stories=1, followers_per_story=followers, new_articles=5)
    t0 = time.perf_counter()
    queued = queue_story_digests(engine, now=T0 + timedelta(minutes=1), policy=POLICY)
    elapsed = time.perf_counter() - t0
    assert queued == followers, queued
    return elapsed, _outbox_rows(engine)


def bench_stories(tmp: str, stories: int) -> tuple[float, int]:
    engine = _fresh_engine(tmp, "stories")
    _seed(engine, stories=stories, followers_per_story=1, new_articles=3)
    t0 = time.perf_counter()
    queued = queue_story_digests(engine, now=T0 + timedelta(minutes=1), policy=POLICY)
    elapsed = time.perf_counter() - t0
    assert queued == stories, queued
    return elapsed, queued


async def bench_drain(tmp: str, rows: int, *, rate_limited: bool) -> tuple[float, int]:
    from telegram import Bot
    from telegram.ext import AIORateLimiter, ExtBot

    from bot.delivery import OutboxSender
    from tests.fakes.bot_api import FakeBotApi

    engine = _fresh_engine(tmp, f"drain{int(rate_limited)}")
    _seed(engine, stories=rows, followers_per_story=1, new_articles=2)
    queue_story_digests(engine, now=T0 + timedelta(minutes=1), policy=POLICY)
    async with FakeBotApi(token="123:BENCH") as api:
        if rate_limited:
            bot: Bot = ExtBot(
                "123:BENCH", base_url=api.bot_base_url, rate_limiter=AIORateLimiter(max_retries=2)
            )
        else:
            bot = Bot("123:BENCH", base_url=api.bot_base_url)
        async with bot:
            sender = OutboxSender(engine, bot, clock=lambda: datetime.now(UTC), concurrency=64)
            t0 = time.perf_counter()
            summary = await sender.drain()
            elapsed = time.perf_counter() - t0
            await sender.release()
    return elapsed, summary.sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--followers", type=int, default=10_000)
    parser.add_argument("--stories", type=int, default=1_000)
    parser.add_argument("--drain", type=int, default=2_000)
    parser.add_argument("--limited", type=int, default=150, help="rows for the rate-limited run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f_s, f_rows = bench_followers(tmp, args.followers)
        print(
            f"{args.followers} followers of one story: queued in {f_s:.2f} s -> "
            f"{f_rows / f_s:,.0f} outbox rows/s"
        )
        s_s, s_n = bench_stories(tmp, args.stories)
        print(
            f"{args.stories} stories updated at once: {s_s:.2f} s -> {s_n / s_s:,.0f} "
            f"compositions/s (with their outbox rows)"
        )
        d_s, d_n = asyncio.run(bench_drain(tmp, args.drain, rate_limited=False))
        rate = d_n / d_s
        print(
            f"drain {d_n} messages to the loopback Bot API, no rate limiter: {d_s:.2f} s -> "
            f"{rate:,.0f} msg/s = {rate / 30:.1f}x Telegram's 30 msg/s ceiling"
        )
        l_s, l_n = asyncio.run(bench_drain(tmp, args.limited, rate_limited=True))
        print(
            f"drain {l_n} messages with AIORateLimiter: {l_s:.2f} s -> {l_n / l_s:.1f} msg/s "
            f"(ceiling 30): {args.followers} followers would take {args.followers / 30 / 60:.1f} "
            f"min at the ceiling"
        )
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
