"""Follows of stories and topics, and the query that finds follows with unsent articles."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from store.db import lock_rows
from store.models import (
    Article,
    Chat,
    ChatStatus,
    Follow,
    FollowBacklog,
    Story,
    StoryOptOut,
    TopicFollow,
)

log = logging.getLogger(__name__)


def follow_story(
    chat_id: int,
    story_id: int,
    *,
    session: Session,
    now: datetime,
    topic_id: int | None = None,
    from_article_id: int = 0,
) -> tuple[Follow, bool]:
    """Follow a story; returns (follow, created). Articles with id > from_article_id are unsent."""
    existing = session.exec(
        select(Follow).where(Follow.chat_id == chat_id).where(Follow.story_id == story_id)
    ).first()
    if existing is not None:
        return existing, False
    follow = Follow(
        chat_id=chat_id,
        story_id=story_id,
        topic_id=topic_id,
        last_digested_article_id=from_article_id,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(follow)
            session.flush()
    except IntegrityError:  # a concurrent follow of the same story won the race
        again = session.exec(
            select(Follow).where(Follow.chat_id == chat_id).where(Follow.story_id == story_id)
        ).one()
        return again, False
    return follow, True


def owe_articles(owed: Iterable[tuple[int, int]], *, session: Session, now: datetime) -> None:
    """Put (follow id, article id) pairs, articles below their follow's watermark, on the
    follows' backlogs (see FollowBacklog), in one statement."""
    rows = [{"follow_id": f, "article_id": a, "created_at": now} for f, a in owed]
    if rows:
        session.execute(sa.insert(FollowBacklog), rows)


def followed_story_ids(*, session: Session) -> set[int]:
    """The stories someone follows."""
    return set(session.exec(select(Follow.story_id).distinct()).all())


def owe_late_match(article_id: int, story_id: int, *, session: Session, now: datetime) -> int:
    """Owe the follows of a story the article just put in it (in this transaction, first match)
    if their watermark is past it; returns how many follows were owed it.

    Articles are matched in id order, so a new match is above every watermark of its story,
    unless a second writer (a poller whose lease lapsed, `storywire cluster --database` on the
    live database) committed it late under a lower id after a digest went past a higher one:
    then the watermark says it was sent, and it never would be.
    - Called before any merge moves the article: a merge then carries the backlog along with
      the follows, and applies its own rules to the survivor's followers (merge_stories).
    - The story's row is locked first, as a digest locks it before it reads (bot.digests.queue):
      a digest either ran before, and its watermark is read here, or runs after this commits
      and sends the article itself.
    - A follow ended meanwhile (a keyword unfollow does not take the story's lock) is owed
      nothing: its backlog insert fails alone, in a savepoint, not the whole matching batch."""
    lock_rows(session, Story.__table__, [story_id])  # type: ignore[arg-type]
    late = session.exec(
        select(Follow.id)
        .where(Follow.story_id == story_id)
        .where(col(Follow.last_digested_article_id) >= article_id)
        .order_by(col(Follow.id))
    ).all()
    return _owe_each([(f, article_id) for f in late], session=session, now=now)  # type: ignore[misc]


def owe_late_matches_to(
    follow_ids: Sequence[int], article_ids: Sequence[int], *, session: Session, now: datetime
) -> int:
    """owe_late_match for follows a merge just moved onto the story of articles matched earlier
    in the same transaction: when those articles were matched, the follows were on the other
    story, so nothing owed them these. Returns how many were owed."""
    if not follow_ids or not article_ids:
        return 0
    late = session.execute(
        sa.select(Follow.id, Article.id)
        .join(Article, col(Article.story_id) == col(Follow.story_id))
        .where(col(Follow.id).in_(list(follow_ids)))
        .where(col(Article.id).in_(list(article_ids)))
        .where(col(Article.id) <= col(Follow.last_digested_article_id))
        .where(
            ~sa.exists().where(
                col(FollowBacklog.follow_id) == col(Follow.id),
                col(FollowBacklog.article_id) == col(Article.id),
            )
        )
        .order_by(col(Follow.id), col(Article.id))
    ).all()
    return _owe_each([(f, a) for f, a in late], session=session, now=now)


def _owe_each(pairs: Sequence[tuple[int, int]], *, session: Session, now: datetime) -> int:
    """owe_articles one pair at a time, each in a savepoint: a follow ended meanwhile by a
    writer that does not lock the story (a keyword unfollow) fails its own insert, not the
    caller's transaction."""
    owed = 0
    for follow_id, article_id in pairs:
        try:
            with session.begin_nested():
                owe_articles([(follow_id, article_id)], session=session, now=now)
            owed += 1
        except IntegrityError:
            log.info("follow %d ended while article %d was owed to it", follow_id, article_id)
    return owed


def opt_out(chat_id: int, story_id: int, *, session: Session, now: datetime) -> None:
    """Record that the chat stopped following the story (kept once)."""
    known = session.exec(
        select(StoryOptOut.id)
        .where(StoryOptOut.chat_id == chat_id)
        .where(StoryOptOut.story_id == story_id)
    ).first()
    if known is not None:
        return
    try:
        with session.begin_nested():
            session.add(StoryOptOut(chat_id=chat_id, story_id=story_id, created_at=now))
            session.flush()
    except IntegrityError:  # recorded by a concurrent unfollow
        pass


def clear_opt_out(chat_id: int, story_id: int, *, session: Session) -> None:
    session.execute(
        sa.delete(StoryOptOut)
        .where(col(StoryOptOut.chat_id) == chat_id)
        .where(col(StoryOptOut.story_id) == story_id)
    )


def opted_out_chats(story_ids: Sequence[int], *, session: Session) -> set[int]:
    """Chats that unfollowed any of these stories."""
    if not story_ids:
        return set()
    return set(
        session.exec(
            select(StoryOptOut.chat_id).where(col(StoryOptOut.story_id).in_(list(story_ids)))
        ).all()
    )


def unfollow_story(chat_id: int, story_id: int, *, session: Session) -> bool:
    result = session.execute(
        sa.delete(Follow)
        .where(col(Follow.chat_id) == chat_id)
        .where(col(Follow.story_id) == story_id)
    )
    return bool(result.rowcount)


def get_follow(chat_id: int, story_id: int, *, session: Session) -> Follow | None:
    return session.exec(
        select(Follow).where(Follow.chat_id == chat_id).where(Follow.story_id == story_id)
    ).first()


def chat_follows(chat_id: int, *, session: Session) -> Sequence[tuple[Follow, Story]]:
    return session.exec(
        select(Follow, Story)
        .join(Story, col(Story.id) == col(Follow.story_id))
        .where(Follow.chat_id == chat_id)
        .order_by(col(Story.last_published_at).desc())
    ).all()


def story_followers(story_id: int, *, session: Session) -> Sequence[int]:
    return session.exec(select(Follow.chat_id).where(Follow.story_id == story_id)).all()


def mute_follow(follow: Follow, until: datetime | None, *, session: Session) -> None:
    follow.muted_until = until
    session.add(follow)


def set_follow_topic(follow: Follow, topic_id: int | None, *, session: Session) -> None:
    """Record which topic the follow stands for; None: the chat followed the story by id, and
    unfollowing a topic leaves it."""
    follow.topic_id = topic_id
    session.add(follow)


def topic_story_follows(topic_id: int, *, session: Session) -> Sequence[tuple[Follow, Story]]:
    """The follows that stand for this topic: it made them, and no follow by id took them over."""
    return session.exec(
        select(Follow, Story)
        .join(Story, col(Story.id) == col(Follow.story_id))
        .where(Follow.topic_id == topic_id)
        .order_by(col(Follow.id))
    ).all()


def find_topic(chat_id: int, query_key: str, *, session: Session) -> TopicFollow | None:
    return session.exec(
        select(TopicFollow)
        .where(TopicFollow.chat_id == chat_id)
        .where(TopicFollow.query_key == query_key)
    ).first()


def add_topic(
    chat_id: int, query: str, query_key: str, *, session: Session, now: datetime
) -> tuple[TopicFollow, bool]:
    existing = find_topic(chat_id, query_key, session=session)
    if existing is not None:
        return existing, False
    topic = TopicFollow(chat_id=chat_id, query=query, query_key=query_key, created_at=now)
    try:
        with session.begin_nested():
            session.add(topic)
            session.flush()
    except IntegrityError:  # the same words followed at the same moment (a double tap) won
        again = find_topic(chat_id, query_key, session=session)
        assert again is not None
        return again, False
    return topic, True


def remove_topic(chat_id: int, query_key: str, *, session: Session) -> bool:
    result = session.execute(
        sa.delete(TopicFollow)
        .where(col(TopicFollow.chat_id) == chat_id)
        .where(col(TopicFollow.query_key) == query_key)
    )
    return bool(result.rowcount)


def chat_topics(chat_id: int, *, session: Session) -> Sequence[TopicFollow]:
    return session.exec(
        select(TopicFollow).where(TopicFollow.chat_id == chat_id).order_by(col(TopicFollow.id))
    ).all()


def active_topics(*, session: Session) -> Sequence[TopicFollow]:
    """Topics of chats that still receive messages."""
    return session.exec(
        select(TopicFollow)
        .join(Chat, col(Chat.id) == col(TopicFollow.chat_id))
        .where(Chat.status == ChatStatus.ACTIVE)
    ).all()


@dataclass(frozen=True, slots=True)
class PendingFollow:
    follow_id: int
    chat_id: int
    story_id: int
    last_digested_article_id: int
    newest_article_id: int  # the watermark itself when only the backlog is unsent
    unsent: int
    first_unsent_at: datetime
    last_unsent_at: datetime
    owed: tuple[int, ...] = ()  # backlog article ids, ascending (see FollowBacklog)


def pending_follows(*, session: Session, now: datetime) -> list[PendingFollow]:
    """Follows of active, unmuted chats whose story has articles they have not been sent: above
    the watermark, or on the follow's backlog."""
    sendable = (
        Chat.status == ChatStatus.ACTIVE,
        sa.or_(col(Follow.muted_until).is_(None), col(Follow.muted_until) <= now),
    )
    stmt = (
        sa.select(
            Follow.id,
            Follow.chat_id,
            Follow.story_id,
            Follow.last_digested_article_id,
            sa.func.max(Article.id),
            sa.func.count(Article.id),
            sa.func.min(Article.fetched_at),
            sa.func.max(Article.fetched_at),
        )
        .join(Article, col(Article.story_id) == col(Follow.story_id))
        .join(Chat, col(Chat.id) == col(Follow.chat_id))
        .where(col(Article.id) > col(Follow.last_digested_article_id))
        .where(*sendable)
        .group_by(Follow.id, Follow.chat_id, Follow.story_id, Follow.last_digested_article_id)
    )
    pending = {row[0]: PendingFollow(*row) for row in session.execute(stmt).all()}
    backlog = (
        sa.select(
            Follow.id,
            Follow.chat_id,
            Follow.story_id,
            Follow.last_digested_article_id,
            FollowBacklog.article_id,
            FollowBacklog.created_at,
        )
        .join(FollowBacklog, col(FollowBacklog.follow_id) == col(Follow.id))
        # still in the followed story: a backlog never outlives a move, but a stray row is no news
        .join(
            Article,
            sa.and_(
                col(Article.id) == col(FollowBacklog.article_id),
                col(Article.story_id) == col(Follow.story_id),
            ),
        )
        .join(Chat, col(Chat.id) == col(Follow.chat_id))
        .where(*sendable)
        .order_by(col(Follow.id), col(FollowBacklog.article_id))
    )
    owed: dict[int, list[tuple[int, datetime]]] = {}
    heads: dict[int, tuple[int, int, int]] = {}
    for follow_id, chat_id, story_id, mark, article_id, since in session.execute(backlog).all():
        owed.setdefault(follow_id, []).append((article_id, since))
        heads[follow_id] = (chat_id, story_id, mark)
    for follow_id, items in owed.items():
        times = [since for _, since in items]
        ids = tuple(a for a, _ in items)
        above = pending.get(follow_id)
        if above is None:
            chat_id, story_id, mark = heads[follow_id]
            pending[follow_id] = PendingFollow(
                follow_id, chat_id, story_id, mark, mark, len(ids), min(times), max(times), ids
            )
        else:
            pending[follow_id] = dataclasses.replace(
                above,
                unsent=above.unsent + len(ids),
                first_unsent_at=min(above.first_unsent_at, *times),
                last_unsent_at=max(above.last_unsent_at, *times),
                owed=ids,
            )
    return [pending[f] for f in sorted(pending)]


def advance_follow(
    follow_id: int,
    after_id: int,
    newest_article_id: int,
    *,
    story_id: int,
    session: Session,
    owed: Sequence[int] = (),
) -> bool:
    """Record that the follow's articles up to `newest_article_id`, and those of its backlog in
    `owed`, were digested, if it still stands where the caller read it: at `after_id`, on
    `story_id`, owing at least `owed`. A compare-and-set: a second scheduler working from the
    same or an older read, or a merge that moved the follow to another story meanwhile, finds
    nothing to advance, so nothing is queued twice or from the wrong story."""
    if newest_article_id <= after_id and not owed:
        return False
    standing = (
        sa.update(Follow)
        .where(col(Follow.id) == follow_id)
        .where(col(Follow.story_id) == story_id)
        .where(col(Follow.last_digested_article_id) == after_id)
    )
    if not owed:
        result = session.execute(
            standing.where(col(Follow.last_digested_article_id) < newest_article_id).values(
                last_digested_article_id=newest_article_id
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
    # two writes that must land together: a savepoint undoes the first if the second finds that
    # another scheduler sent part of the backlog already
    savepoint = session.begin_nested()
    moved = session.execute(
        standing.values(last_digested_article_id=max(after_id, newest_article_id))
    )
    if moved.rowcount:  # type: ignore[attr-defined]
        sent = session.execute(
            sa.delete(FollowBacklog)
            .where(col(FollowBacklog.follow_id) == follow_id)
            .where(col(FollowBacklog.article_id).in_(list(owed)))
        )
        if sent.rowcount == len(set(owed)):  # type: ignore[attr-defined]
            savepoint.commit()
            return True
    savepoint.rollback()
    return False
