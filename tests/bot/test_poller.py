"""The poller against real loopback feeds: what is stored, and what each failure does to the schedule."""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select
from werkzeug import Request, Response

from bot.feeds.fetch import FetchLimits, make_http_client
from bot.feeds.poller import UNCHANGED_BATCH, FeedPoller, PollPolicy, backoff_delay
from store.db import session_scope
from store.feeds import add_feed
from store.leases import acquire_lease
from store.models import Article, Feed, FeedStatus
from tests.conftest import T0
from tests.fakes.feeds import Item, rss

INTERVAL = timedelta(minutes=15)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _policy(**kw) -> PollPolicy:  # type: ignore[no-untyped-def]
    base = {
        "interval": INTERVAL,
        "concurrency": 20,
        "per_host_concurrency": 20,
        "failure_limit": 3,
        "limits": FetchLimits(timeout=2.0, max_bytes=64 * 1024),
    }
    base.update(kw)
    return PollPolicy(**base)


def _add(engine, url: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return add_feed(url, session=session, now=T0).id


def _feed(engine, feed_id: int) -> Feed:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return session.get(Feed, feed_id)


def _articles(engine) -> list[Article]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return list(session.exec(select(Article).order_by(Article.id)).all())


async def _poll(engine, clock, **kw):  # type: ignore[no-untyped-def]
    policy = _policy(**kw)
    async with make_http_client(policy.limits) as client:
        return await FeedPoller(engine, client, policy, clock=clock).poll_due()


ITEMS = [
    Item("Storm hits coast", "http://news.example/a?utm_source=rss", "a", T0),
    Item("Court rules on merger", "http://news.example/b", "b", T0),
]


async def test_new_entries_are_stored_once(db_engine, feed_server, clock):
    feed_server.expect_request("/feed").respond_with_data(
        rss(ITEMS), content_type="application/rss+xml"
    )
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    first = await _poll(db_engine, clock)
    clock.now += INTERVAL
    second = await _poll(db_engine, clock)
    stored = _articles(db_engine)
    assert (first.new_articles, second.new_articles) == (2, 0)
    assert [a.canonical_url for a in stored] == ["http://news.example/a", "http://news.example/b"]
    assert all(a.feed_id == feed_id for a in stored)
    assert _feed(db_engine, feed_id).next_poll_at == clock.now + INTERVAL


async def test_304_counts_as_success_and_keeps_validators(db_engine, feed_server, clock):
    seen: list[str | None] = []

    def handler(request: Request) -> Response:
        seen.append(request.headers.get("If-None-Match"))
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304, headers={"ETag": '"v1"'})
        return Response(rss(ITEMS), headers={"ETag": '"v1"', "Content-Type": "application/rss+xml"})

    feed_server.expect_request("/feed").respond_with_handler(handler)
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    await _poll(db_engine, clock)
    clock.now += INTERVAL
    summary = await _poll(db_engine, clock)
    assert seen == [None, '"v1"']
    assert summary.not_modified == 1
    feed = _feed(db_engine, feed_id)
    assert feed.etag == '"v1"' and feed.consecutive_failures == 0
    assert feed.last_success_at == clock.now and feed.next_poll_at == clock.now + INTERVAL


async def test_many_304s_are_all_recorded_and_clear_earlier_failures(db_engine, feed_server, clock):
    """304s are written in batches (UNCHANGED_BATCH): every feed's schedule still moves on."""

    def handler(request: Request) -> Response:
        if request.headers.get("If-None-Match") == '"v1"':
            return Response(status=304)
        return Response(rss(ITEMS), headers={"ETag": '"v1"', "Content-Type": "application/rss+xml"})

    feed_server.expect_request(re.compile(r"/feed/\d+")).respond_with_handler(handler)
    ids = [_add(db_engine, feed_server.url_for(f"/feed/{i}")) for i in range(UNCHANGED_BATCH + 30)]
    await _poll(db_engine, clock)
    with db_engine.begin() as conn:  # as if the last pass had failed for some of them
        conn.execute(
            sa.update(Feed)
            .where(Feed.id.in_(ids[:10]))  # type: ignore[union-attr]
            .values(consecutive_failures=2, last_error="timed out")
        )
    clock.now += INTERVAL
    summary = await _poll(db_engine, clock)
    assert summary.not_modified == len(ids)
    for feed_id in ids:
        feed = _feed(db_engine, feed_id)
        assert feed.next_poll_at == clock.now + INTERVAL, feed_id
        assert (feed.consecutive_failures, feed.last_error) == (0, None)


async def test_permanent_redirect_updates_the_stored_url(db_engine, feed_server, clock):
    feed_server.expect_request("/old").respond_with_data(
        "", status=301, headers={"Location": feed_server.url_for("/new")}
    )
    feed_server.expect_request("/new").respond_with_data(
        rss(ITEMS), content_type="application/rss+xml"
    )
    feed_id = _add(db_engine, feed_server.url_for("/old"))
    await _poll(db_engine, clock)
    assert _feed(db_engine, feed_id).url == feed_server.url_for("/new")


async def test_temporary_redirect_keeps_the_stored_url(db_engine, feed_server, clock):
    feed_server.expect_request("/old").respond_with_data(
        "", status=302, headers={"Location": feed_server.url_for("/new")}
    )
    feed_server.expect_request("/new").respond_with_data(
        rss(ITEMS), content_type="application/rss+xml"
    )
    feed_id = _add(db_engine, feed_server.url_for("/old"))
    summary = await _poll(db_engine, clock)
    assert summary.new_articles == 2
    assert _feed(db_engine, feed_id).url == feed_server.url_for("/old")


async def test_410_disables_the_feed(db_engine, feed_server, clock):
    feed_server.expect_request("/feed").respond_with_data("gone", status=410)
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    summary = await _poll(db_engine, clock)
    feed = _feed(db_engine, feed_id)
    assert feed.status == FeedStatus.DISABLED and feed.next_poll_at is None
    assert [d.feed_id for d in summary.disabled] == [feed_id]


async def test_429_honours_retry_after(db_engine, feed_server, clock):
    feed_server.expect_request("/feed").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7200"}
    )
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    await _poll(db_engine, clock)
    feed = _feed(db_engine, feed_id)
    assert feed.next_poll_at == T0 + timedelta(seconds=7200)
    assert feed.consecutive_failures == 1


async def test_server_errors_back_off_then_disable(db_engine, feed_server, clock):
    feed_server.expect_request("/feed").respond_with_data("boom", status=500)
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    delays = []
    for _ in range(2):
        await _poll(db_engine, clock)
        feed = _feed(db_engine, feed_id)
        delays.append(feed.next_poll_at - clock.now)
        clock.now = feed.next_poll_at
    assert delays == [INTERVAL, INTERVAL * 2]
    assert "500" in (feed.last_error or "")
    await _poll(db_engine, clock)
    assert _feed(db_engine, feed_id).status == FeedStatus.DISABLED


def test_backoff_is_capped_at_a_day():
    assert backoff_delay(INTERVAL, 40) == timedelta(hours=24)


async def test_a_hanging_feed_does_not_hold_up_the_others(db_engine, feed_server, clock):
    release = threading.Event()

    def hang(request: Request) -> Response:
        release.wait(10)
        return Response(rss(ITEMS), content_type="application/rss+xml")

    feed_server.expect_request("/slow").respond_with_handler(hang)
    feed_server.expect_request("/fast").respond_with_data(
        rss(ITEMS), content_type="application/rss+xml"
    )
    slow = _add(db_engine, feed_server.url_for("/slow"))
    fast = _add(db_engine, feed_server.url_for("/fast"))
    try:
        summary = await _poll(db_engine, clock, limits=FetchLimits(timeout=0.5))
    finally:
        release.set()
    assert summary.ok == 1 and summary.failed == 1
    assert _feed(db_engine, fast).last_success_at == T0
    assert _feed(db_engine, slow).consecutive_failures == 1


async def test_html_page_is_a_failure_with_a_clear_error(db_engine, feed_server, clock):
    feed_server.expect_request("/feed").respond_with_data(
        "<html><body><p>Hello</p></body></html>", content_type="text/html"
    )
    feed_id = _add(db_engine, feed_server.url_for("/feed"))
    summary = await _poll(db_engine, clock)
    assert summary.failed == 1
    assert "HTML" in (_feed(db_engine, feed_id).last_error or "")


async def test_same_url_in_two_feeds_is_one_article(db_engine, feed_server, clock):
    for path in ("/one", "/two"):
        feed_server.expect_request(path).respond_with_data(
            rss(ITEMS[:1]), content_type="application/rss+xml"
        )
        _add(db_engine, feed_server.url_for(path))
    summary = await _poll(db_engine, clock)
    assert summary.ok == 2 and summary.new_articles == 1
    assert len(_articles(db_engine)) == 1


async def test_a_second_poller_stays_out_while_the_lease_is_held(db_engine, feed_server, clock):
    feed_server.expect_request("/feed").respond_with_data(
        rss(ITEMS), content_type="application/rss+xml"
    )
    _add(db_engine, feed_server.url_for("/feed"))
    assert acquire_lease(db_engine, "poller", "someone-else", ttl=timedelta(minutes=5), now=T0)
    summary = await _poll(db_engine, clock)
    assert summary.skipped_lease and _articles(db_engine) == []


async def test_a_burst_of_200_feeds(sqlite_engine, feed_server, clock):
    for i in range(200):
        feed_server.expect_request(f"/f{i}").respond_with_data(
            rss([Item(f"Headline {i}", f"http://n.example/{i}", f"g{i}", T0)]),
            content_type="application/rss+xml",
        )
    with session_scope(sqlite_engine) as session:
        for i in range(200):
            add_feed(feed_server.url_for(f"/f{i}"), session=session, now=T0)
    summary = await _poll(sqlite_engine, clock, concurrency=50, per_host_concurrency=50)
    assert (summary.ok, summary.new_articles) == (200, 200)
    with sqlite_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Article)).scalar_one() == 200
