"""Queueing digests: debounce, exactly once per article, group digests at local time across DST."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot import following as svc
from bot.digests.queue import DigestPolicy, queue_group_digests, queue_story_digests
from bot.digests.schedule import Debounce
from store.db import session_scope
from store.follows import get_follow, mute_follow
from store.models import Chat
from store.stories import create_story
from tests.bot.digest_data import GROUP, USER, add_articles, outbox_rows, with_user_and_group

POLICY = DigestPolicy(
    debounce=Debounce(quiet=timedelta(minutes=10), max_wait=timedelta(minutes=60)), group_size=3
)
T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _story(engine, headline: str, at: datetime) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return create_story(session=session, headline=headline, published_at=at, now=at).id


@pytest.fixture
def engine(db_engine):  # type: ignore[no-untyped-def]
    return with_user_and_group(db_engine, T)


def test_a_burst_of_articles_is_one_digest_after_the_quiet_period(engine):
    story = _story(engine, "Storm hits coast", T)
    svc.follow_story_id(engine, USER, story, now=T)
    for minute in range(5):
        add_articles(engine, story, 1, T + timedelta(minutes=minute), tag=f"m{minute}")
        assert queue_story_digests(engine, now=T + timedelta(minutes=minute), policy=POLICY) == 0
    assert queue_story_digests(engine, now=T + timedelta(minutes=14), policy=POLICY) == 1
    [row] = outbox_rows(engine)
    assert "Updated (5 articles)" in row.text
    assert json.loads(row.reply_markup)["inline_keyboard"][0][0]["callback_data"] == f"unf:{story}"


def test_a_story_that_never_goes_quiet_is_sent_after_max_wait(engine):
    story = _story(engine, "Storm hits coast", T)
    svc.follow_story_id(engine, USER, story, now=T)
    for minute in range(0, 61, 5):
        add_articles(engine, story, 1, T + timedelta(minutes=minute), tag=f"m{minute}")
    assert queue_story_digests(engine, now=T + timedelta(minutes=60), policy=POLICY) == 1


def test_the_same_articles_are_never_queued_twice(engine):
    story = _story(engine, "Storm hits coast", T)
    svc.follow_story_id(engine, USER, story, now=T)
    add_articles(engine, story, 2, T)
    later = T + timedelta(minutes=20)
    assert queue_story_digests(engine, now=later, policy=POLICY) == 1
    assert queue_story_digests(engine, now=later, policy=POLICY) == 0
    add_articles(engine, story, 1, later, tag="b")
    assert queue_story_digests(engine, now=later + timedelta(minutes=20), policy=POLICY) == 1
    first, second = outbox_rows(engine)
    assert "Updated (2 articles)" in first.text and "Updated (1 article)" in second.text


def test_articles_before_the_follow_are_not_sent(engine):
    story = _story(engine, "Storm hits coast", T)
    add_articles(engine, story, 3, T)
    svc.follow_story_id(engine, USER, story, now=T)
    assert queue_story_digests(engine, now=T + timedelta(hours=2), policy=POLICY) == 0


def test_muted_follows_wait(engine):
    story = _story(engine, "Storm hits coast", T)
    svc.follow_story_id(engine, USER, story, now=T)
    with session_scope(engine) as session:
        mute_follow(
            get_follow(USER, story, session=session), T + timedelta(hours=24), session=session
        )
    add_articles(engine, story, 1, T)
    assert queue_story_digests(engine, now=T + timedelta(hours=1), policy=POLICY) == 0
    assert queue_story_digests(engine, now=T + timedelta(hours=25), policy=POLICY) == 1


def test_group_digest_goes_out_at_local_time_across_a_dst_change(engine):
    saturday = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    svc.change_timezone(engine, GROUP, "Europe/Berlin", now=saturday)
    svc.change_digest(engine, GROUP, enabled=True, time_text="08:00", now=saturday)
    story = _story(engine, "Storm hits coast", saturday)
    add_articles(engine, story, 3, saturday)
    sent_at = []
    now = saturday
    for _ in range(2 * 24 * 4):  # two days in 15-minute ticks
        now += timedelta(minutes=15)
        if queue_group_digests(engine, now=now, policy=POLICY):
            sent_at.append(now)
        if now.hour == 12 and now.minute == 0:
            add_articles(engine, story, 1, now, tag=now.isoformat())
    berlin = [t.astimezone(ZoneInfo("Europe/Berlin")) for t in sent_at]
    assert [(t.day, t.hour, t.minute) for t in berlin] == [(28, 8, 0), (29, 8, 0)]
    assert sent_at[1] - sent_at[0] == timedelta(hours=23)
    rows = outbox_rows(engine)
    assert len(rows) == 2 and all(r.kind == "group_digest" for r in rows)
    assert "Top stories — Sat 28 Mar 2026" in rows[0].text


def test_a_group_digest_tick_run_twice_queues_once(engine):
    svc.change_digest(engine, GROUP, enabled=True, time_text="13:00", now=T)
    story = _story(engine, "Storm hits coast", T)
    add_articles(engine, story, 2, T)
    at = T + timedelta(hours=1, minutes=1)
    assert queue_group_digests(engine, now=at, policy=POLICY) == 1
    assert queue_group_digests(engine, now=at, policy=POLICY) == 0
    with session_scope(engine) as session:
        assert session.get(Chat, GROUP).next_digest_at == T + timedelta(days=1, hours=1)


@pytest.mark.parametrize("zone_first", [False, True])
def test_a_digest_set_up_in_the_afternoon_comes_the_next_morning(engine, zone_first):
    """ "/digest 08:00" then "/timezone Europe/Berlin" at 15:00 Berlin queued a digest at once:
    08:00 had passed today in the new zone, so today's looked owed, though nothing was."""
    afternoon = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
    story = _story(engine, "Storm hits coast", afternoon)
    add_articles(engine, story, 3, afternoon - timedelta(hours=1))
    steps = [
        lambda at: svc.change_digest(engine, GROUP, enabled=True, time_text="08:00", now=at),
        lambda at: svc.change_timezone(engine, GROUP, "Europe/Berlin", now=at),
    ]
    for offset, step in enumerate(reversed(steps) if zone_first else steps):
        setting = step(afternoon + timedelta(seconds=30 * offset))
    assert setting.next_at == datetime(2026, 3, 11, 7, 0, tzinfo=UTC)
    assert queue_group_digests(engine, now=afternoon + timedelta(minutes=1), policy=POLICY) == 0


def test_a_digest_just_turned_on_and_moved_earlier_waits_for_tomorrow(engine):
    afternoon = datetime(2026, 3, 10, 14, 0, tzinfo=UTC)
    svc.change_digest(engine, GROUP, enabled=True, time_text=None, now=afternoon)
    setting = svc.change_digest(engine, GROUP, enabled=True, time_text="07:00", now=afternoon)
    assert setting.next_at == datetime(2026, 3, 11, 7, 0, tzinfo=UTC)
