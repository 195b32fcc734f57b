"""Delivery faults found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

import bot.leases as bot_leases
from bot import following as svc
from bot.delivery import OutboxSender
from bot.digests.queue import (
    DigestPolicy,
    queue_group_digests,
    queue_story_digests,
)
from bot.digests.schedule import Debounce
from store.chats import migrate_chat, upsert_chat
from store.db import session_scope
from store.follows import pending_follows
from store.models import Chat, Follow, OutboxMessage
from store.outbox import OutgoingPart, enqueue
from store.stories import create_story
from tests.bot.digest_data import GROUP, USER, add_articles, outbox_rows, with_user_and_group

T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
POLICY = DigestPolicy(debounce=Debounce(quiet=timedelta(minutes=10)), group_size=3)


@pytest.fixture
def engine(db_engine):  # type: ignore[no-untyped-def]
    return with_user_and_group(db_engine, T)


def _story(engine, at: datetime = T) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return create_story(
            session=session, headline="Storm hits coast", published_at=at, now=at
        ).id


# --- 1. the sender lease is not kept alive while a round is sending ---------------------------


async def test_a_send_slower_than_the_lease_is_not_sent_again_by_a_second_instance(
    engine, api, bot
):
    with session_scope(engine) as session:
        enqueue(
            USER, [OutgoingPart("digest")], session=session, kind="notice", dedup_key="d", now=T
        )
    api.send_delay = 1.5  # Telegram accepted it; the answer (or the rate limiter) is slow
    a = OutboxSender(engine, bot, holder="instance-a", lease_ttl=timedelta(seconds=0.5))
    b = OutboxSender(engine, bot, holder="instance-b", lease_ttl=timedelta(seconds=0.5))
    first = asyncio.create_task(a.drain())
    await api.wait_for_messages(1, within=5)  # A's send is in flight
    await asyncio.sleep(0.7)  # A is still sending, its lease has run out
    await b.drain()
    await first
    assert [m.text for m in api.sent_to(USER)] == ["digest"], "sent twice"


# --- 2. two queue ticks that overlap send the same articles twice -----------------------------


def test_overlapping_queue_ticks_never_queue_an_article_twice(engine, monkeypatch):
    """Two instances (or a slow tick) read pending follows, then queue; the advance must be
    conditional on the watermark that was read, not merely on being lower than the new one."""
    import bot.digests.queue as queue_mod

    story = _story(engine)
    svc.follow_story_id(engine, USER, story, now=T)
    add_articles(engine, story, 3, T, tag="a")
    later = T + timedelta(minutes=30)
    with session_scope(engine) as session:
        read_by_a = pending_follows(session=session, now=later)  # A read: articles 1..3
    add_articles(engine, story, 2, T + timedelta(minutes=5), tag="b")
    with session_scope(engine) as session:
        read_by_b = pending_follows(session=session, now=later)  # B read: articles 1..5
    monkeypatch.setattr(queue_mod, "pending_follows", lambda **kw: read_by_a)
    assert queue_story_digests(engine, now=later, policy=POLICY) == 1  # A commits first
    monkeypatch.setattr(queue_mod, "pending_follows", lambda **kw: read_by_b)
    queue_story_digests(engine, now=later, policy=POLICY)  # then B, from what it read
    texts = [r.text for r in outbox_rows(engine)]
    sent_a0 = sum("Storm update a0" in t for t in texts)
    assert sent_a0 == 1, f"article a0 queued {sent_a0} times: {[t[:40] for t in texts]}"


# --- 3. a digest queued before an unfollow is still sent ----------------------------------------


async def test_a_digest_queued_before_an_unfollow_is_not_sent(engine, api, bot):
    story = _story(engine)
    svc.follow_story_id(engine, USER, story, now=T)
    add_articles(engine, story, 2, T)
    assert queue_story_digests(engine, now=T + timedelta(minutes=20), policy=POLICY) == 1
    assert svc.unfollow(engine, USER, str(story), now=T) is not None  # /unfollow before the send
    await OutboxSender(engine, bot, per_chat_interval=0).drain()
    assert [m.text[:40] for m in api.sent_to(USER)] == []


# --- 4. a supergroup already recorded loses the group's digest settings -----------------------


async def test_supergroup_keeps_digest_settings_when_migrate_from_arrives_first(api, tmp_path):
    from tests.e2e.harness import e2e_settings, running_bot, services_of
    from tests.e2e.test_bot import say

    settings = e2e_settings(api.url, f"sqlite:///{tmp_path / 'e2e.db'}")
    api.set_member_status(GROUP, 1, "administrator")
    new_id = -1009876543210
    async with running_bot(settings) as app:
        await say(api, GROUP, "/digest 07:15", user_id=1, chat_type="group")
        # Telegram posts a service message in each chat; nothing orders the two. Here the one in
        # the new supergroup is handled first (record() runs on it before migrated()).
        old = api._chat(GROUP, "group")
        new = api._chat(new_id, "supergroup", title=old.get("title"))
        api.migrate_chat(GROUP, new_id)
        admin = api._user(1000)
        await api._push(
            {"message": {**api._new_message(new, admin), "migrate_from_chat_id": GROUP}}
        )
        await api._push({"message": {**api._new_message(old, admin), "migrate_to_chat_id": new_id}})
        services = services_of(app)

        def migrated() -> bool:
            with session_scope(services.engine) as session:
                chat = session.get(Chat, GROUP)
                return chat is not None and chat.status == "migrated"

        await api.wait_for(migrated)
        reply = await say(api, new_id, "/digest", user_id=1)
    assert "07:15" in reply, reply


def test_migrate_chat_keeps_settings_when_the_supergroup_row_exists(db_engine):
    with session_scope(db_engine) as session:
        upsert_chat(GROUP, session=session, type="group", title="G", username=None, now=T)
        chat = session.get(Chat, GROUP)
        chat.digest_enabled, chat.digest_time, chat.timezone = True, "07:15", "Europe/Berlin"
        chat.next_digest_at = T + timedelta(hours=20)
        # any update from the new supergroup (its migrate_from message, a command) records it
        upsert_chat(-1001, session=session, type="supergroup", title="G", username=None, now=T)
    with session_scope(db_engine) as session:
        migrate_chat(GROUP, -1001, session=session, now=T)
    with session_scope(db_engine) as session:
        new = session.get(Chat, -1001)
        assert (new.digest_enabled, new.digest_time, new.timezone) == (
            True,
            "07:15",
            "Europe/Berlin",
        )


# --- 5. group digest dedup key depends on how many parts the digest splits into -----------------


def _long_stories(engine, first: int, last: int) -> None:  # type: ignore[no-untyped-def]
    for n in range(first, last + 1):
        with session_scope(engine) as session:
            sid = create_story(
                session=session,
                headline=f"Story {n} " + "headline words here " * 20,
                published_at=T,
                now=T,
            ).id
        add_articles(engine, sid, 3, T, tag=f"s{n}", title_len=250)


def test_moving_the_digest_time_after_it_went_sends_no_fragment_the_same_day(engine):
    policy = DigestPolicy(group_size=20)
    svc.change_digest(engine, GROUP, enabled=True, time_text="13:00", now=T)  # chat zone: UTC
    _long_stories(engine, 1, 8)  # today's digest is 2 messages
    assert queue_group_digests(engine, now=T + timedelta(hours=1), policy=policy) == 1
    first = [(r.dedup_key, r.part) for r in outbox_rows(engine)]
    assert len(first) == 2
    # 14:00: the admin moves the digest to 15:00; by then the news has grown to 3 messages
    svc.change_digest(engine, GROUP, enabled=True, time_text="15:00", now=T + timedelta(hours=2))
    _long_stories(engine, 9, 14)
    queue_group_digests(engine, now=T + timedelta(hours=3), policy=policy)
    rows = [(r.dedup_key, r.part) for r in outbox_rows(engine)]
    assert rows == first, f"queued on the same day as well: {rows[len(first) :]}"


# --- 6. merging two followed stories drops the absorbed story's unsent articles -----------------


def test_a_chat_following_both_merged_stories_still_gets_the_absorbed_storys_news(engine):
    from store.stories import merge_stories

    survivor = _story(engine)
    absorbed = _story(engine)
    svc.follow_story_id(engine, USER, survivor, now=T)
    svc.follow_story_id(engine, USER, absorbed, now=T)
    add_articles(engine, absorbed, 2, T, tag="absorbed")  # not sent yet: still in the quiet period
    add_articles(engine, survivor, 1, T - timedelta(minutes=30), tag="survivor")
    # the survivor's digest goes out (its own articles are older)
    assert queue_story_digests(engine, now=T + timedelta(minutes=5), policy=POLICY) == 1
    with session_scope(engine) as session:  # the matcher merges the two stories
        merge_stories(absorbed, survivor, session=session, now=T + timedelta(minutes=6))
    queue_story_digests(engine, now=T + timedelta(hours=2), policy=POLICY)
    texts = "\n".join(r.text for r in outbox_rows(engine))
    assert "Storm update absorbed0" in texts, "the absorbed story's articles were never sent"


def test_a_merge_between_reading_and_queueing_loses_nothing(engine, monkeypatch):
    """poll_tick (which merges) and delivery_tick (which queues) run at the same time in threads."""
    import bot.digests.queue as queue_mod
    from store.stories import merge_stories

    survivor = _story(engine)
    absorbed = _story(engine)
    svc.follow_story_id(engine, USER, absorbed, now=T)
    add_articles(engine, survivor, 1, T - timedelta(hours=1), tag="survivor")
    add_articles(engine, absorbed, 2, T, tag="absorbed")
    later = T + timedelta(minutes=20)
    with session_scope(engine) as session:
        read = pending_follows(session=session, now=later)  # delivery tick reads
    with session_scope(engine) as session:  # poll tick merges and commits
        merge_stories(absorbed, survivor, session=session, now=later)
    monkeypatch.setattr(queue_mod, "pending_follows", lambda **kw: read)
    queue_story_digests(engine, now=later, policy=POLICY)  # delivery tick queues
    monkeypatch.undo()
    queue_story_digests(engine, now=later + timedelta(hours=1), policy=POLICY)
    texts = [r.text for r in outbox_rows(engine)]
    assert not any("Updated (0 new" in t for t in texts), texts
    assert any("Storm update absorbed0" in t for t in texts), texts


def test_a_send_to_an_unrecorded_chat_that_migrated_moves_its_messages(db_engine):
    """Without a Chat row for the old id, the sender's ChatMigrated retry would meet the same
    answer for ever; its waiting messages move to the new id all the same."""
    with session_scope(db_engine) as session:
        enqueue(-5, [OutgoingPart("hello")], session=session, kind="notice", dedup_key="n", now=T)
    with session_scope(db_engine) as session:
        migrate_chat(-5, -1005, session=session, now=T)
    with session_scope(db_engine) as session:
        [row] = session.exec(select(OutboxMessage)).all()
        assert row.chat_id == -1005


# --- a sender whose lease lapsed and came back ------------------------------------------------


class _GatedBot:
    """Records sends; the first waits for `gate` (a rate limiter waiting out a flood limit)."""

    def __init__(self, name: str, log: list[tuple[str, str]], gate: asyncio.Event | None = None):
        self.name, self.log, self.gate, self.first = name, log, gate, ""

    async def send_message(self, chat_id, text, **kwargs):  # type: ignore[no-untyped-def]
        if self.gate is not None and not self.gate.is_set():
            self.first = text
            await self.gate.wait()
        self.log.append((self.name, text))
        return type("Message", (), {"message_id": 1})()


async def test_a_sender_whose_lease_came_back_after_another_sent_its_rows_sends_none_again(
    engine, monkeypatch
):
    """A's renewals failed, B took the lease over, freed A's claims, sent both rows and stopped;
    A's next renewal took the free lease again, and A, sure of it, sent the row it had claimed
    but never started, a second time."""
    now = lambda: datetime.now(UTC)  # noqa: E731 - real time: leases run out while we wait
    with session_scope(engine) as session:
        for chat_id, text in ((USER, "r1"), (GROUP, "r2")):
            enqueue(chat_id, [OutgoingPart(text)], session=session, kind="notice",
                    dedup_key=text, now=now())  # fmt: skip
    ttl, log, gate = timedelta(seconds=1.5), [], asyncio.Event()
    a_bot = _GatedBot("A", log, gate)
    a = OutboxSender(engine, a_bot, holder="A", lease_ttl=ttl, concurrency=1, per_chat_interval=0)  # type: ignore[arg-type]
    b = OutboxSender(engine, _GatedBot("B", log), holder="B", lease_ttl=ttl, per_chat_interval=0)  # type: ignore[arg-type]
    real_take, a_offline = bot_leases.take_lease, True

    def take(engine_, name, holder, **kwargs):  # type: ignore[no-untyped-def]
        if holder == "A" and a_offline:
            raise ConnectionError("A cannot reach the database for a while")
        return real_take(engine_, name, holder, **kwargs)

    monkeypatch.setattr(bot_leases, "take_lease", take)
    drain_a = asyncio.create_task(a.drain(max_rounds=1))
    await asyncio.sleep(ttl.total_seconds() + 0.3)  # A's lease has run out, one row in flight
    await b.drain()
    await b.release()
    a_offline = False
    async with asyncio.timeout(10):
        # A's renewal task takes the free lease again; it sets `lapsed` and signals nothing
        while not (a._kept and a._kept.lapsed):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    gate.set()
    await drain_a
    never_in_flight = "r2" if a_bot.first == "r1" else "r1"
    assert [text for _, text in log].count(never_in_flight) == 1, log


# --- a merge committing while a chat follows, unfollows or is sent a digest ------------------


def _meanwhile(action) -> tuple[list[threading.Thread], object]:  # type: ignore[no-untyped-def]
    """A wrapper that runs `action` in another thread (another instance, the matcher's thread)
    just before the wrapped function, giving it a second to commit: it cannot while the
    transaction under test holds the locks the fix takes, and then runs once that commits."""
    threads: list[threading.Thread] = []

    def wrap(real):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            if not threads:
                threads.append(threading.Thread(target=action))
                threads[0].start()
                threads[0].join(timeout=1)
            return real(*args, **kwargs)

        return wrapped

    return threads, wrap


def _merge(engine, absorbed: int, survivor: int, at: datetime):  # type: ignore[no-untyped-def]
    def action() -> None:
        from store.stories import merge_stories

        with session_scope(engine) as session:
            merge_stories(absorbed, survivor, session=session, now=at)

    return action


def test_a_follow_made_while_its_story_is_merged_away_moves_with_it(engine, monkeypatch):
    """The follow was written on the story the merge had just absorbed: no digest ever came."""
    x, y = _story(engine), _story(engine)
    add_articles(engine, x, 1, T, tag="x")
    add_articles(engine, y, 1, T, tag="y")
    threads, wrap = _meanwhile(_merge(engine, x, y, T))
    monkeypatch.setattr(svc, "follow_story", wrap(svc.follow_story))
    assert svc.follow_story_id(engine, USER, x, now=T).created
    threads[0].join(timeout=30)
    with session_scope(engine) as session:
        assert [(f.chat_id, f.story_id) for f in session.exec(select(Follow))] == [(USER, y)]


def test_an_unfollow_made_while_its_story_is_merged_away_still_ends_it(engine, monkeypatch):
    x, y = _story(engine), _story(engine)
    add_articles(engine, x, 1, T, tag="x")
    add_articles(engine, y, 1, T, tag="y")
    svc.follow_story_id(engine, USER, x, now=T)
    threads, wrap = _meanwhile(_merge(engine, x, y, T))
    monkeypatch.setattr(svc, "unfollow_story", wrap(svc.unfollow_story))
    assert svc.unfollow(engine, USER, str(x), now=T) is not None
    threads[0].join(timeout=30)
    with session_scope(engine) as session:
        assert session.exec(select(Follow)).all() == []


def test_a_digest_queued_while_a_merge_runs_is_not_queued_again(engine, monkeypatch):
    """The merge read the kept follow's watermark, a delivery tick queued the news and moved it
    on, and the merge wrote the old watermark back: the next digest repeated the news."""
    import store.stories as stories_mod

    a, b = _story(engine), _story(engine)
    add_articles(engine, a, 2, T - timedelta(hours=2), tag="a")
    add_articles(engine, b, 1, T - timedelta(hours=2), tag="b")
    svc.follow_story_id(engine, USER, b, now=T)
    add_articles(engine, a, 1, T - timedelta(hours=1), tag="later")
    svc.follow_story_id(engine, USER, a, now=T)  # everything of both sent, a's mark the higher
    add_articles(engine, b, 1, T, tag="news")
    later = T + timedelta(hours=1)

    def tick() -> None:
        queue_story_digests(engine, now=later, policy=POLICY)

    threads, wrap = _meanwhile(tick)
    monkeypatch.setattr(stories_mod, "_owed_after_merge", wrap(stories_mod._owed_after_merge))
    with session_scope(engine) as session:
        stories_mod.merge_stories(a, b, session=session, now=later)
    threads[0].join(timeout=30)
    monkeypatch.undo()
    queue_story_digests(engine, now=later + timedelta(hours=1), policy=POLICY)
    texts = [r.text for r in outbox_rows(engine)]
    assert sum("Storm update news0" in t for t in texts) == 1, texts


async def test_a_user_back_while_the_sender_pauses_the_chat_gets_every_message(
    engine, api, bot, monkeypatch
):
    """The sender marked the chat blocked, then parked its rows in a second transaction; a /start
    in between reactivated the chat with nothing yet parked, and its rows stayed parked for good."""
    import bot.delivery as delivery_mod

    with session_scope(engine) as session:
        enqueue(USER, [OutgoingPart("digest A")], session=session, kind="story_digest",
                dedup_key="a", now=T)  # fmt: skip
    api.blocked.add(USER)

    def user_is_back() -> None:
        api.blocked.discard(USER)
        svc.record_chat(
            engine, USER, type="private", title=None, username="u", now=T, default_timezone="UTC"
        )

    threads, wrap = _meanwhile(user_is_back)
    monkeypatch.setattr(delivery_mod, "park_chat", wrap(delivery_mod.park_chat))
    assert (await OutboxSender(engine, bot, clock=lambda: T, per_chat_interval=0).drain()).parked
    threads[0].join(timeout=30)
    monkeypatch.undo()
    await OutboxSender(engine, bot, clock=lambda: T + timedelta(minutes=1)).drain()
    assert [m.text for m in api.sent_to(USER)] == ["digest A"]


# --- a merge brings older articles into a followed story ---------------------------------------


def _texts(engine) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.text for r in outbox_rows(engine)]


def _sent(texts: list[str], tag: str) -> int:
    """How many digests list the article among their sources (its link ends in its tag)."""
    return sum(f'/{tag}">' in t for t in texts)


def test_a_follower_of_the_survivor_gets_the_articles_a_merge_brings_in_below_its_mark(engine):
    """Only articles above the follow's watermark were ever digested: the absorbed story's, older
    than the survivor's last digest, showed only under "All related articles"."""
    from store.stories import merge_stories

    survivor, absorbed = _story(engine), _story(engine)
    add_articles(engine, absorbed, 1, T - timedelta(hours=2), tag="lone")  # the lowest id
    add_articles(engine, survivor, 1, T - timedelta(hours=2), tag="s")
    svc.follow_story_id(engine, USER, survivor, now=T - timedelta(hours=2))
    add_articles(engine, survivor, 1, T - timedelta(hours=1), tag="news")
    assert queue_story_digests(engine, now=T, policy=POLICY) == 1  # "news", mark above "lone"
    with session_scope(engine) as session:  # "lone" gets its second look and joins
        merge_stories(absorbed, survivor, session=session, now=T)
    assert queue_story_digests(engine, now=T + timedelta(minutes=5), policy=POLICY) == 0  # quiet
    assert queue_story_digests(engine, now=T + timedelta(minutes=15), policy=POLICY) == 1
    assert queue_story_digests(engine, now=T + timedelta(hours=2), policy=POLICY) == 0
    texts = _texts(engine)
    assert [_sent(texts, t) for t in ("lone0", "news0", "s0")] == [1, 1, 0], texts
    assert "lone0" in texts[-1], texts


def test_a_chat_following_both_merged_stories_is_sent_each_article_once(engine):
    """It took the lower of the two watermarks: the next digest repeated the other story's
    articles between them."""
    from store.stories import merge_stories

    survivor, absorbed = _story(engine), _story(engine)
    add_articles(engine, survivor, 1, T - timedelta(hours=3), tag="s")
    add_articles(engine, absorbed, 1, T - timedelta(hours=3), tag="a")
    svc.follow_story_id(engine, USER, absorbed, now=T - timedelta(hours=3))  # "a0" counts as sent
    add_articles(engine, absorbed, 1, T - timedelta(hours=2), tag="a-later")  # absorbed: unsent
    add_articles(engine, survivor, 1, T - timedelta(hours=2), tag="s-later")
    svc.follow_story_id(engine, USER, survivor, now=T - timedelta(hours=2))  # all of it sent
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T)
    queue_story_digests(engine, now=T + timedelta(hours=2), policy=POLICY)
    texts = _texts(engine)
    assert [_sent(texts, t) for t in ("a-later0", "s-later0", "a0", "s0")] == [1, 0, 0, 0], texts


def test_two_ticks_that_read_the_same_backlog_queue_it_once(engine, monkeypatch):
    import bot.digests.queue as queue_mod
    from store.stories import merge_stories

    survivor, absorbed, other = _story(engine), _story(engine), _story(engine)
    svc.follow_story_id(engine, USER, survivor, now=T - timedelta(hours=3))
    add_articles(engine, absorbed, 1, T - timedelta(hours=2), tag="lone")
    add_articles(engine, other, 1, T - timedelta(hours=2), tag="other")
    add_articles(engine, survivor, 1, T - timedelta(hours=2), tag="s")
    assert queue_story_digests(engine, now=T, policy=POLICY) == 1  # "s": the mark passes the rest
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T)
    later = T + timedelta(hours=1)
    with session_scope(engine) as session:
        read_by_a = pending_follows(session=session, now=later)
    with session_scope(engine) as session:  # a second merge between B's read and A's
        merge_stories(other, survivor, session=session, now=T)
        read_by_b = pending_follows(session=session, now=later)
    assert [p.owed for p in read_by_a] != [p.owed for p in read_by_b]
    for read in (read_by_a, read_by_a, read_by_b):  # A, A again, then B from its older read
        monkeypatch.setattr(queue_mod, "pending_follows", lambda read=read, **kw: read)
        queue_story_digests(engine, now=later, policy=POLICY)
    monkeypatch.undo()
    queue_story_digests(engine, now=later + timedelta(hours=1), policy=POLICY)
    texts = _texts(engine)
    assert [_sent(texts, t) for t in ("lone0", "other0", "s0")] == [1, 1, 1], texts


def test_the_same_keywords_followed_twice_at_once_are_followed_once(engine, monkeypatch):
    """A double tap: both looked for the topic, found none and added it; the second's insert
    broke the unique constraint, and the user got an error instead of "already following"."""
    import store.follows as follows_mod

    real, other = follows_mod.find_topic, []

    def read_then_the_other_commits(*args, **kwargs):  # type: ignore[no-untyped-def]
        found = real(*args, **kwargs)
        if not other:
            other.append(threading.Thread(target=svc.follow_topic, args=(engine, USER, "bitcoin")
                                          , kwargs={"now": T}))  # fmt: skip
            other[0].start()
            other[0].join(timeout=10)
        return found

    monkeypatch.setattr(follows_mod, "find_topic", read_then_the_other_commits)
    result = svc.follow_topic(engine, USER, "Bitcoin", now=T)
    assert not result.created
    assert svc.following(engine, USER).topics == ("bitcoin",)
