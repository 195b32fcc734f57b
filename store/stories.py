"""Story queries: create and update from the matcher, ranking, lookup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from store.models import Story


def create_story(
    *, session: Session, headline: str, published_at: datetime, now: datetime
) -> Story:
    story = Story(
        headline=headline[:500],
        article_count=0,
        source_count=0,
        first_published_at=published_at,
        last_published_at=published_at,
        created_at=now,
        updated_at=now,
    )
    session.add(story)
    session.flush()
    return story


def update_story(
    story: Story,
    *,
    session: Session,
    headline: str,
    article_count: int,
    source_count: int,
    first_published_at: datetime,
    last_published_at: datetime,
    now: datetime,
) -> None:
    story.headline = headline[:500]
    story.article_count = article_count
    story.source_count = source_count
    story.first_published_at = first_published_at
    story.last_published_at = last_published_at
    story.updated_at = now
    session.add(story)


def get_story(story_id: int, *, session: Session) -> Story | None:
    return session.get(Story, story_id)


def top_stories(*, session: Session, since: datetime, limit: int = 10) -> Sequence[Story]:
    """Stories active since `since`, ranked by distinct sources, then articles, then recency."""
    return session.exec(
        select(Story)
        .where(col(Story.last_published_at) >= since)
        .order_by(
            col(Story.source_count).desc(),
            col(Story.article_count).desc(),
            col(Story.last_published_at).desc(),
            col(Story.id).desc(),
        )
        .limit(limit)
    ).all()


def stories_updated_since(*, session: Session, since: datetime) -> Sequence[Story]:
    return session.exec(select(Story).where(col(Story.updated_at) >= since)).all()
