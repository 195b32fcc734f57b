"""What a merge owes a story's followers, in races and migrations (found in review; each test
failed before its fix)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from bot import following as svc
from bot.digests.queue import queue_story_digests
from store.db import session_scope
from store.models import Article, Follow, FollowBacklog, OutboxMessage, OutboxStatus
from tests.bot.digest_data import USER, add_articles, outbox_rows, with_user_and_group
from tests.bot.test_delivery_regressions import (
    POLICY,
    T,
    _meanwhile,
    _merge,
    _story,
)


@pytest.fixture
def engine(db_engine):  # type: ignore[no-untyped-def]
    return with_user_and_group(db_engine, T)


def _sent(tag: str, engine) -> int:  # type: ignore[no-untyped-def]
    return sum(f'/{tag}">' in r.text for r in outbox_rows(engine))


def test_a_merge_between_a_ticks_read_and_its_advance_loses_no_article(engine, monkeypatch):
    """The tick reads the survivor's articles, a merge (kept-only follow: its row is locked but
    left as is) commits, then the tick's compare-and-set still matches and moves the mark past
    the absorbed articles it never read: they are neither in the digest nor on the backlog."""
    import bot.digests.queue as queue_mod

    survivor, absorbed = _story(engine), _story(engine)
    add_articles(engine, survivor, 1, T - timedelta(hours=2), tag="s")
    svc.follow_story_id(engine, USER, survivor, now=T - timedelta(hours=2))  # mark = s0
    add_articles(engine, absorbed, 1, T - timedelta(hours=1), tag="anew")  # id above the mark
    add_articles(engine, survivor, 1, T - timedelta(hours=1), tag="snew")
    threads, wrap = _meanwhile(_merge(engine, absorbed, survivor, T))
    monkeypatch.setattr(queue_mod, "advance_follow", wrap(queue_mod.advance_follow))
    queue_story_digests(engine, now=T, policy=POLICY)
    threads[0].join(timeout=30)
    monkeypatch.undo()
    for hours in (1, 2, 3):
        queue_story_digests(engine, now=T + timedelta(hours=hours), policy=POLICY)
    assert _sent("snew0", engine) == 1
    assert _sent("anew0", engine) == 1, [r.text[:80] for r in outbox_rows(engine)]


def test_a_migrating_groups_backlog_goes_to_the_supergroups_follow_of_the_story(engine):
    """_move_rows deletes the group's follow when the supergroup already follows the story: the
    backlog goes with it (ON DELETE CASCADE), so the articles a merge owed the group are never
    sent to it under either id. merge_stories, for the same "one chat, two follows" case, keeps
    both backlogs."""
    from store.chats import migrate_chat, upsert_chat
    from store.stories import merge_stories
    from tests.bot.digest_data import GROUP

    new_id = -1001
    survivor, absorbed = _story(engine), _story(engine)
    add_articles(engine, absorbed, 1, T - timedelta(hours=3), tag="lone")  # lowest id
    add_articles(engine, survivor, 1, T - timedelta(hours=3), tag="s")
    svc.follow_story_id(engine, GROUP, survivor, now=T - timedelta(hours=3))  # mark = s0
    with session_scope(engine) as session:  # "lone" joins: owed to the group's follow
        merge_stories(absorbed, survivor, session=session, now=T - timedelta(hours=2))
        assert session.exec(select(FollowBacklog)).all()
    with session_scope(engine) as session:  # the supergroup's row came first, and follows too
        upsert_chat(new_id, session=session, type="supergroup", title="G", username=None, now=T)
    svc.follow_story_id(engine, new_id, survivor, now=T - timedelta(hours=1))
    with session_scope(engine) as session:
        migrate_chat(GROUP, new_id, session=session, now=T)
    for hours in (1, 2, 3):
        queue_story_digests(engine, now=T + timedelta(hours=hours), policy=POLICY)
    with session_scope(engine) as session:
        assert [f.chat_id for f in session.exec(select(Follow))] == [new_id]
    assert _sent("lone0", engine) == 1, [(r.chat_id, r.text[:60]) for r in outbox_rows(engine)]


def test_a_merge_reads_each_storys_articles_once_however_many_chats_follow_both(engine):
    """_owed_after_merge reads the absorbed story once, but the survivor once for every chat
    that followed both with the absorbed follow's mark higher: a keyword matching both first
    stories of an event makes that every keyword follower, inside the matcher's transaction."""
    from store.chats import upsert_chat
    from store.stories import merge_stories

    chats = [1000 + i for i in range(40)]
    with session_scope(engine) as session:
        for chat in chats:
            upsert_chat(chat, session=session, type="private", title=None, username=None, now=T)
    survivor, absorbed = _story(engine), _story(engine)
    add_articles(engine, survivor, 1, T - timedelta(hours=2), tag="s")
    for chat in chats:
        svc.follow_story_id(engine, chat, survivor, now=T)
    add_articles(engine, absorbed, 1, T - timedelta(hours=1), tag="a")
    for chat in chats:
        svc.follow_story_id(engine, chat, absorbed, now=T)  # its mark above the survivor's
    selects: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM article" in statement:
            selects.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(engine) as session:
            merge_stories(absorbed, survivor, session=session, now=T)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(selects) <= 3, f"{len(selects)} reads of article for {len(chats)} chats"


def test_articles_of_a_story_the_chat_unfollowed_are_not_owed_when_it_is_merged_in(engine):
    """Kept-only case: 'every absorbed article below [the mark] is news'. Not for a chat that
    followed the absorbed story, was sent its articles, then unfollowed it: the merge puts them
    on its survivor follow's backlog and they are sent a second time."""
    from store.stories import merge_stories

    survivor, absorbed = _story(engine), _story(engine)
    svc.follow_story_id(engine, USER, absorbed, now=T - timedelta(hours=4))
    add_articles(engine, absorbed, 1, T - timedelta(hours=4), tag="a")
    assert queue_story_digests(engine, now=T - timedelta(hours=3), policy=POLICY) == 1
    with session_scope(engine) as session:  # and it went out
        session.execute(sa.update(OutboxMessage).values(status=OutboxStatus.SENT))
    assert svc.unfollow(engine, USER, str(absorbed), now=T - timedelta(hours=3)) is not None
    add_articles(engine, survivor, 1, T - timedelta(hours=2), tag="s")
    svc.follow_story_id(engine, USER, survivor, now=T - timedelta(hours=2))  # mark above a0
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T - timedelta(hours=1))
    queue_story_digests(engine, now=T, policy=POLICY)
    assert _sent("a0", engine) == 1, [r.text[:60] for r in outbox_rows(engine)]


def test_a_follower_is_not_owed_what_the_absorbed_story_had_before_it_followed(engine):
    """A follow starts from now: every absorbed article below the watermark went on the backlog,
    so a merge with an older story sent its history to every follower as news."""
    from store.stories import merge_stories

    survivor, absorbed = _story(engine), _story(engine)
    add_articles(engine, absorbed, 3, T - timedelta(hours=3), tag="old")
    add_articles(engine, survivor, 1, T - timedelta(hours=3), tag="s")
    svc.follow_story_id(engine, USER, survivor, now=T - timedelta(hours=2))
    add_articles(engine, absorbed, 1, T - timedelta(hours=1), tag="while")  # came while following
    add_articles(engine, survivor, 1, T - timedelta(hours=1), tag="s-later")
    assert queue_story_digests(engine, now=T, policy=POLICY) == 1  # the mark passes "while"
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T)
        owed = session.execute(sa.select(FollowBacklog.article_id)).scalars().all()
        titles = [session.get(Article, a).title for a in owed]  # type: ignore[union-attr]
    assert [t.split(":")[0] for t in titles] == ["Storm update while0"]
