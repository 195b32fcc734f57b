"""Poller throughput: N loopback feeds of M entries, a cold pass then a 304 pass, and peak RSS.

    python bench/poll.py [--feeds 500] [--entries 50] [--concurrency 50] [--repeat 3]

Feeds are served by a separate process (aiohttp, from the test extras) so the server does not
compete with the poller for the GIL. Each pass runs on a fresh SQLite database; the poller, the
parser and the store are the real ones. Prints medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import sqlalchemy as sa

from bot.feeds.fetch import FetchLimits, make_http_client
from bot.feeds.poller import FeedPoller, PollPolicy, parser_pool
from store.db import make_engine, session_scope
from store.feeds import add_feed
from store.migrate import upgrade
from store.models import Feed

WORDS = [
    "minister",
    "summit",
    "talks",
    "trade",
    "deal",
    "shares",
    "market",
    "court",
    "ruling",
    "storm",
    "flood",
    "election",
    "vote",
    "company",
    "profit",
    "launch",
    "phone",
    "study",
    "vaccine",
    "health",
    "police",
    "strike",
    "energy",
    "oil",
    "bank",
    "rate",
]


def feed_xml(index: int, entries: int) -> bytes:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    items = []
    for j in range(entries):
        w = [WORDS[(index * 7 + j * k) % len(WORDS)] for k in (1, 3, 5, 11)]
        title = f"{w[0].title()} {w[1]} {w[2]} as {w[3]} {index}-{j}"
        items.append(
            f"<item><title>{title}</title><link>http://news.example/{index}/{j}</link>"
            f"<guid>n-{index}-{j}</guid><description>{title}. More on {w[1]} and {w[2]}."
            f"</description><pubDate>{format_datetime(base + timedelta(minutes=j))}</pubDate></item>"
        )
    return (
        f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Feed {index}"
        f"</title><link>http://news.example/{index}</link>{''.join(items)}</channel></rss>"
    ).encode()


def serve(port_out: multiprocessing.Queue, feeds: int, entries: int) -> None:
    from aiohttp import web

    bodies = {i: feed_xml(i, entries) for i in range(feeds)}
    etags = {i: f'"v1-{i}"' for i in range(feeds)}

    async def handler(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        if request.headers.get("If-None-Match") == etags[i]:
            return web.Response(status=304, headers={"ETag": etags[i]})
        return web.Response(
            body=bodies[i], content_type="application/rss+xml", headers={"ETag": etags[i]}
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/feed/{i}.xml", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        port_out.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


async def one_run(
    port: int, feeds: int, concurrency: int, processes: int
) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        now = datetime.now(UTC)
        with session_scope(engine) as session:
            for i in range(feeds):
                add_feed(f"http://127.0.0.1:{port}/feed/{i}.xml", session=session, now=now)
        policy = PollPolicy(
            concurrency=concurrency,
            per_host_concurrency=concurrency,
            limits=FetchLimits(timeout=30),
        )
        parsers = parser_pool(processes)
        async with make_http_client(policy.limits) as client:
            poller = FeedPoller(engine, client, policy, parsers=parsers)
            t0 = time.perf_counter()
            cold = await poller.poll_due()
            cold_s = time.perf_counter() - t0
            with engine.begin() as conn:
                conn.execute(sa.update(Feed).values(next_poll_at=now))
            t0 = time.perf_counter()
            warm = await poller.poll_due()
            warm_s = time.perf_counter() - t0
        if parsers is not None:
            parsers.shutdown()
        assert cold.ok == feeds, f"cold pass: {cold.line()}"
        assert warm.not_modified == feeds, f"304 pass: {warm.line()}"
        engine.dispose()
        return cold_s, warm_s, cold.new_articles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=500)
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--parse-processes", type=int, default=2, help="as PARSE_PROCESSES; 0 parses in threads"
    )
    args = parser.parse_args()

    ports: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(
        target=serve, args=(ports, args.feeds, args.entries), daemon=True
    )
    server.start()
    port = ports.get(timeout=60)
    colds, warms, articles = [], [], 0
    try:
        for _ in range(args.repeat):
            cold_s, warm_s, articles = asyncio.run(
                one_run(port, args.feeds, args.concurrency, args.parse_processes)
            )
            colds.append(cold_s)
            warms.append(warm_s)
    finally:
        server.terminate()
    cold, warm = statistics.median(colds), statistics.median(warms)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"feeds={args.feeds} entries={args.entries} concurrency={args.concurrency} "
        f"parse_processes={args.parse_processes} runs={args.repeat}"
    )
    print(
        f"cold pass : {cold:6.2f} s  {args.feeds / cold:8.1f} feeds/s  {articles / cold:9.1f} articles/s"
    )
    print(f"304 pass  : {warm:6.2f} s  {args.feeds / warm:8.1f} feeds/s")
    print(f"304 pass is {cold / warm:.1f}x faster than the cold pass")
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: poller process {rss_mb:.0f} MB; largest child process {children_mb:.0f} MB")


if __name__ == "__main__":
    main()
