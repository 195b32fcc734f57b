"""Story queries: create and update from the matcher, ranking, lookup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from store.db import lock_rows
from store.models import MAX_ROW_ID, Article, Follow, Story

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
    """The story behind an id, following merges to the story that absorbed it. An id outside the
    id column's range is no story (PostgreSQL would refuse to even look it up)."""
    if not 0 < story_id <= MAX_ROW_ID:
        return None
    story = session.get(Story, story_id)
    hops = 0
    while story is not None and story.merged_into_id is not None and hops < MAX_MERGE_HOPS:
        story = session.get(Story, story.merged_into_id)
        hops += 1
    return story


def lock_story(story_id: int, *, session: Session) -> Story | None:
    """`resolve_story`, its row locked until the caller's transaction ends.

    A merge locks both its stories' rows first (see merge_stories), so a follow made on the
    story this returns cannot be left behind on a story merged away meanwhile: the merge either
    committed before the lock, and this follows it to the survivor, or waits, and then moves the
    follow with the rest."""
    for _ in range(MAX_MERGE_HOPS + 1):
        story = resolve_story(story_id, session=session)
        if story is None:
            return None
        lock_rows(session, Story.__table__, [story.id])  # type: ignore[arg-type,list-item]
        session.refresh(story)  # as it stands now that no merge can change it
        if story.merged_into_id is None:
            return story
        story_id = story.merged_into_id
    return None


def merged_story_ids(story_id: int, *, session: Session) -> list[int]:
    """Ids of the stories merged into this one (merges always point at the final survivor)."""
    return list(session.exec(select(Story.id).where(Story.merged_into_id == story_id)))  # type: ignore[arg-type]


def merge_stories(absorbed_id: int, survivor_id: int, *, session: Session, now: datetime) -> None:
    """Move the absorbed story's articles and follows to the survivor, in the caller's transaction.

    A chat that followed both keeps one follow, with the watermark that loses nothing and repeats
    nothing when there is one (see `_merged_watermark`), followed by id if either was (so that
    unfollowing a topic leaves it); a chat that followed only the absorbed
    story now follows the survivor from its own watermark, so what it had not been sent still
    comes. The absorbed row stays, pointing at
    the survivor, so old buttons and `/story` ids keep working.
    """
    session.flush()
    # see lock_story
    lock_rows(session, Story.__table__, [absorbed_id, survivor_id])  # type: ignore[arg-type]
    # Lock the follows of both stories (PostgreSQL; SQLite has one writer at a time): a digest
    # queued for one of them between this read and the write below would be queued again from
    # the watermark written here. Its compare-and-set (advance_follow) waits, then finds the
    # follow moved on. populate_existing: the locked read's values, not ones loaded earlier.
    locked = (
        select(Follow)
        .where(col(Follow.story_id).in_([survivor_id, absorbed_id]))
        .order_by(col(Follow.id))  # one order for every locker: no deadlock between two merges
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    follows = session.exec(locked).all()
    both = {f.chat_id: f.last_digested_article_id for f in follows if f.story_id == survivor_id}
    watermarks = {
        f.chat_id: _merged_watermark(
            session, survivor_id, both[f.chat_id], absorbed_id, f.last_digested_article_id
        )
        for f in follows
        if f.story_id == absorbed_id and f.chat_id in both
    }
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
        kept.last_digested_article_id = watermarks[follow.chat_id]
        if follow.topic_id is None:
            kept.topic_id = None
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


def _merged_watermark(
    session: Session, story_a: int, mark_a: int, story_b: int, mark_b: int
) -> int:
    """One watermark for a chat that followed two stories about to merge.

    Between the two marks lie articles of the story with the lower mark, not yet sent, and of the
    other, already sent. When only one kind is there, one of the marks is exact. When both are,
    the lower mark is taken: the chat's next digest repeats a few articles rather than never
    showing the others.
    """
    (low_story, low), (high_story, high) = sorted(
        ((story_a, mark_a), (story_b, mark_b)), key=lambda x: x[1]
    )

    def any_between(story_id: int) -> bool:
        return (
            session.exec(
                select(Article.id)
                .where(Article.story_id == story_id)
                .where(col(Article.id) > low)
                .where(col(Article.id) <= high)
                .limit(1)
            ).first()
            is not None
        )

    return low if any_between(low_story) else high


@dataclass(frozen=True, slots=True)
class StoryCoverage:
    story: Story
    articles: int  # published in the period
    sources: int  # distinct outlets among them


def top_story_coverage(
    *, session: Session, since: datetime, limit: int = 10
) -> list[StoryCoverage]:
    """Stories with articles published since `since`, ranked by that coverage: distinct sources,
    then articles, then recency. Counted over the period, not the story's life: a month-old story
    with one article today does not outrank today's news."""
    published = col(Article.published_at)
    outlets = sa.func.count(sa.distinct(sa.func.nullif(sa.func.lower(col(Article.source)), "")))
    coverage = (
        sa.select(
            col(Article.story_id).label("story_id"),
            outlets.label("sources"),
            sa.func.count().label("articles"),
            sa.func.max(published).label("latest"),
        )
        .where(published >= since)
        .where(col(Article.story_id).is_not(None))
        .group_by(col(Article.story_id))
        .subquery()
    )
    rows = session.execute(
        sa.select(Story, coverage.c.articles, coverage.c.sources)
        .join(coverage, coverage.c.story_id == col(Story.id))
        .where(col(Story.merged_into_id).is_(None))
        .order_by(
            coverage.c.sources.desc(),
            coverage.c.articles.desc(),
            coverage.c.latest.desc(),
            col(Story.id).desc(),
        )
        .limit(limit)
    ).all()
    return [StoryCoverage(story, articles, sources) for story, articles, sources in rows]


def stories_updated_since(*, session: Session, since: datetime) -> Sequence[Story]:
    return session.exec(
        select(Story)
        .where(col(Story.updated_at) >= since)
        .where(col(Story.merged_into_id).is_(None))
    ).all()
