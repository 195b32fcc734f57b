"""Runs the StoryMatcher over stored articles and persists the stories it forms.

Articles are stored first with no story; `assign_pending` then matches them in arrival order. A crash
between the two leaves articles unmatched, never lost: the next pass picks them up. The matcher's
memory is rebuilt from the database at start by replaying the recent window.

When the matcher merges two stories (StoryMatcher.settle and .revisit) the same transaction moves
the absorbed story's articles and follows to the survivor, so the database and the matcher agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.stories.matcher import (
    SUMMARY_SAMPLE,
    ArticleText,
    MatcherConfig,
    Merge,
    StoryMatcher,
    StorySnapshot,
)
from store.articles import (
    articles_since,
    assign_article,
    summaries_before,
    unassigned_articles,
)
from store.db import session_scope
from store.follows import (
    followed_story_ids,
    owe_late_match,
    owe_late_matches_to,
)
from store.models import Article, Story
from store.stories import create_story, get_story, merge_stories, update_story

log = logging.getLogger(__name__)


class _Superseded(Exception):
    def __init__(self, article_id: int) -> None:
        super().__init__(article_id)
        self.article_id = article_id


@dataclass(frozen=True, slots=True)
class StoryAssignment:
    article_id: int
    story_id: int  # where the article ended, after any merge
    is_new_story: bool
    merged: tuple[int, ...] = ()  # stories absorbed into story_id by this article
    # (absorbed, survivor) of every merge this step made, including lone articles of earlier
    # steps that joined another story on their second look (StoryMatcher.revisit)
    merges: tuple[tuple[int, int], ...] = ()


def article_text(article: Article) -> ArticleText:
    return ArticleText(
        title=article.title,
        published=article.published_at,
        summary=article.summary or "",
        source=article.source or "",
        url=article.url or "",
    )


def look_clock(article: Article) -> datetime:
    """The clock for second looks after this article: its publish time, but never later than when
    it was fetched, so one entry stamped in the future does not spend every pending look early.
    Stored with the article, so a replay after a restart sees the same clock."""
    return min(article.published_at, article.fetched_at)  # both NOT NULL in the table


class StoryService:
    """The one place where articles become stories, for the poller and `storywire cluster` alike."""

    def __init__(
        self,
        engine: Engine,
        matcher: StoryMatcher,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._matcher = matcher
        self._clock = clock

    @classmethod
    def open(
        cls,
        engine: Engine,
        *,
        window_hours: int = 48,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rebuild: bool = True,
    ) -> StoryService:
        """A service whose matcher holds the stories active in the window, rebuilt from the DB.

        `rebuild=False` leaves it empty, for a caller that rebuilds before its first match
        anyway (the bot, once it takes the matcher lease)."""
        config = MatcherConfig(window=timedelta(hours=window_hours))
        service = cls(engine, StoryMatcher(config), clock=clock)
        if rebuild:
            service.rebuild()
        return service

    @property
    def matcher(self) -> StoryMatcher:
        return self._matcher

    def rebuild(self) -> int:
        """Replay the recent window of assigned articles into a fresh matcher."""
        config = self._matcher.config
        matcher = StoryMatcher(config)
        with session_scope(self._engine) as session:
            latest = session.execute(
                sa.select(sa.func.max(Article.published_at)).where(
                    Article.story_id.is_not(None)  # type: ignore[union-attr]
                )
            ).scalar_one_or_none()
            count = 0
            if latest is not None:
                if latest.tzinfo is None:
                    latest = latest.replace(tzinfo=UTC)
                try:
                    since = latest - config.window
                except OverflowError:  # every assigned article is dated near year 1
                    since = datetime.min.replace(tzinfo=UTC)
                for article in summaries_before(session=session, since=since, limit=SUMMARY_SAMPLE):
                    matcher.learn(article_text(article))
                for article in articles_since(session=session, since=since):
                    matcher.add(article.story_id, article_text(article))  # type: ignore[arg-type]
                    # the second looks given live after this article are not given again
                    matcher.skip_revisits(look_clock(article))
                    count += 1
        self._matcher = matcher
        log.info(
            "story matcher rebuilt: %d articles, %d active stories", count, matcher.active_count
        )
        return count

    def assign_pending(self, *, batch_size: int = 500) -> list[StoryAssignment]:
        """Match every unassigned article, in arrival order."""
        done: list[StoryAssignment] = []
        while True:
            batch = self.assign_batch(batch_size=batch_size)
            done.extend(batch)
            if len(batch) < batch_size:
                return done

    def assign_batch(self, *, batch_size: int = 500) -> list[StoryAssignment]:
        """Match up to `batch_size` unassigned articles in one transaction."""
        try:
            with session_scope(self._engine) as session:
                articles = unassigned_articles(session=session, limit=batch_size)
                # stories with followers, who may be owed an article matched late (see
                # owe_late_match); read once a batch, and kept up as merges move follows
                followed = followed_story_ids(session=session) if articles else set()
                matched: list[int] = []  # this batch's articles so far
                return [
                    self._assign(article, followed, matched, session=session)
                    for article in articles
                ]
        except _Superseded as exc:
            # Another instance matched while this one's lease had run out: its stories are in
            # the database, not in this memory. Drop the batch (rolled back) and catch up.
            log.warning("article %d was matched by another instance; rebuilding", exc.article_id)
            self.rebuild()
            return []
        except Exception:
            # The transaction rolled back but the matcher's memory moved on: make them agree again.
            log.exception("story assignment failed; rebuilding the matcher from the database")
            self.rebuild()
            raise

    def _assign(
        self, article: Article, followed: set[int], matched: list[int], *, session: Session
    ) -> StoryAssignment:
        text = article_text(article)
        now = self._clock()
        found = self._matcher.match(text)
        story: Story | None = None
        if found is not None:
            story = get_story(found[0], session=session)
        is_new = story is None
        if story is None:
            story = create_story(
                session=session, headline=article.title, published_at=article.published_at, now=now
            )
        snapshot: StorySnapshot = self._matcher.add(story.id, text)  # type: ignore[arg-type]
        if not assign_article(article.id, story.id, session=session):  # type: ignore[arg-type]
            raise _Superseded(article.id)  # type: ignore[arg-type]
        matched.append(article.id)  # type: ignore[arg-type]
        # A story new in this transaction has no followers yet. A follow made during the batch on
        # a story without any is not looked at: it misses this article only if the article is
        # late as well (a second writer's), and only in the seconds the batch takes.
        if story.id in followed and owe_late_match(article.id, story.id, session=session, now=now):  # type: ignore[arg-type]
            log.warning(
                "article %d was matched late, under a lower id than followers were sent", article.id
            )
        merged: tuple[int, ...] = ()
        merges: list[tuple[int, int]] = []
        merge = self._matcher.settle(story.id)  # type: ignore[arg-type]
        if merge is not None:
            is_new = is_new and merge.survivor == story.id  # a new story that absorbed another
            story = self._apply(merge, followed, matched, session=session, now=now)
            snapshot, merged = merge.snapshot, (merge.absorbed,)
            merges.append((merge.absorbed, merge.survivor))
        _update(story, snapshot, session=session, now=now)
        for later in self._matcher.revisit(look_clock(article)):
            _update(
                self._apply(later, followed, matched, session=session, now=now),
                later.snapshot,
                session=session,
                now=now,
            )
            merges.append((later.absorbed, later.survivor))
        return StoryAssignment(article.id, story.id, is_new, merged, tuple(merges))  # type: ignore[arg-type]

    @staticmethod
    def _apply(
        merge: Merge, followed: set[int], matched: list[int], *, session: Session, now: datetime
    ) -> Story:
        """Merge in the database; the absorbed story's follows, which move to the survivor, are
        then owed the batch's late articles there (see owe_late_matches_to)."""
        # read under the merge's locks: a follow made meanwhile moves, and is owed, too
        moving = merge_stories(merge.absorbed, merge.survivor, session=session, now=now)
        if moving:
            followed.add(merge.survivor)
            if owe_late_matches_to(moving, matched, session=session, now=now):
                log.warning(
                    "articles matched late were owed to follows merged into story %d",
                    merge.survivor,
                )
        log.debug("story %d merged into story %d", merge.absorbed, merge.survivor)
        survivor = get_story(merge.survivor, session=session)
        assert survivor is not None, "the matcher only knows stories the database has"
        return survivor


def _update(story: Story, snapshot: StorySnapshot, *, session: Session, now: datetime) -> None:
    update_story(
        story,
        session=session,
        headline=snapshot.headline,
        article_count=snapshot.article_count,
        source_count=snapshot.source_count,
        first_published_at=snapshot.first_published,
        last_published_at=snapshot.last_published,
        now=now,
    )
