"""Chat queries: first contact, status changes, group migration, digest settings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from store.db import lock_rows
from store.models import (
    Chat,
    ChatStatus,
    Follow,
    FollowBacklog,
    OutboxMessage,
    OutboxStatus,
    StoryOptOut,
    TopicFollow,
)


def get_chat(chat_id: int, *, session: Session) -> Chat | None:
    return session.get(Chat, chat_id)


def upsert_chat(
    chat_id: int,
    *,
    session: Session,
    type: str,
    title: str | None,
    username: str | None,
    now: datetime,
    default_timezone: str = "UTC",
    reactivate: bool = True,
) -> Chat:
    """Record a chat on first contact; later contacts refresh its names (and undo a block)."""
    chat = session.get(Chat, chat_id)
    if chat is None:
        chat = Chat(
            id=chat_id,
            type=type,
            title=title,
            username=username,
            timezone=default_timezone,
            created_at=now,
            updated_at=now,
        )
    else:
        chat.type = type
        chat.title = title
        chat.username = username
        if reactivate and chat.status in (ChatStatus.BLOCKED, ChatStatus.LEFT):
            chat.status = ChatStatus.ACTIVE
        chat.updated_at = now
    session.add(chat)
    session.flush()
    return chat


def lock_chat(chat_id: int, *, session: Session) -> Chat | None:
    """The chat, its row locked until the caller's transaction ends (a write that changes
    nothing: a row lock on PostgreSQL, the write lock on SQLite), read as it stands then.

    The sender pausing a chat and the chat coming back each read its status to decide what to
    do with its queue: read unlocked, one could act on a status the other was changing."""
    lock_rows(session, Chat.__table__, [chat_id])  # type: ignore[arg-type]
    return session.get(Chat, chat_id, populate_existing=True)


def set_chat_status(chat_id: int, status: str, *, session: Session, now: datetime) -> None:
    chat = lock_chat(chat_id, session=session)
    if chat is not None and chat.status != status:
        chat.status = status
        chat.updated_at = now
        session.add(chat)


def migrate_chat(old_id: int, new_id: int, *, session: Session, now: datetime) -> Chat | None:
    """Move a group's settings, follows, topics and unsent messages to its supergroup id.

    Idempotent: Telegram announces a migration in both chats, and a send may discover it too.
    """
    old = session.get(Chat, old_id)
    new = session.get(Chat, new_id)
    if old is None:
        # never recorded, yet a send to it said "migrated": move what waits for it, or the
        # sender would meet the same answer for ever
        _move_pending(old_id, new_id, session=session)
        return new
    if new is not None and old.status != ChatStatus.MIGRATED and not new.digest_enabled:
        # The supergroup's own row came first (its "migrated from" message, or any update from
        # it, can arrive before the old group's "migrated to"): it is the same group, so it
        # takes the group's settings rather than the defaults it was created with.
        new.timezone = old.timezone
        new.digest_enabled = old.digest_enabled
        new.digest_time = old.digest_time
        new.next_digest_at = old.next_digest_at
        new.title = new.title or old.title
        new.updated_at = now
        session.add(new)
    if new is None:
        new = Chat(
            id=new_id,
            type="supergroup",
            title=old.title,
            username=old.username,
            timezone=old.timezone,
            digest_enabled=old.digest_enabled,
            digest_time=old.digest_time,
            next_digest_at=old.next_digest_at,
            created_at=now,
            updated_at=now,
        )
        session.add(new)
        session.flush()
    _move_backlogs(old_id, new_id, session=session)
    _move_rows(Follow, "story_id", old_id, new_id, session=session)
    _move_rows(TopicFollow, "query_key", old_id, new_id, session=session)
    _move_rows(StoryOptOut, "story_id", old_id, new_id, session=session)
    _move_pending(old_id, new_id, session=session)
    old.status = ChatStatus.MIGRATED
    old.migrated_to_chat_id = new_id
    old.digest_enabled = False
    old.next_digest_at = None
    old.updated_at = now
    session.add(old)
    session.flush()
    return new


def _move_backlogs(old_id: int, new_id: int, *, session: Session) -> None:
    """Where the supergroup follows a story the group followed too, the group's follow goes (see
    _move_rows), and with it, by cascade, what a merge left it owed: give that to the
    supergroup's follow first, unless its own watermark will bring it anyway."""
    old, new = aliased(Follow), aliased(Follow)
    pairs = session.execute(
        sa.select(old.id, new.id, new.last_digested_article_id)
        .join(new, sa.and_(new.story_id == old.story_id, new.chat_id == new_id))
        .where(old.chat_id == old_id)
    ).all()
    for old_follow, new_follow, mark in pairs:
        theirs = sa.select(FollowBacklog.article_id).where(
            col(FollowBacklog.follow_id) == new_follow
        )
        session.execute(
            sa.update(FollowBacklog)
            .where(col(FollowBacklog.follow_id) == old_follow)
            .where(col(FollowBacklog.article_id) <= mark)
            .where(col(FollowBacklog.article_id).not_in(theirs))
            .values(follow_id=new_follow)
        )


def _move_rows(
    model: type[Follow] | type[TopicFollow] | type[StoryOptOut],
    key: str,
    old_id: int,
    new_id: int,
    *,
    session: Session,
) -> None:
    """Move the old chat's rows to the new id; one the new chat has already (same key) goes."""
    taken = set(session.exec(select(getattr(model, key)).where(model.chat_id == new_id)).all())
    for row in session.exec(select(model).where(model.chat_id == old_id)).all():
        if getattr(row, key) in taken:
            session.delete(row)
        else:
            row.chat_id = new_id
            session.add(row)


def _move_pending(old_id: int, new_id: int, *, session: Session) -> None:
    """Move what waits for the old id, parked rows too: news of a migration comes from inside
    the supergroup (its service message, or a send that reached it), so the bot is there and
    they can go, unless the supergroup's own row says it is paused."""
    new = session.get(Chat, new_id)
    paused = new is not None and new.status != ChatStatus.ACTIVE
    waiting = (OutboxStatus.PENDING, OutboxStatus.PARKED)
    session.execute(
        sa.update(OutboxMessage)
        .where(col(OutboxMessage.chat_id) == old_id)
        .where(col(OutboxMessage.status).in_(waiting))
        .values(chat_id=new_id, status=OutboxStatus.PARKED if paused else OutboxStatus.PENDING)
    )


def set_digest(
    chat: Chat,
    *,
    session: Session,
    enabled: bool,
    time_hhmm: str | None,
    next_at: datetime | None,
    now: datetime,
) -> None:
    chat.digest_enabled = enabled
    if time_hhmm is not None:
        chat.digest_time = time_hhmm
    chat.next_digest_at = next_at if enabled else None
    chat.updated_at = now
    session.add(chat)


def set_timezone(
    chat: Chat, timezone: str, *, session: Session, next_at: datetime | None, now: datetime
) -> None:
    chat.timezone = timezone
    if chat.digest_enabled:
        chat.next_digest_at = next_at
    chat.updated_at = now
    session.add(chat)


def chats_due_for_group_digest(*, session: Session, now: datetime) -> Sequence[Chat]:
    return session.exec(
        select(Chat)
        .where(col(Chat.digest_enabled).is_(True))
        .where(Chat.status == ChatStatus.ACTIVE)
        .where(col(Chat.next_digest_at).is_not(None))
        .where(col(Chat.next_digest_at) <= now)
        .order_by(col(Chat.next_digest_at))
    ).all()
