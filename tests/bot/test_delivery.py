"""The outbox sender against the loopback Bot API: every Telegram answer leads to the right decision,
nothing is lost, and nothing is sent twice, even when the sender is killed mid-send."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlmodel import select

from bot.delivery import OutboxSender
from store.chats import upsert_chat
from store.db import session_scope
from store.follows import follow_story
from store.leases import acquire_lease
from store.models import Chat, ChatStatus, Follow, OutboxMessage, OutboxStatus
from store.outbox import OutgoingPart, counts, enqueue
from store.stories import create_story

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def sender_for(engine, bot, **kw) -> OutboxSender:  # type: ignore[no-untyped-def]
    return OutboxSender(engine, bot, per_chat_interval=0, **kw)


def queue(
    engine, chat_id: int, *texts: str, parse_mode: str | None = "HTML", kind: str = "notice"
) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        if session.get(Chat, chat_id) is None:
            upsert_chat(
                chat_id,
                session=session,
                type="private" if chat_id > 0 else "group",
                title=None,
                username=None,
                now=NOW,
            )
        for text in texts:
            enqueue(
                chat_id,
                [OutgoingPart(text, parse_mode=parse_mode)],
                session=session,
                kind=kind,
                dedup_key=f"{chat_id}:{text}",
                now=NOW,
            )


def rows(engine) -> list[OutboxMessage]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all())


async def test_messages_go_out_in_order_per_chat_and_are_marked_sent(db_engine, api, bot):
    queue(db_engine, 1, "a1", "a2", "a3")
    queue(db_engine, 2, "b1", "b2")
    summary = await sender_for(db_engine, bot).drain()
    assert summary.sent == 5
    assert [m.text for m in api.sent_to(1)] == ["a1", "a2", "a3"]
    assert [m.text for m in api.sent_to(2)] == ["b1", "b2"]
    assert all(r.status == OutboxStatus.SENT and r.telegram_message_id for r in rows(db_engine))


async def test_a_second_drain_sends_nothing_again(db_engine, api, bot):
    queue(db_engine, 1, "once")
    sender = sender_for(db_engine, bot)
    await sender.drain()
    await sender.drain()
    assert len(api.sent_to(1)) == 1


async def test_flood_limit_reschedules_the_row_without_losing_it(db_engine, api, bot):
    queue(db_engine, 1, "first", "second")
    api.rate_limit("sendMessage", 30, chat_id=1)
    clock = [datetime.now(UTC)]
    sender = sender_for(db_engine, bot, clock=lambda: clock[0])
    summary = await sender.drain()
    assert summary.retried == 1 and api.sent_to(1) == []
    first = rows(db_engine)[0]
    assert first.status == OutboxStatus.PENDING and "RetryAfter" in first.last_error
    clock[0] += timedelta(seconds=31)
    await sender.drain()
    assert [m.text for m in api.sent_to(1)] == ["first", "second"]


async def test_the_rate_limiter_waits_out_a_retry_after_itself(db_engine, api):
    from telegram.ext import AIORateLimiter, ExtBot

    queue(db_engine, 1, "hello")
    api.rate_limit("sendMessage", 1, chat_id=1)
    async with ExtBot(
        api.token, base_url=api.bot_base_url, rate_limiter=AIORateLimiter(max_retries=2)
    ) as limited:
        summary = await sender_for(db_engine, limited).drain()
    assert summary.sent == 1 and [m.text for m in api.sent_to(1)] == ["hello"]


async def test_blocked_chat_is_paused_and_its_rows_kept(db_engine, api, bot):
    queue(db_engine, 9, "one", "two")
    api.blocked.add(9)
    summary = await sender_for(db_engine, bot).drain()
    assert summary.parked == 1
    with session_scope(db_engine) as session:
        assert session.get(Chat, 9).status == ChatStatus.BLOCKED
    assert {r.status for r in rows(db_engine)} == {OutboxStatus.PARKED}


async def test_a_migrated_group_gets_its_message_at_the_new_id(db_engine, api, bot):
    queue(db_engine, -100, "digest")
    with session_scope(db_engine) as session:
        story = create_story(session=session, headline="S", published_at=NOW, now=NOW)
        follow_story(-100, story.id, session=session, now=NOW)
    api.migrate_on_send(-100, -1001234567890)
    await sender_for(db_engine, bot).drain()
    assert [m.text for m in api.sent_to(-1001234567890)] == ["digest"]
    with session_scope(db_engine) as session:
        assert session.get(Chat, -100).status == ChatStatus.MIGRATED
        assert [f.chat_id for f in session.exec(select(Follow)).all()] == [-1001234567890]


async def test_html_that_telegram_refuses_is_resent_as_plain_text(db_engine, api, bot):
    queue(db_engine, 1, "<b>Broken <i>markup</b> &amp; more")
    await sender_for(db_engine, bot).drain()
    [sent] = api.sent_to(1)
    assert sent.parse_mode is None and sent.text == "Broken markup & more"


async def test_network_errors_are_retried_with_backoff(db_engine, api, bot):
    queue(db_engine, 1, "hello")
    api.drop("sendMessage")
    clock = [datetime.now(UTC)]
    sender = sender_for(db_engine, bot, clock=lambda: clock[0])
    assert (await sender.drain()).retried == 1
    [row] = rows(db_engine)
    assert row.next_attempt_at >= clock[0] + timedelta(seconds=4)
    api.fail("sendMessage", 502, "Bad Gateway")
    clock[0] += timedelta(seconds=6)
    assert (await sender.drain()).retried == 1
    clock[0] += timedelta(seconds=11)
    assert (await sender.drain()).sent == 1
    assert [m.text for m in api.sent_to(1)] == ["hello"]


async def test_a_message_telegram_refuses_for_good_is_dead_not_retried(db_engine, api, bot):
    queue(db_engine, 1, "x" * 5000, parse_mode=None)
    assert (await sender_for(db_engine, bot).drain()).dead == 1
    assert rows(db_engine)[0].status == OutboxStatus.DEAD


async def test_only_the_lease_holder_sends(db_engine, api, bot):
    queue(db_engine, 1, "hello")
    assert acquire_lease(
        db_engine, "sender", "other-instance", ttl=timedelta(minutes=1), now=datetime.now(UTC)
    )
    summary = await sender_for(db_engine, bot).drain()
    assert summary.skipped_lease and api.sent == []


async def test_kill_9_mid_send_repeats_at_most_the_message_in_flight(
    sqlite_engine, api, bot, tmp_path
):
    total = 30
    for chat in (1, 2, 3):
        queue(sqlite_engine, chat, *(f"chat{chat}-msg{i:02d}" for i in range(total // 3)))
    api.send_delay = 0.3  # the message is accepted, then the answer takes a while
    database_url = str(sqlite_engine.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.run_sender",
        api.url,
        api.token,
        database_url,
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        await api.wait_for_messages(7, within=30)  # killed while the 7th is in flight
        proc.send_signal(signal.SIGKILL)
    finally:
        await proc.wait()
    before = len(api.sent)
    assert before < total
    api.send_delay = 0.0
    restarted = sender_for(sqlite_engine, bot)
    async with asyncio.timeout(20):
        while counts(sqlite_engine).get(OutboxStatus.SENT, 0) < total:
            await restarted.drain()  # skips until the dead sender's 2 s lease runs out
            await asyncio.sleep(0.1)
    seen = Counter(m.text for m in api.sent)
    assert set(seen) == {r.text for r in rows(sqlite_engine)}, "a message was lost"
    repeats = [text for text, n in seen.items() if n > 1]
    assert len(repeats) <= 1 and all(seen[t] == 2 for t in repeats)
    for chat in (1, 2, 3):  # per-chat order holds across the crash
        texts = list(dict.fromkeys(m.text for m in api.sent_to(chat)))
        assert texts == sorted(texts)
