"""Hostile and broken feeds found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlmodel import select
from werkzeug import Request, Response

from bot.app import Services, poll_tick
from bot.config import Settings
from bot.feeds.fetch import FetchLimits, FetchOutcome, fetch_feed, make_http_client
from bot.feeds.parse import parse_feed
from bot.feeds.poller import FeedPoller, PollPolicy
from bot.stories.service import StoryService
from store.db import session_scope
from store.feeds import add_feed
from store.models import Article, Chat, Feed, FeedStatus, OutboxMessage
from tests.conftest import T0
from tests.fakes.feeds import Item, rss

INTERVAL = timedelta(minutes=15)
LIMITS = FetchLimits(timeout=2.0, max_bytes=64 * 1024)
POLICY = PollPolicy(interval=INTERVAL, failure_limit=3, limits=LIMITS, per_host_concurrency=20)
GOOD = rss([Item("Storm hits coast", "http://news.example/a", "a", T0)])


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


def _add(engine, url: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return add_feed(url, session=session, now=T0).id


def _titles(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return [a.title for a in session.exec(select(Article).order_by(Article.id)).all()]


async def _poll(engine, clock=None):  # type: ignore[no-untyped-def]
    async with make_http_client(LIMITS) as client:
        return await FeedPoller(engine, client, POLICY, clock=clock or Clock()).poll_due()


# 1 -------------------------------------------------------------------------------------------
async def test_redirect_to_a_bad_punycode_host_is_a_result_not_an_exception(feed_server):
    feed_server.expect_request("/feed").respond_with_data(
        "", status=301, headers={"Location": "http://xn--/feed"}
    )
    async with make_http_client(LIMITS) as client:
        result = await fetch_feed(
            client, feed_server.url_for("/feed"), etag=None, last_modified=None, limits=LIMITS
        )
    assert result.outcome is FetchOutcome.INVALID_URL


async def test_one_hostile_redirect_does_not_abort_the_whole_pass(db_engine, feed_server):
    feed_server.expect_request("/good").respond_with_data(GOOD, content_type="application/rss+xml")
    feed_server.expect_request("/bad").respond_with_data(
        "", status=301, headers={"Location": "http://xn--/feed"}
    )
    _add(db_engine, feed_server.url_for("/good"))
    bad = _add(db_engine, feed_server.url_for("/bad"))
    summary = await _poll(db_engine)
    assert summary.ok == 1 and summary.failed == 1
    assert _titles(db_engine) == ["Storm hits coast"]
    with session_scope(db_engine) as session:
        assert session.get(Feed, bad).consecutive_failures == 1


# 2 -------------------------------------------------------------------------------------------
HOSTILE = (
    b"<?xml version='1.0'?><rss version='2.0'><channel><title>T</title>"
    b"<item><title>Bad &#0; title\x01</title><link>http://news.example/x</link></item>"
    b"</channel></rss>"
)


async def test_a_nul_character_in_a_title_does_not_abort_the_pass(db_engine, feed_server):
    feed_server.expect_request("/hostile").respond_with_data(HOSTILE, content_type="text/xml")
    feed_server.expect_request("/good").respond_with_data(GOOD, content_type="application/rss+xml")
    _add(db_engine, feed_server.url_for("/hostile"))
    _add(db_engine, feed_server.url_for("/good"))
    summary = await _poll(db_engine)
    assert summary.ok == 2


def test_control_characters_are_removed_from_titles():
    parsed = parse_feed(HOSTILE, url="http://f.example/", content_type="text/xml", fetched_at=T0)
    assert parsed.entries[0].title == "Bad title"


# 3 -------------------------------------------------------------------------------------------
async def test_the_notice_of_a_disabled_feed_is_committed_with_the_disable(
    db_engine, feed_server, monkeypatch
):
    """The operators' notice is written in the transaction that disables the feed: a pass that
    fails afterwards (here: while flushing the 304s) cannot lose it, and no later pass would
    make up for it, since a disabled feed is never due again."""
    feed_server.expect_request("/broken").respond_with_data("oops", status=500)
    broken = _add(db_engine, feed_server.url_for("/broken"))
    with session_scope(db_engine) as session:
        session.add(Chat(id=42, type="private"))
        session.get(Feed, broken).consecutive_failures = 11  # one more failure disables it

    async def crash(self) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("the database went away")

    monkeypatch.setattr(FeedPoller, "_flush_unchanged", crash)
    clock = Clock()
    settings = Settings(_env_file=None, admin_user_ids="42", http_timeout_seconds=2)  # type: ignore[call-arg]
    async with make_http_client(LIMITS) as http:
        services = Services(
            settings=settings,
            engine=db_engine,
            clock=clock,
            http=http,
            stories=StoryService(db_engine, StoryService.open(db_engine).matcher, clock=clock),
        )
        with pytest.raises(RuntimeError):
            await poll_tick(SimpleNamespace(services=services))  # type: ignore[arg-type]
    with session_scope(db_engine) as session:
        assert session.get(Feed, broken).status == FeedStatus.DISABLED
        notices = session.exec(select(OutboxMessage).where(OutboxMessage.chat_id == 42)).all()
    assert len(notices) == 1
    assert "was disabled" in notices[0].text and "500" in notices[0].text


async def test_a_feed_whose_articles_the_database_refuses_fails_alone(
    db_engine, feed_server, monkeypatch
):
    """An unexpected error while recording one feed counts as that feed's failure; the other
    feeds of the pass are recorded as usual."""
    import bot.feeds.poller as poller_module

    real_insert = poller_module.insert_articles

    def picky_insert(feed_id, articles, **kwargs):  # type: ignore[no-untyped-def]
        if any("Refused" in a.title for a in articles):
            raise RuntimeError("value refused by the database")
        return real_insert(feed_id, articles, **kwargs)

    monkeypatch.setattr(poller_module, "insert_articles", picky_insert)
    refused = rss([Item("Refused headline", "http://news.example/r", "r", T0)])
    feed_server.expect_request("/refused").respond_with_data(
        refused, content_type="application/rss+xml"
    )
    feed_server.expect_request("/good").respond_with_data(GOOD, content_type="application/rss+xml")
    bad = _add(db_engine, feed_server.url_for("/refused"))
    _add(db_engine, feed_server.url_for("/good"))
    summary = await _poll(db_engine)
    assert (summary.ok, summary.failed) == (1, 1)
    assert _titles(db_engine) == ["Storm hits coast"]
    with session_scope(db_engine) as session:
        feed = session.get(Feed, bad)
        assert feed.consecutive_failures == 1 and feed.next_poll_at is not None
        assert "value refused by the database" in (feed.last_error or "")


# 4 -------------------------------------------------------------------------------------------
async def test_the_lease_still_excludes_a_second_poller_during_a_long_pass(db_engine, feed_server):
    """A pass that outlasts the lease's TTL renews it, so a second poller stays out."""
    entered, release = threading.Event(), threading.Event()
    paths: list[str] = []

    def first_request_stalls(request: Request) -> Response:
        paths.append(request.path)
        if len(paths) == 1:
            entered.set()
            release.wait(10)
        return Response(GOOD, content_type="application/rss+xml")

    feed_server.expect_request("/slow").respond_with_handler(first_request_stalls)
    _add(db_engine, feed_server.url_for("/slow"))
    # A real clock and a TTL of 0.6 s: the pass below lasts three TTLs.
    policy = PollPolicy(
        interval=INTERVAL, limits=FetchLimits(timeout=20.0), lease_ttl=timedelta(seconds=0.6)
    )

    def clock() -> datetime:
        return datetime.now(UTC)

    async with make_http_client(policy.limits) as client:
        first = asyncio.create_task(
            FeedPoller(db_engine, client, policy, clock=clock, holder="A").poll_due()
        )
        try:
            assert await asyncio.to_thread(entered.wait, 5)
            await asyncio.sleep(1.8)  # pass A is still running, three TTLs on
            second = await FeedPoller(db_engine, client, policy, clock=clock, holder="B").poll_due()
        finally:
            release.set()
            await first
    assert second.skipped_lease, f"poller B ran while A was mid-pass; fetches: {paths}"


# 5 -------------------------------------------------------------------------------------------
async def test_distinct_items_sharing_a_guid_are_all_stored(db_engine, feed_server):
    """Broken-but-common feeds reuse one <guid> (e.g. the site URL) for every item."""
    items = [
        Item("Storm hits coast", "http://news.example/a", "http://news.example/", T0),
        Item("Court rules on merger", "http://news.example/b", "http://news.example/", T0),
    ]
    feed_server.expect_request("/feed").respond_with_data(
        rss(items), content_type="application/rss+xml"
    )
    _add(db_engine, feed_server.url_for("/feed"))
    await _poll(db_engine)
    assert _titles(db_engine) == ["Storm hits coast", "Court rules on merger"]


# 6 -------------------------------------------------------------------------------------------
async def test_stacked_gzip_bomb_is_refused_without_inflating_it(feed_server):
    """`Content-Encoding: gzip, gzip` would skip the capped zlib path: httpx inflates each read."""
    import gzip
    import tracemalloc

    bomb = gzip.compress(gzip.compress(bytes(128 * 1024**2), compresslevel=9), compresslevel=9)
    feed_server.expect_request("/feed").respond_with_data(
        bomb, headers={"Content-Encoding": "gzip, gzip"}
    )
    limits = FetchLimits(timeout=5.0, max_bytes=256 * 1024)
    async with make_http_client(limits) as client:
        tracemalloc.start()
        try:
            result = await fetch_feed(
                client, feed_server.url_for("/feed"), etag=None, last_modified=None, limits=limits
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.outcome is FetchOutcome.NETWORK_ERROR
    assert "unsupported Content-Encoding 'gzip, gzip'" in (result.error or "")
    assert peak < 32 * 1024**2, (
        f"peak {peak / 1024**2:.0f} MiB for a 256 KiB cap ({len(bomb)} B sent)"
    )


async def test_a_permanent_redirect_to_a_page_that_is_not_a_feed_keeps_the_stored_url(
    db_engine, feed_server
):
    """A 301 to a parked or hijacked page must not rewrite the feed's URL for good."""
    feed_server.expect_request("/old").respond_with_data(
        "", status=301, headers={"Location": feed_server.url_for("/parked")}
    )
    feed_server.expect_request("/parked").respond_with_data(
        "<html><body>This domain is for sale</body></html>", content_type="text/html"
    )
    url = feed_server.url_for("/old")
    feed_id = _add(db_engine, url)
    summary = await _poll(db_engine)
    assert summary.failed == 1
    with session_scope(db_engine) as session:
        assert session.get(Feed, feed_id).url == url


def test_a_host_that_idna_cannot_decode_is_refused_when_the_feed_is_added():
    from bot.feeds.urls import validate_feed_url

    with pytest.raises(ValueError, match="bad host name"):
        validate_feed_url("http://xn--/feed")
    assert validate_feed_url("https://bücher.example/feed") == "https://bücher.example/feed"


# 10 ------------------------------------------------------------------------------------------
async def test_live_blog_posts_that_differ_only_by_fragment_are_all_stored(db_engine, feed_server):
    """A live blog links each post as page#post-N. The canonical URL drops fragments (they are
    mostly tracking), so the posts collided on the unique URL and all but the first were lost."""
    page = "http://news.example/live"
    items = [
        Item("Storm live: coast braces", f"{page}#post-1", "p1", T0),
        Item("Storm live: power cut in the east", f"{page}#post-2", "p2", T0),
        Item("Storm live: power cut in the east", f"{page}#post-2", "p2-again", T0),
    ]
    feed_server.expect_request("/feed").respond_with_data(
        rss(items), content_type="application/rss+xml"
    )
    _add(db_engine, feed_server.url_for("/feed"))
    await _poll(db_engine)
    assert _titles(db_engine) == ["Storm live: coast braces", "Storm live: power cut in the east"]


def test_a_tracking_fragment_alone_still_folds_into_the_plain_url():
    body = rss([Item("Storm hits coast", "http://news.example/a#xtor=RSS-3", "a", T0)])
    parsed = parse_feed(body, url="http://news.example/feed", content_type=None, fetched_at=T0)
    assert [e.url for e in parsed.entries] == ["http://news.example/a"]


async def test_a_live_blog_post_alone_in_its_poll_is_not_lost(db_engine, feed_server):
    """Each poll shows only the newest post: both land on the bare page URL unless the anchor
    is kept per link, and the second was dropped as a duplicate of the first."""
    page = "http://news.example/live"
    polls = iter(
        [
            [Item("Storm live: coast braces", f"{page}#post-1", "p1", T0)],
            [Item("Storm live: power cut in the east", f"{page}#post-2", "p2", T0)],
        ]
    )
    feed_server.expect_request("/feed").respond_with_handler(
        lambda request: Response(rss(next(polls)), content_type="application/rss+xml")
    )
    _add(db_engine, feed_server.url_for("/feed"))
    clock = Clock()
    await _poll(db_engine, clock)
    clock.now += INTERVAL
    await _poll(db_engine, clock)
    assert _titles(db_engine) == ["Storm live: coast braces", "Storm live: power cut in the east"]


@pytest.mark.parametrize("fragment", ["xtor=RSS-3", "ixzz2vZpA", "utm_source=rss", "ref=feed"])
def test_tracking_fragments_fold_into_the_plain_url(fragment):
    body = rss([Item("Storm hits coast", f"http://news.example/a#{fragment}", "a", T0)])
    parsed = parse_feed(body, url="http://news.example/feed", content_type=None, fetched_at=T0)
    assert [e.url for e in parsed.entries] == ["http://news.example/a"]
