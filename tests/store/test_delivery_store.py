"""Outbox, follows and chats: the rules that make delivery exactly-once and ordered."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

from store.articles import NewArticle, insert_articles
from store.chats import migrate_chat, upsert_chat
from store.db import session_scope
from store.follows import add_topic, advance_follow, follow_story, pending_follows
from store.models import (
    Article,
    Chat,
    ChatStatus,
    Follow,
    OutboxMessage,
    OutboxStatus,
    TopicFollow,
)
from store.outbox import (
    OutgoingPart,
    claim,
    claimable,
    enqueue,
    mark_retry,
    mark_sent,
    park_chat,
    release_stale_claims,
    unpark_chat,
)
from store.stories import create_story
from tests.conftest import T0

TTL = timedelta(seconds=60)


def _chat(session, chat_id: int, type_: str = "private") -> None:
    upsert_chat(chat_id, session=session, type=type_, title=None, username=None, now=T0)


def _story_with_articles(session, n: int, *, at=T0) -> int:
    story = create_story(session=session, headline="Headline", published_at=at, now=at)
    for i in range(n):
        ids = insert_articles(
            None,
            [
                NewArticle(
                    entry_key=f"s{story.id}-{i}-{at.timestamp()}",
                    canonical_url=None,
                    url=None,
                    title=f"Article {i}",
                    summary="",
                    source="Outlet",
                    author="",
                    published_at=at,
                )
            ],
            session=session,
            fetched_at=at + timedelta(minutes=i),
        )
        session.get(Article, ids[0]).story_id = story.id
    session.flush()
    return story.id


def test_enqueue_with_same_dedup_key_is_one_row(db_engine):
    with session_scope(db_engine) as session:
        _chat(session, 1)
        first = enqueue(
            1, [OutgoingPart("hi")], session=session, kind="notice", dedup_key="k", now=T0
        )
        second = enqueue(
            1, [OutgoingPart("hi")], session=session, kind="notice", dedup_key="k", now=T0
        )
    assert (first, second) == (1, 0)


def test_a_claimed_row_cannot_be_claimed_again(db_engine):
    with session_scope(db_engine) as session:
        enqueue(1, [OutgoingPart("hi")], session=session, kind="notice", dedup_key="k", now=T0)
    [row_id] = claimable(db_engine, now=T0)
    assert claim(db_engine, row_id, "a", now=T0, ttl=TTL) is not None
    assert claim(db_engine, row_id, "b", now=T0, ttl=TTL) is None


def test_an_expired_claim_is_claimable_again(db_engine):
    with session_scope(db_engine) as session:
        enqueue(1, [OutgoingPart("hi")], session=session, kind="notice", dedup_key="k", now=T0)
    [row_id] = claimable(db_engine, now=T0)
    claim(db_engine, row_id, "dead-sender", now=T0, ttl=TTL)
    assert claimable(db_engine, now=T0 + TTL / 2) == []
    assert claimable(db_engine, now=T0 + TTL * 2) == [row_id]


def test_only_the_oldest_pending_row_of_a_chat_is_claimable(db_engine):
    with session_scope(db_engine) as session:
        for key in ("a", "b"):
            enqueue(1, [OutgoingPart(key)], session=session, kind="notice", dedup_key=key, now=T0)
        enqueue(2, [OutgoingPart("c")], session=session, kind="notice", dedup_key="c", now=T0)
    ids = claimable(db_engine, now=T0)
    assert len(ids) == 2  # head of chat 1 and head of chat 2
    first = claim(db_engine, ids[0], "s", now=T0, ttl=TTL)
    mark_sent(db_engine, first.id, "s", message_id=10, now=T0)
    assert first.text == "a"
    heads = claimable(db_engine, now=T0)
    assert len(heads) == 2 and ids[0] not in heads


def test_retry_keeps_order_until_due(db_engine):
    with session_scope(db_engine) as session:
        enqueue(1, [OutgoingPart("a")], session=session, kind="notice", dedup_key="a", now=T0)
        enqueue(1, [OutgoingPart("b")], session=session, kind="notice", dedup_key="b", now=T0)
    [head] = claimable(db_engine, now=T0)
    claim(db_engine, head, "s", now=T0, ttl=TTL)
    mark_retry(db_engine, head, "s", error="429", next_attempt_at=T0 + timedelta(seconds=30))
    assert claimable(db_engine, now=T0 + timedelta(seconds=1)) == []
    assert claimable(db_engine, now=T0 + timedelta(seconds=31)) == [head]


def test_mark_sent_requires_the_claim(db_engine):
    with session_scope(db_engine) as session:
        enqueue(1, [OutgoingPart("a")], session=session, kind="notice", dedup_key="a", now=T0)
    [head] = claimable(db_engine, now=T0)
    claim(db_engine, head, "s", now=T0, ttl=TTL)
    assert not mark_sent(db_engine, head, "intruder", message_id=1, now=T0)
    assert mark_sent(db_engine, head, "s", message_id=1, now=T0)


def test_stale_claims_of_other_holders_are_released(db_engine):
    with session_scope(db_engine) as session:
        enqueue(1, [OutgoingPart("a")], session=session, kind="notice", dedup_key="a", now=T0)
    [head] = claimable(db_engine, now=T0)
    claim(db_engine, head, "old", now=T0, ttl=timedelta(hours=1))
    assert release_stale_claims(db_engine, holder="new") == 1
    assert claimable(db_engine, now=T0) == [head]


def test_parked_chat_rows_wait_and_resume(db_engine):
    with session_scope(db_engine) as session:
        enqueue(1, [OutgoingPart("a")], session=session, kind="notice", dedup_key="a", now=T0)
    with session_scope(db_engine) as session:
        assert park_chat(1, session=session, error="blocked") == 1
    assert claimable(db_engine, now=T0) == []
    with session_scope(db_engine) as session:
        assert unpark_chat(1, session=session, now=T0) == 1
    assert len(claimable(db_engine, now=T0)) == 1


def test_pending_follows_counts_only_unsent_articles(db_engine):
    with session_scope(db_engine) as session:
        _chat(session, 7)
        story_id = _story_with_articles(session, 3)
        follow, created = follow_story(7, story_id, session=session, now=T0)
        assert created
    with session_scope(db_engine) as session:
        [pending] = pending_follows(session=session, now=T0)
        assert pending.unsent == 3
        assert pending.first_unsent_at == T0
        assert pending.last_unsent_at == T0 + timedelta(minutes=2)
        args = (pending.follow_id, pending.last_digested_article_id, pending.newest_article_id)
        assert advance_follow(*args, story_id=pending.story_id, session=session)
        assert not advance_follow(*args, story_id=pending.story_id, session=session)
    with session_scope(db_engine) as session:
        assert pending_follows(session=session, now=T0) == []


def test_blocked_chats_have_no_pending_follows(db_engine):
    with session_scope(db_engine) as session:
        _chat(session, 7)
        story_id = _story_with_articles(session, 1)
        follow_story(7, story_id, session=session, now=T0)
        session.get(Chat, 7).status = ChatStatus.BLOCKED
    with session_scope(db_engine) as session:
        assert pending_follows(session=session, now=T0) == []


def test_following_twice_is_one_follow(db_engine):
    with session_scope(db_engine) as session:
        _chat(session, 7)
        story_id = _story_with_articles(session, 1)
        follow_story(7, story_id, session=session, now=T0)
        _, created = follow_story(7, story_id, session=session, now=T0)
    assert not created


def test_migration_moves_follows_topics_and_queue(db_engine):
    with session_scope(db_engine) as session:
        _chat(session, -100, "group")
        chat = session.get(Chat, -100)
        chat.digest_enabled, chat.digest_time, chat.timezone = True, "08:00", "Europe/Berlin"
        story_id = _story_with_articles(session, 1)
        follow_story(-100, story_id, session=session, now=T0)
        add_topic(-100, "Nara summit", "nara summit", session=session, now=T0)
        enqueue(-100, [OutgoingPart("a")], session=session, kind="notice", dedup_key="a", now=T0)
    with session_scope(db_engine) as session:
        migrate_chat(-100, -1001, session=session, now=T0)
        migrate_chat(-100, -1001, session=session, now=T0)  # announced twice: idempotent
    with session_scope(db_engine) as session:
        new = session.get(Chat, -1001)
        assert (new.digest_enabled, new.digest_time, new.timezone) == (
            True,
            "08:00",
            "Europe/Berlin",
        )
        assert session.get(Chat, -100).status == ChatStatus.MIGRATED
        assert {f.chat_id for f in session.exec(select(Follow)).all()} == {-1001}
        assert {t.chat_id for t in session.exec(select(TopicFollow)).all()} == {-1001}
        assert {m.chat_id for m in session.exec(select(OutboxMessage)).all()} == {-1001}


def test_a_migrating_groups_paused_messages_go_to_the_supergroup(db_engine):
    """Only pending rows moved: those parked while the bot could not post there stayed on the
    old id, which no one would ever unpark, though the bot is plainly in the supergroup."""
    with session_scope(db_engine) as session:
        _chat(session, -100, "group")
        enqueue(-100, [OutgoingPart("a")], session=session, kind="notice", dedup_key="a", now=T0)
        assert park_chat(-100, session=session, error="Forbidden: not enough rights") == 1
        session.get(Chat, -100).status = ChatStatus.BLOCKED
        enqueue(-100, [OutgoingPart("b")], session=session, kind="notice", dedup_key="b", now=T0)
    with session_scope(db_engine) as session:  # its "migrated to" message: the bot is in there
        migrate_chat(-100, -1001, session=session, now=T0)
    with session_scope(db_engine) as session:
        rows = session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [(m.text, m.chat_id, m.status) for m in rows] == [
            ("a", -1001, OutboxStatus.PENDING),
            ("b", -1001, OutboxStatus.PENDING),
        ]
        assert session.get(Chat, -1001).status == ChatStatus.ACTIVE
