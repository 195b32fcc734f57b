"""Story queries: create and update from the matcher, ranking, lookup."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from store.models import Article, Follow, Story

MAX_MERGE_HOPS = 32


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


def resolve_story(story_id: int, *, session: Session) -> Story | None:
    """The story behind an id, following merges to the story that absorbed it."""
    story = session.get(Story, story_id)
    hops = 0
    while story is not None and story.merged_into_id is not None and hops < MAX_MERGE_HOPS:
        story = session.get(Story, story.merged_into_id)
        hops += 1
    return story


def merge_stories(absorbed_id: int, survivor_id: int, *, session: Session, now: datetime) -> None:
    """Move the absorbed story's articles and follows to the survivor, in the caller's transaction.

    A chat that followed both keeps one follow with the later watermark, so no article is sent to
    it twice; a chat that followed only the absorbed story now follows the survivor from its own
    watermark, so what it had not been sent yet still comes. The absorbed row stays, pointing at
    the survivor, so old buttons and `/story` ids keep working.
    """
    session.flush()
    session.execute(
        sa.update(Article).where(col(Article.story_id) == absorbed_id).values(story_id=survivor_id)
    )
    survivor_follows = {
        f.chat_id: f for f in session.exec(select(Follow).where(Follow.story_id == survivor_id))
    }
    for follow in session.exec(select(Follow).where(Follow.story_id == absorbed_id)).all():
        kept = survivor_follows.get(follow.chat_id)
        if kept is None:
            follow.story_id = survivor_id
            session.add(follow)
            continue
        kept.last_digested_article_id = max(
            kept.last_digested_article_id, follow.last_digested_article_id
        )
        kept.topic_id = kept.topic_id or follow.topic_id
        session.add(kept)
        session.delete(follow)
    session.execute(
        sa.update(Story)
        .where(col(Story.merged_into_id) == absorbed_id)
        .values(merged_into_id=survivor_id)
    )
    absorbed = session.get(Story, absorbed_id)
    if absorbed is not None:
        absorbed.merged_into_id = survivor_id
        absorbed.article_count = 0
        absorbed.source_count = 0
        absorbed.updated_at = now
        session.add(absorbed)
    session.flush()


def top_stories(*, session: Session, since: datetime, limit: int = 10) -> Sequence[Story]:
    """Stories active since `since`, ranked by distinct sources, then articles, then recency."""
    return session.exec(
        select(Story)
        .where(col(Story.last_published_at) >= since)
        .where(col(Story.merged_into_id).is_(None))
        .order_by(
            col(Story.source_count).desc(),
            col(Story.article_count).desc(),
            col(Story.last_published_at).desc(),
            col(Story.id).desc(),
        )
        .limit(limit)
    ).all()


def stories_updated_since(*, session: Session, since: datetime) -> Sequence[Story]:
    return session.exec(
        select(Story)
        .where(col(Story.updated_at) >= since)
        .where(col(Story.merged_into_id).is_(None))
    ).all()
