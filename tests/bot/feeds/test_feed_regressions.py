"""Feed bugs an independent review found, each reproduced against loopback feeds first: items
lost or stored twice, and healthy feeds disabled by one bad value."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from werkzeug import Request, Response

from bot.feeds.fetch import FetchLimits, FetchOutcome, fetch_feed, make_http_client
from bot.feeds.poller import FeedPoller, parser_pool
from store.models import FeedStatus
from tests.bot.test_poller import INTERVAL, Clock, _add, _articles, _feed, _policy, _poll
from tests.conftest import T0
from tests.fakes.feeds import Item, rss

RSS = "application/rss+xml"


def _serve(feed_server, path: str, bodies: list[bytes], **headers: str) -> None:  # type: ignore[no-untyped-def]
    """Answer `path` with each body in turn, then the last one again."""
    served = iter(bodies)
    last: list[bytes] = []

    def handler(_request: Request) -> Response:
        last[:] = [next(served, last[0] if last else b"")]
        return Response(last[0], content_type=RSS, headers=headers)

    feed_server.expect_request(path).respond_with_handler(handler)


async def _new_per_poll(engine, clock: Clock, polls: int) -> list[int]:  # type: ignore[no-untyped-def]
    """New articles of each of `polls` polls, one interval apart."""
    counts = []
    for _ in range(polls):
        counts.append((await _poll(engine, clock)).new_articles)
        clock.now += INTERVAL
    return counts


# --- what is stored ----------------------------------------------------------------------------


async def test_a_row_the_database_refuses_does_not_lose_the_others(
    sqlite_engine, feed_server, caplog
):
    """All items were one transaction: one refused row lost every article, poll after poll, until
    the feed was disabled."""
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TRIGGER refuse BEFORE INSERT ON article WHEN NEW.title LIKE '%Refused%' "
                "BEGIN SELECT RAISE(ABORT, 'row refused'); END"
            )
        )
    items = [
        Item("Good one", "http://n.example/g", "g", T0),
        Item("Refused one", "http://n.example/r", "r", T0),
        Item("Good two", "http://n.example/g2", "g2", T0),
    ]
    _serve(feed_server, "/feed", [rss(items)])
    feed_id = _add(sqlite_engine, feed_server.url_for("/feed"))
    with caplog.at_level(logging.WARNING, logger="store.articles"):
        summary = await _poll(sqlite_engine, Clock())
    assert summary.new_articles == 2 and summary.failed == 0
    assert [a.title for a in _articles(sqlite_engine)] == ["Good one", "Good two"]
    assert _feed(sqlite_engine, feed_id).consecutive_failures == 0
    assert "refused entry 'r'" in caplog.text


async def test_a_guid_that_is_the_site_address_does_not_drop_the_next_item(db_engine, feed_server):
    """Keyed by the guid they all share, the newest item alone in its poll was dropped."""
    bodies = [
        rss([Item("Storm hits coast", "http://news.example/a", "http://site.example/", T0)]),
        rss([Item("Court rules", "http://news.example/b", "http://site.example/", T0)]),
        rss(
            [
                Item("Court rules", "http://news.example/b", "http://site.example/", T0),
                Item("Storm hits coast", "http://news.example/a", "http://site.example/", T0),
            ]
        ),
    ]
    _serve(feed_server, "/feed", bodies)
    _add(db_engine, feed_server.url_for("/feed"))
    assert await _new_per_poll(db_engine, Clock(), 3) == [1, 1, 0]
    assert sorted(a.title for a in _articles(db_engine)) == ["Court rules", "Storm hits coast"]


async def test_linkless_items_sharing_the_site_guid_are_stored_once_each(db_engine, feed_server):
    """Alpha alone, then Beta and Alpha: Alpha's key changed between polls and it was stored twice."""
    bodies = [
        rss([Item("Alpha", None, "http://site.example/")]),
        rss(
            [
                Item("Beta", None, "http://site.example/"),
                Item("Alpha", None, "http://site.example/"),
            ]
        ),
    ]
    _serve(feed_server, "/feed", bodies)
    _add(db_engine, feed_server.url_for("/feed"))
    clock = Clock()
    await _poll(db_engine, clock)
    clock.now += INTERVAL
    await _poll(db_engine, clock)
    assert sorted(a.title for a in _articles(db_engine)) == ["Alpha", "Beta"]


async def test_items_that_all_link_to_the_home_page_are_all_stored(db_engine, feed_server):
    """Unique on the shared link, a podcast feed kept its first episode only, across polls too."""
    episode = [
        Item(f"Episode {n}: topic {n}", "http://pod.example/", f"ep{n}", T0) for n in (1, 2, 3)
    ]
    _serve(feed_server, "/feed", [rss(episode[:1]), rss(episode)])
    _add(db_engine, feed_server.url_for("/feed"))
    clock = Clock()
    first = await _poll(db_engine, clock)
    clock.now += INTERVAL
    second = await _poll(db_engine, clock)
    assert (first.new_articles, second.new_articles) == (1, 2)
    stored = _articles(db_engine)
    assert [a.title for a in stored] == [f"Episode {n}: topic {n}" for n in (1, 2, 3)]
    assert {a.url for a in stored} == {"http://pod.example/"}  # still shown as the link


async def test_items_with_other_titles_sharing_one_page_are_all_stored(db_engine, feed_server):
    items = [Item(f"Show {n}", "http://pod.example/show", f"s{n}", T0) for n in (1, 2)]
    same = [Item("Same story", "http://n.example/x", g, T0) for g in ("g1", "g2")]
    _serve(feed_server, "/feed", [rss(items + same)])
    _add(db_engine, feed_server.url_for("/feed"))
    summary = await _poll(db_engine, Clock())
    # the two shows are two items; one article under two guids is still one article
    assert summary.new_articles == 3


async def test_items_sharing_one_page_a_poll_apart_are_all_stored(db_engine, feed_server):
    """One show page, one new episode a poll: each new episode met the first one's unique link
    and was dropped, poll after poll. The same item polled again, or the same page in another
    feed, is still one article."""
    episode = [Item(f"Show {n}: guest {n}", "http://pod.example/show", f"s{n}", T0) for n in (1, 2)]
    _serve(feed_server, "/feed", [rss(episode[:1]), rss(episode[1:]), rss(episode)])
    _serve(feed_server, "/other", [rss([Item("Show 1: guest 1", "http://pod.example/show", "o1")])])
    _add(db_engine, feed_server.url_for("/feed"))
    clock = Clock()
    assert await _new_per_poll(db_engine, clock, 3) == [1, 1, 0]
    assert [a.title for a in _articles(db_engine)] == ["Show 1: guest 1", "Show 2: guest 2"]
    _add(db_engine, feed_server.url_for("/other"))
    assert (await _poll(db_engine, clock)).new_articles == 0


async def test_dropped_items_are_logged(sqlite_engine, feed_server, caplog):
    body = (
        b"<?xml version='1.0'?><rss version='2.0'><channel><title>T</title>"
        b"<item><title>Kept</title><link>http://n.example/1</link></item>"
        b"<item><link>http://n.example/2</link></item><item><link>http://n.example/3</link></item>"
        b"</channel></rss>"
    )
    _serve(feed_server, "/feed", [body])
    _add(sqlite_engine, feed_server.url_for("/feed"))
    with caplog.at_level(logging.INFO, logger="bot.feeds.poller"):
        await _poll(sqlite_engine, Clock())
    assert "skipped 2 item(s) with neither a title nor any text" in caplog.text


# --- validators --------------------------------------------------------------------------------


async def test_an_empty_200_with_a_changing_etag_keeps_the_feed_healthy(db_engine, feed_server):
    """Each empty 200 with a new ETag was a parse failure: the feed was disabled in 3 polls."""
    count = iter(range(1, 100))

    def handler(request: Request) -> Response:
        n = next(count)
        body = rss([Item("First", "http://n.example/1", "1", T0)]) if n == 1 else b""
        return Response(body, content_type=RSS, headers={"ETag": f'"v{n}"'})

    feed_server.expect_request("/feed").respond_with_handler(handler)
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    clock = Clock()
    for _ in range(4):
        await _poll(db_engine, clock)
        clock.now += INTERVAL
    feed = _feed(db_engine, feed_id)
    assert feed.status == FeedStatus.ACTIVE and feed.consecutive_failures == 0
    assert feed.etag == '"v4"'  # the next poll asks with the newest version


async def test_an_etag_the_column_cannot_hold_does_not_lose_the_articles(db_engine, feed_server):
    """On PostgreSQL a 600-character ETag failed the poll's transaction: no article, and in time
    a disabled feed."""
    items = [Item("Storm hits coast", "http://n.example/a", "a", T0)]
    _serve(feed_server, "/feed", [rss(items)], ETag='"' + "x" * 600 + '"')
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    summary = await _poll(db_engine, Clock())
    assert summary.new_articles == 1 and summary.failed == 0
    assert _feed(db_engine, feed_id).etag is None


# --- bodies ------------------------------------------------------------------------------------


async def test_a_gzip_body_of_several_members_is_read_whole(feed_server):
    """Only the first member was inflated: the feed came out cut in half."""
    items = [Item(f"Item {n}", f"http://n.example/{n}", str(n), T0) for n in range(6)]
    body = rss(items)
    half = len(body) // 2
    compressed = gzip.compress(body[:half]) + gzip.compress(body[half:]) + b"\0\0"
    feed_server.expect_request("/feed").respond_with_data(
        compressed, content_type=RSS, headers={"Content-Encoding": "gzip"}
    )
    limits = FetchLimits(timeout=5.0)
    async with make_http_client(limits) as client:
        result = await fetch_feed(
            client, feed_server.url_for("/feed"), etag=None, last_modified=None, limits=limits
        )
    assert result.outcome is FetchOutcome.OK
    assert result.body == body


# --- the pass ----------------------------------------------------------------------------------


@pytest.fixture
def pool() -> Iterator:  # type: ignore[type-arg]
    parsers = parser_pool(1)
    try:
        yield parsers
    finally:
        parsers.shutdown()


async def test_a_parser_process_that_dies_is_replaced(sqlite_engine, feed_server, pool):
    """A broken process pool failed every parse after it, until every feed was disabled."""
    _serve(feed_server, "/a", [rss([Item("A", "http://n.example/a", "a", T0)])])
    _serve(feed_server, "/b", [rss([Item("B", "http://n.example/b", "b", T0)])])
    _add(sqlite_engine, feed_server.url_for("/a"))
    clock = Clock()
    policy = _policy()
    async with make_http_client(policy.limits) as client:
        first = await FeedPoller(
            sqlite_engine, client, policy, clock=clock, parsers=pool
        ).poll_due()
        for pid in list(pool._pool._processes):  # the OOM killer, say
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.3)
        feed_b = _add(sqlite_engine, feed_server.url_for("/b"))
        clock.now += INTERVAL
        second = await FeedPoller(
            sqlite_engine, client, policy, clock=clock, parsers=pool
        ).poll_due()
    assert first.new_articles == 1
    assert (second.new_articles, second.failed) == (1, 0)
    assert _feed(sqlite_engine, feed_b).consecutive_failures == 0


async def test_a_hanging_host_does_not_hold_up_feeds_on_other_hosts(sqlite_engine, feed_server):
    """Feeds queued for the slow host took the global slots first and waited for their host's."""
    release = threading.Event()

    def hang(_request: Request) -> Response:
        release.wait(5)
        return Response(b"", status=500)

    feed_server.expect_request("/slow").respond_with_handler(hang)
    _serve(feed_server, "/fast", [rss([Item("A", "http://n.example/a", "a", T0)])])
    for n in range(12):
        _add(sqlite_engine, feed_server.url_for("/slow") + f"?n={n}")
    fast = feed_server.url_for("/fast").replace("127.0.0.1", "localhost")
    fast_ids = {_add(sqlite_engine, fast), _add(sqlite_engine, fast + "?x=1")}
    policy = _policy(concurrency=4, per_host_concurrency=2, limits=FetchLimits(timeout=1.0))
    started = time.monotonic()
    finished: dict[int, float] = {}

    def done(outcome) -> None:  # type: ignore[no-untyped-def]
        finished[outcome.feed_id] = time.monotonic() - started

    try:
        async with make_http_client(policy.limits) as client:
            poller = FeedPoller(sqlite_engine, client, policy, clock=Clock())
            await poller.poll_due(on_feed_done=done)
    finally:
        release.set()
    # 12 slow feeds, 2 at a time, take 6 timeouts of 1 s; the fast ones must not wait for them
    assert max(finished[i] for i in fast_ids) < 2.0, finished
