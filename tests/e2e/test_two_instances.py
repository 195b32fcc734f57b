"""Two Storywire instances on one PostgreSQL database: the work is shared, never done twice.

Each instance is a real Application (`build_application` and its `post_init`) with its own
engine, matcher and sender; the test drives their jobs (`poll_tick`, `delivery_tick`) itself,
both at once, on a shared fake clock, while a loopback feed server publishes articles over a day
and a half. Then one instance dies holding its leases and the other takes over. What the fake
Bot API received is checked against what the database says was published and followed.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select
from telegram.ext import AIORateLimiter, Application, ExtBot
from werkzeug import Request, Response

import bot.feeds.poller as poller_module
from bot import following
from bot.app import (
    MATCHER_LEASE,
    StorywireContext,
    build_application,
    delivery_tick,
    poll_tick,
)
from bot.delivery import SENDER_LEASE, OutboxSender
from store.chats import upsert_chat
from store.db import make_engine, session_scope
from store.feeds import add_feed
from store.leases import lease_holder
from store.models import Article, OutboxMessage, OutboxStatus, Story
from store.outbox import OutgoingPart, enqueue
from tests.conftest import PG_URL
from tests.e2e.harness import e2e_settings
from tests.fakes.bot_api import FakeBotApi
from tests.fakes.feeds import Item, rss

pytestmark = pytest.mark.skipif(PG_URL is None, reason="needs STORYWIRE_TEST_DATABASE_URL")

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
USER_CRIMEA, GROUP = 502, -700
FLIGHT_FOLLOWERS = (501, *range(510, 530))  # enough rows for a drain to take a while


class Clock:
    """The instances' shared clock: it moves only when the test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# Two processes would have two process_holder()s; two instances in one process get theirs from
# the task that runs their job (the poller asks for it when poll_tick builds one).
_holder: contextvars.ContextVar[str] = contextvars.ContextVar("holder")


@dataclass(frozen=True)
class Published:
    """An item and when its feed starts listing it."""

    feed: str
    at: timedelta
    event: str
    title: str
    source: str

    @property
    def guid(self) -> str:
        return f"{self.event}-{int(self.at.total_seconds())}-{self.source}"


# Three events with distinct vocabularies, so the one right clustering is plain.
SCRIPT = [
    Published("world", timedelta(0), "flight", "Malaysia Airlines flight MH370 missing with 239 aboard", "Reuters"),
    Published("world", timedelta(0), "flight", "Missing Malaysia Airlines MH370: search widens over sea", "BBC"),
    Published("tech", timedelta(0), "apple", "Apple releases iOS 7.1 with CarPlay", "The Verge"),
    Published("world", timedelta(minutes=40), "flight", "MH370 search: Malaysia Airlines jet still missing, oil slick found", "AP"),
    Published("tech", timedelta(minutes=50), "apple", "Apple iOS 7.1 update adds CarPlay and fixes bugs", "Wired"),
    Published("world", timedelta(hours=1, minutes=10), "crimea", "Crimea votes in referendum on joining Russia", "Reuters"),
    Published("world", timedelta(hours=1, minutes=30), "flight", "Malaysia Airlines MH370: relatives wait for news in Beijing", "CNN"),
    Published("world", timedelta(hours=2, minutes=20), "crimea", "Crimea referendum: voters back joining Russia, officials say", "BBC"),
    Published("tech", timedelta(hours=3), "flight", "Malaysia Airlines MH370 search moves to the Indian Ocean", "Guardian"),
    Published("world", timedelta(hours=5), "crimea", "US and EU reject Crimea referendum on joining Russia", "AP"),
    Published("tech", timedelta(hours=7), "apple", "Apple iOS 7.1 CarPlay update: what changes", "Engadget"),
    Published("world", timedelta(hours=10, minutes=31), "flight", "Malaysia Airlines MH370: Australia sends planes to search area", "ABC"),
    Published("world", timedelta(hours=26), "flight", "Malaysia Airlines MH370: satellite data points to Indian Ocean", "AFP"),
    Published("world", timedelta(hours=27), "crimea", "Putin signs treaty on Crimea joining Russia after referendum", "CNN"),
]  # fmt: skip


def feed_body(name: str, clock: Clock) -> bytes:
    """The feed as it reads now: the items published so far."""
    out = [p for p in SCRIPT if p.feed == name and T0 + p.at <= clock.now]
    items = [
        Item(p.title, f"https://news.example/{p.guid}", p.guid, T0 + p.at, f"{p.title}.", p.source)
        for p in out
    ]
    return rss(items, title=name)


@dataclass
class Instance:
    name: str
    application: Application
    context: StorywireContext
    alive: bool = True

    async def tick(self) -> None:
        """One poll tick and one delivery tick, as the JobQueue would run them."""
        _holder.set(self.name)
        await poll_tick(self.context)
        await delivery_tick(self.context)


@asynccontextmanager
async def instance(
    name: str, api: FakeBotApi, database_url: str, clock: Clock
) -> AsyncIterator[Instance]:
    """A Storywire Application set up as `storywire run` sets it up, its jobs left to the test."""
    settings = e2e_settings(api.url, database_url, parse_processes=0)
    application = build_application(settings, engine=make_engine(database_url), clock=clock)
    await application.initialize()
    assert application.post_init is not None
    await application.post_init(application)
    services = application.bot_data["services"]
    # Its own lease holder name, as a second process would have (post_init's sender and
    # poll_tick's poller use process_holder(), the same for both instances in one process).
    services.holder = name
    # per_chat_interval is real time, which the fake clock does not move; Telegram's pace is not
    # what this test is about
    services.sender = OutboxSender(
        services.engine, application.bot, holder=name, clock=clock, per_chat_interval=0
    )
    try:
        yield Instance(name, application, StorywireContext(application))
    finally:
        # A crashed instance releases nothing; this only closes its connections.
        if services.http is not None:
            await services.http.aclose()
        services.engine.dispose()
        await application.shutdown()


def _database_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _serve_feeds(server, clock: Clock, names=("world", "tech")) -> dict[str, str]:  # type: ignore[no-untyped-def]
    urls = {}
    for name in names:

        def handler(_request: Request, name: str = name) -> Response:
            return Response(feed_body(name, clock), content_type="application/rss+xml")

        server.expect_request(f"/{name}.xml").respond_with_handler(handler)
        urls[name] = server.url_for(f"/{name}.xml")
    return urls


def _set_up(engine: Engine, feed_urls: dict[str, str]) -> None:
    """Two feeds, two users and a group with a daily digest at 18:00 UTC, as the commands would."""
    with session_scope(engine) as session:
        for name, url in feed_urls.items():
            add_feed(url, session=session, name=name, now=T0)
        chats = [(c, "private") for c in (*FLIGHT_FOLLOWERS, USER_CRIMEA)] + [(GROUP, "group")]
        for chat_id, kind in chats:
            upsert_chat(chat_id, session=session, type=kind, title=None, username=None, now=T0)
    following.change_digest(engine, GROUP, enabled=True, time_text="18:00", now=T0)
    following.follow_topic(engine, USER_CRIMEA, "Crimea referendum", now=T0)


def _story_of(engine: Engine, word: str) -> int:
    with session_scope(engine) as session:
        stories = session.exec(select(Story).where(_live())).all()
        [story_id] = [s.id for s in stories if word in s.headline]
        return story_id  # type: ignore[return-value]


def _live():  # type: ignore[no-untyped-def]
    return Story.merged_into_id.is_(None)  # type: ignore[union-attr]


_DIGEST_KEY = re.compile(r"^story:(-?\d+):(\d+):(\d+)-(\d+):(\d+)$")


def _schedule(after: datetime, until: datetime) -> list[datetime]:
    """When the instances tick: at each publication and each 18:00, and twice 20 minutes after
    (a story may be matched a tick late, by whichever instance holds the matcher lease); the
    hours in between, when nothing is due, are skipped."""
    moments = [T0 + p.at for p in SCRIPT]
    moments += [datetime(2026, 3, day, 18, 0, tzinfo=UTC) for day in (10, 11)]
    ticks = {m + timedelta(minutes=k * 20) for m in moments for k in range(3)}
    return sorted(t for t in ticks if after < t <= until)


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
async def test_two_instances_share_the_work_and_one_takes_over_after_a_crash(
    db_engine, api, feed_server, monkeypatch
):
    clock = Clock(T0)
    monkeypatch.setattr(poller_module, "process_holder", _holder.get)
    _set_up(db_engine, _serve_feeds(feed_server, clock))
    url = _database_url(db_engine)
    async with instance("a", api, url, clock) as a, instance("b", api, url, clock) as b:

        async def tick_at(when: datetime) -> None:
            clock.now = when
            await asyncio.gather(*(i.tick() for i in (a, b) if i.alive))

        await tick_at(T0)
        await tick_at(T0 + timedelta(seconds=10))  # the first poll may have been matched late
        flight = _story_of(db_engine, "MH370")
        for chat_id in FLIGHT_FOLLOWERS:
            assert following.follow_story_id(db_engine, chat_id, flight, now=clock.now).created
        crash = datetime(2026, 3, 10, 19, 0, tzinfo=UTC)  # after the first day's group digest
        for when in _schedule(clock.now, crash - timedelta(minutes=30)):
            await tick_at(when)
        # At 18:31 the flight story moves; at 18:36 a ticks alone (what b held has run out), so
        # it takes the matcher and sender leases, queues the digests and sends them, except one
        # that meets Telegram's flood limit: a (no retries in its rate limiter) reschedules it
        # 30 s later. Then a dies, holding its leases, that row's retry pending.
        api.rate_limit("sendMessage", 30, chat_id=FLIGHT_FOLLOWERS[0])
        clock.now = crash - timedelta(minutes=24)
        await a.tick()
        a.alive = False
        assert lease_holder(db_engine, MATCHER_LEASE, now=clock.now) == "a"
        assert lease_holder(db_engine, SENDER_LEASE, now=clock.now) == "a"
        [retried] = [r for r in _outbox(db_engine) if r.status == OutboxStatus.PENDING]
        assert (retried.chat_id, retried.last_error) == (FLIGHT_FOLLOWERS[0], "RetryAfter 30s")
        sent = len(api.sent)
        await tick_at(clock.now + timedelta(seconds=10))  # b is kept out until they run out
        assert lease_holder(db_engine, SENDER_LEASE, now=clock.now) == "a"
        assert len(api.sent) == sent
        for when in _schedule(clock.now, T0 + timedelta(days=2)):
            await tick_at(when)
        assert lease_holder(db_engine, MATCHER_LEASE, now=clock.now) == "b"
        assert lease_holder(db_engine, SENDER_LEASE, now=clock.now) == "b"

    _assert_sent_once(db_engine, api)
    _assert_every_article_in_one_story(db_engine)
    _assert_followers_got_every_new_article(db_engine, api)
    group = [m.plain_text.splitlines()[0] for m in api.sent_to(GROUP)]
    assert group == ["Top stories — Tue 10 Mar 2026", "Top stories — Wed 11 Mar 2026"]


def _sent_rows(engine: Engine) -> list[OutboxMessage]:
    return [r for r in _outbox(engine) if r.status == OutboxStatus.SENT]


def _outbox(engine: Engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all())


def _assert_sent_once(engine: Engine, api: FakeBotApi) -> None:
    """Every queued message reached Telegram, and nothing reached it twice."""
    sent = Counter((m.chat_id, m.text) for m in api.sent)
    repeated = [key for key, n in sent.items() if n > 1]
    assert not repeated, f"sent more than once: {repeated}"
    rows = _outbox(engine)
    assert {r.status for r in rows} == {OutboxStatus.SENT}, [(r.id, r.status) for r in rows]
    assert sorted(sent) == sorted((r.chat_id, r.text) for r in rows)


def _assert_every_article_in_one_story(engine: Engine) -> None:
    """Every published item is stored once, in the one live story of its event; no story was
    started twice (a story with no articles that was not merged away)."""
    with session_scope(engine) as session:
        articles = session.exec(select(Article)).all()
    by_guid = {p.guid: p for p in SCRIPT}
    assert sorted(a.entry_key for a in articles) == sorted(by_guid)
    events: dict[str, set[int | None]] = defaultdict(set)
    for article in articles:
        events[by_guid[article.entry_key].event].add(article.story_id)
    assert {event: len(ids) for event, ids in events.items()} == {
        "flight": 1,
        "apple": 1,
        "crimea": 1,
    }, events
    _assert_no_story_started_twice(engine)


def _assert_no_story_started_twice(engine: Engine) -> None:
    """A story started twice for one article leaves one of the two with no articles; a story
    merged away has none either, but says where they went."""
    with session_scope(engine) as session:
        members = Counter(a.story_id for a in session.exec(select(Article)).all())
        stories = session.exec(select(Story)).all()
    for story in stories:
        if story.merged_into_id is None:
            assert members[story.id] == story.article_count > 0, story
        else:
            assert members[story.id] == 0, story


def _assert_followers_got_every_new_article(engine: Engine, api: FakeBotApi) -> None:
    """Each follower's digests of a story cover its articles after the follow, each once."""
    with session_scope(engine) as session:
        article_ids = defaultdict(list)
        for article in session.exec(select(Article).order_by(Article.id)).all():
            article_ids[article.story_id].append(article.id)
    ranges: dict[tuple[int, int], list[tuple[int, int, int]]] = defaultdict(list)
    for row in _outbox(engine):
        match = _DIGEST_KEY.match(row.dedup_key)
        if match:
            chat_id, story_id, after, newest, count = map(int, match.groups())
            ranges[(chat_id, story_id)].append((after, newest, count))
    flight = _story_of(engine, "MH370")
    crimea = _story_of(engine, "Crimea")
    followed = {(c, flight) for c in FLIGHT_FOLLOWERS} | {(USER_CRIMEA, crimea)}
    assert set(ranges) == followed, sorted(ranges)
    for (chat_id, story_id), spans in ranges.items():
        spans.sort()
        ids = article_ids[story_id]
        if chat_id == USER_CRIMEA:  # followed by its keywords in the batch that started it
            assert spans[0][0] < ids[0], spans
        else:  # followed by id after its first two
            assert spans[0][0] == ids[1], spans
        assert spans[-1][1] == ids[-1], spans
        for (_, newest, _), (after, _, _) in zip(spans, spans[1:], strict=False):
            assert after == newest, f"chat {chat_id}: a gap or an overlap in {spans}"
        for after, newest, count in spans:
            assert count == len([i for i in ids if after < i <= newest]), spans
    notices = [m for m in api.sent_to(USER_CRIMEA) if "Now following" in m.text]
    assert len(notices) == 1


# --- interleavings --------------------------------------------------------------------------


def _queue_notices(engine: Engine, chat_ids: list[int], now: datetime) -> None:
    with session_scope(engine) as session:
        for chat_id in chat_ids:
            enqueue(
                chat_id,
                [OutgoingPart(f"news for {chat_id}")],
                session=session,
                kind="notice",
                dedup_key=f"n{chat_id}",
                now=now,
            )


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
async def test_a_sender_whose_lease_ran_out_mid_round_sends_nothing_the_other_took(
    db_engine, api, bot
):
    """a's renewals did not land (a stall, a database hiccup) and b took the sender lease while
    a was sending a round one message at a time. Only the message a had in flight then may go
    out twice; a must not go on to send the rows b took over."""
    clock = Clock(T0)
    chats = list(range(601, 607))
    _queue_notices(db_engine, chats, T0)
    a = OutboxSender(db_engine, bot, holder="a", clock=clock, per_chat_interval=0, concurrency=1)
    b = OutboxSender(db_engine, bot, holder="b", clock=clock, per_chat_interval=0)
    api.delay("sendMessage", 0.5)  # a's first send is slow to be answered
    first = asyncio.create_task(a.drain())
    await api.wait_for(lambda: len(api.calls("sendMessage")) == 1)
    clock.advance(seconds=31)  # a's lease (30 s) has run out, its renewal not yet come
    await b.drain()
    await first
    sent = Counter(m.chat_id for m in api.sent)
    assert set(sent) == set(chats)
    twice = [chat for chat, n in sent.items() if n > 1]
    assert len(twice) <= 1, f"a sent the rows b had taken over: {twice}"
    assert {r.status for r in _outbox(db_engine)} == {OutboxStatus.SENT}


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
async def test_a_send_waiting_out_a_retry_after_keeps_the_other_instance_out(db_engine, api):
    """a's rate limiter waits out Telegram's RetryAfter (2 s, longer than the 1.2 s lease) and
    retries; b drains all the while. a's renewals keep b out: nothing goes out twice."""
    chats = [601, 602, 603]
    _queue_notices(db_engine, chats, datetime.now(UTC))
    limiter = AIORateLimiter(max_retries=1)
    async with ExtBot(api.token, base_url=api.bot_base_url, rate_limiter=limiter) as patient:
        ttl = timedelta(seconds=1.2)
        a = OutboxSender(db_engine, patient, holder="a", lease_ttl=ttl, per_chat_interval=0)
        async with ExtBot(api.token, base_url=api.bot_base_url) as plain:
            b = OutboxSender(db_engine, plain, holder="b", lease_ttl=ttl, per_chat_interval=0)
            api.rate_limit("sendMessage", 2, chat_id=chats[0])
            first = asyncio.create_task(a.drain())
            await api.wait_for(lambda: len(api.calls("sendMessage")) >= 1)
            kept_out = []
            while not first.done():
                kept_out.append((await b.drain()).skipped_lease)
                await asyncio.wait([first], timeout=0.1)
            summary = first.result()
    assert summary.sent == len(chats)
    assert kept_out and all(kept_out)
    assert sorted(m.chat_id for m in api.sent) == chats


@pytest.mark.parametrize("db_engine", ["postgresql"], indirect=True)
async def test_a_poll_outliving_its_lease_stores_and_sends_each_article_once(
    db_engine, api, feed_server, monkeypatch
):
    """a's poll hangs on one feed past its poller and matcher leases; b takes both over and does
    the work. When a's poll comes back, its articles are already there: nothing is stored,
    matched or sent twice."""
    clock = Clock(T0)
    monkeypatch.setattr(poller_module, "process_holder", _holder.get)
    urls = _serve_feeds(feed_server, clock)
    release, hanging = threading.Event(), threading.Event()

    def slow_tech(_request: Request) -> Response:
        if not hanging.is_set():  # the first request only: a's
            hanging.set()
            release.wait(10)
        return Response(feed_body("tech", clock), content_type="application/rss+xml")

    feed_server.clear()
    feed_server.expect_request("/tech.xml").respond_with_handler(slow_tech)
    _serve_feeds(feed_server, clock, names=("world",))
    _set_up(db_engine, urls)
    following.follow_topic(db_engine, FLIGHT_FOLLOWERS[0], "Malaysia Airlines MH370", now=T0)
    url = _database_url(db_engine)
    async with instance("a", api, url, clock) as a, instance("b", api, url, clock) as b:
        clock.now = T0 + timedelta(hours=3)  # every item of the first day's morning is out
        stuck = asyncio.create_task(a.tick())
        assert await asyncio.to_thread(hanging.wait, 10)
        clock.advance(minutes=11)  # a's poller (10 min) and matcher (5 min) leases run out
        await b.tick()
        await b.tick()  # what b stored the first time, it matches now at the latest
        assert len(_sent_rows(db_engine)) > 0  # b polled, matched and sent while a hung
        assert lease_holder(db_engine, MATCHER_LEASE, now=clock.now) == "b"
        release.set()
        await stuck
        for minutes in (20, 40):
            clock.now = T0 + timedelta(hours=3, minutes=minutes)
            await asyncio.gather(a.tick(), b.tick())
    _assert_sent_once(db_engine, api)
    with session_scope(db_engine) as session:
        articles = session.exec(select(Article)).all()
    published = [p.guid for p in SCRIPT if p.at <= timedelta(hours=3)]
    assert sorted(a.entry_key for a in articles) == sorted(published)
    assert all(article.story_id is not None for article in articles)
    _assert_no_story_started_twice(db_engine)
