"""Story queries: create and update from the matcher, ranking, lookup."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from store.articles import match_seq
from store.db import lock_rows
from store.follows import opted_out_chats, owe_articles
from store.models import MAX_ROW_ID, Article, Follow, FollowBacklog, Story

MAX_MERGE_HOPS = 32
# a follower is owed at most this many of the articles one merge brings in below its watermark:
# the newest, as many as one digest shows (bot.digests.queue.MAX_ARTICLES_PER_DIGEST)
MAX_OWED_PER_MERGE = 50


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


def merge_stories(
    absorbed_id: int, survivor_id: int, *, session: Session, now: datetime
) -> list[int]:
    """Move the absorbed story's articles and follows to the survivor, in the caller's transaction.

    Every follow on the survivor afterwards is owed exactly what it had not been sent, and nothing
    twice. Its watermark says "every article up to here was sent" no longer: the absorbed
    story's articles below it were not, so they go on its backlog (FollowBacklog), sent with the
    next digest.
    - A chat that followed only the survivor keeps its watermark and is owed the absorbed
      articles below it that came while it followed (see _owed_after_merge).
    - A chat that followed both keeps one follow, with the higher of the two watermarks, owed
      each story's articles between its own mark and that one, and both backlogs; followed by id
      if either was (so that unfollowing a topic leaves it).
    - A chat that followed only the absorbed story now follows the survivor from its own
      watermark: the survivor's news from there on, not its history.
    The absorbed row stays, pointing at the survivor, so old buttons and `/story` ids keep working.
    The moved articles take the transaction's match number (store.articles.match_seq), so the
    steps that follow the matches (the keyword step) see the survivor changed.
    Returns the ids of the follows moved onto the survivor, read under the stories' locks, so a
    follow made on the absorbed story up to the merge is among them.
    """
    session.flush()
    # taken before the stories' locks, as matching takes it before its writes: one order
    seq = match_seq(session=session)
    # see lock_story
    lock_rows(session, Story.__table__, [absorbed_id, survivor_id])  # type: ignore[arg-type]
    # Lock the follows of both stories (PostgreSQL; SQLite has one writer at a time): a digest
    # queued for one of them between this read and the write below would be queued again from
    # the watermark written here. Its compare-and-set (advance_follow) waits, then finds the
    # follow moved on. A tick takes the story row's lock too (bot.digests.queue), so it cannot
    # read the survivor's articles before this moves the absorbed ones in, then mark them sent.
    # populate_existing: the locked read's values, not ones loaded earlier.
    locked = (
        select(Follow)
        .where(col(Follow.story_id).in_([survivor_id, absorbed_id]))
        .order_by(col(Follow.id))  # one order for every locker: no deadlock between two merges
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    follows = session.exec(locked).all()
    kept = {f.chat_id: f for f in follows if f.story_id == survivor_id}
    owed = _owed_after_merge(
        session,
        survivor_id,
        absorbed_id,
        kept,
        [f for f in follows if f.story_id == absorbed_id],
        seq,
    )
    moved: list[int] = []
    session.execute(
        sa.update(Article)
        .where(col(Article.story_id) == absorbed_id)
        .values(story_id=survivor_id, match_seq=seq)
    )
    for follow in follows:
        if follow.story_id != absorbed_id:
            continue
        survivor_follow = kept.get(follow.chat_id)
        if survivor_follow is None:
            moved.append(follow.id)  # type: ignore[arg-type]
            follow.story_id = survivor_id
            session.add(follow)
            continue
        survivor_follow.last_digested_article_id = max(
            survivor_follow.last_digested_article_id, follow.last_digested_article_id
        )
        if follow.topic_id is None:
            survivor_follow.topic_id = None
        session.add(survivor_follow)
        session.execute(  # what the absorbed follow was still owed, the kept one is owed now
            sa.update(FollowBacklog)
            .where(col(FollowBacklog.follow_id) == follow.id)
            .values(follow_id=survivor_follow.id)
        )
        session.delete(follow)
    owe_articles(sorted(owed), session=session, now=now)
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
    return moved


def _owed_after_merge(
    session: Session,
    survivor_id: int,
    absorbed_id: int,
    kept: dict[int, Follow],
    moving: Sequence[Follow],
    seq: int,
) -> set[tuple[int, int]]:
    """(follow id, article id) for each article below the kept follow's watermark after the
    merge that its chat was never sent (see merge_stories), read before the articles move.

    A chat that followed only the survivor is owed the absorbed articles that came while it
    followed (a follow starts from now: what came before is history, not news), unless it
    unfollowed the absorbed story (it was sent some of them, and asked for no more); at most
    MAX_OWED_PER_MERGE of them, the newest, as a digest shows no more. Articles first matched in
    this transaction (`seq`) count as having come while it followed: one matched late under a
    lower id would have been owed had it joined the survivor directly (owe_late_match). The
    reads are one for each story, not one for each follower."""
    if not kept:
        return set()
    absorbed_marks = {f.chat_id: f.last_digested_article_id for f in moving}
    both = {c: m for c, m in absorbed_marks.items() if c in kept}
    only = [f for c, f in kept.items() if c not in both]
    owed: set[tuple[int, int]] = set()
    highest = max(f.last_digested_article_id for f in kept.values())
    absorbed = session.execute(
        sa.select(Article.id, Article.fetched_at, Article.first_match_seq)
        .where(col(Article.story_id) == absorbed_id)
        .where(col(Article.id) <= highest)
        .order_by(col(Article.id))
    ).all()
    if only and absorbed:
        stopped = opted_out_chats(  # the absorbed story unfollowed, or one merged into it
            [absorbed_id, *merged_story_ids(absorbed_id, session=session)], session=session
        )
        for follow in only:
            if follow.chat_id in stopped:
                continue
            news = [
                a
                for a, fetched, first in absorbed
                # first matched in this transaction: news to every follower, however late
                if a <= follow.last_digested_article_id
                and (fetched >= follow.created_at or first == seq)
            ]
            owed.update((follow.id, a) for a in news[-MAX_OWED_PER_MERGE:])  # type: ignore[misc]
    if both:
        # each story's articles between the chat's two marks, that the other mark had passed
        low = min(min(m, kept[c].last_digested_article_id) for c, m in both.items())
        high = max(max(m, kept[c].last_digested_article_id) for c, m in both.items())
        survivors = list(
            session.exec(
                select(Article.id)
                .where(Article.story_id == survivor_id)
                .where(col(Article.id) > low)
                .where(col(Article.id) <= high)
                .order_by(col(Article.id))
            ).all()
        )
        absorbed_ids = [a for a, _, _ in absorbed]
        for chat_id, other in both.items():
            follow = kept[chat_id]
            mark = follow.last_digested_article_id
            ids, above, upto = (
                (survivors, mark, other) if other > mark else (absorbed_ids, other, mark)
            )
            between = ids[bisect.bisect_right(ids, above) : bisect.bisect_right(ids, upto)]
            owed.update((follow.id, a) for a in between)  # type: ignore[misc]
    return owed


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
