"""Feed queries: registration, the due list, and recording poll outcomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from store.models import MAX_ROW_ID, Article, Feed, FeedStatus


class FeedExists(Exception):
    """The URL is already registered."""


def add_feed(url: str, *, session: Session, name: str | None = None, now: datetime) -> Feed:
    """Register a feed, due at once. Raises FeedExists if the URL is already there."""
    if session.exec(select(Feed).where(Feed.url == url)).first() is not None:
        raise FeedExists(url)
    feed = Feed(url=url, name=name, created_at=now, next_poll_at=now)
    session.add(feed)
    session.flush()
    return feed


def enable_feed(feed: Feed, *, session: Session, now: datetime) -> bool:
    """Switch a disabled feed back on, due at once. False if it was already active."""
    if feed.status == FeedStatus.ACTIVE:
        return False
    feed.status = FeedStatus.ACTIVE
    feed.consecutive_failures = 0
    feed.disabled_reason = None
    feed.next_poll_at = now
    session.add(feed)
    return True


def get_feed(feed_id: int, *, session: Session) -> Feed | None:
    return session.get(Feed, feed_id)


def find_feed(id_or_url: str, *, session: Session) -> Feed | None:
    """A feed by id or by its exact URL. isdecimal, not isdigit: int() refuses '²'."""
    if id_or_url.isdecimal():
        feed_id = int(id_or_url)
        return session.get(Feed, feed_id) if 0 < feed_id <= MAX_ROW_ID else None
    return session.exec(select(Feed).where(Feed.url == id_or_url)).first()


def remove_feed(feed: Feed, *, session: Session) -> None:
    """Delete the feed; its articles stay (feed_id becomes NULL) so stories keep their sources."""
    session.execute(sa.update(Article).where(col(Article.feed_id) == feed.id).values(feed_id=None))
    session.delete(feed)


def list_feeds(*, session: Session) -> Sequence[Feed]:
    return session.exec(select(Feed).order_by(col(Feed.id))).all()


@dataclass(frozen=True, slots=True)
class FeedRow:
    feed: Feed
    article_count: int


def list_feeds_with_counts(*, session: Session) -> list[FeedRow]:
    counts = dict(
        session.exec(
            select(Article.feed_id, func.count(col(Article.id))).group_by(col(Article.feed_id))
        ).all()
    )
    return [FeedRow(f, int(counts.get(f.id, 0))) for f in list_feeds(session=session)]


def due_feeds(*, session: Session, now: datetime, limit: int | None = None) -> Sequence[Feed]:
    """Active feeds whose next poll time has come, oldest first."""
    stmt = (
        select(Feed)
        .where(Feed.status == FeedStatus.ACTIVE)
        .where(sa.or_(col(Feed.next_poll_at).is_(None), col(Feed.next_poll_at) <= now))
        .order_by(col(Feed.next_poll_at).asc().nulls_first(), col(Feed.id))
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return session.exec(stmt).all()


def feed_ids_by_url(*, session: Session) -> dict[str, int]:
    return {url: fid for fid, url in session.exec(select(Feed.id, Feed.url)).all() if fid}
