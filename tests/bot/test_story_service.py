"""StoryService on real headlines: the database and the matcher agree, merges included."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest
import sqlalchemy as sa
from sqlmodel import select

from bot.stories.service import StoryService
from store.articles import NewArticle, insert_articles
from store.db import session_scope
from store.models import Article, Story
from tests.conftest import T0


def _sample() -> list[dict]:
    path = resources.files("bot.samples") / "demo_articles.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:  # type: ignore[arg-type]
        return [json.loads(line) for line in fh]


def test_stories_in_the_database_match_the_matcher_after_merges(db_engine):
    rows = _sample()
    with session_scope(db_engine) as session:
        insert_articles(
            None,
            [
                NewArticle(
                    f"sample:{r['id']}",
                    None,
                    r["url"],
                    r["title"],
                    "",
                    r["source"],
                    "",
                    datetime.fromisoformat(r["published"]),
                )
                for r in rows
            ],
            session=session,
            fetched_at=datetime(2014, 3, 12, tzinfo=UTC),
        )
    service = StoryService.open(db_engine, window_hours=48)
    assignments = service.assign_pending(batch_size=64)
    assert len(assignments) == len(rows)
    merged = {absorbed for a in assignments for absorbed, _ in a.merges}
    assert {m for a in assignments for m in a.merged}, "the sample is expected to settle a merge"
    # ... and to give a lone article a second look that joins it to a story
    assert merged - {m for a in assignments for m in a.merged}

    with session_scope(db_engine) as session:
        stories = {s.id: s for s in session.exec(select(Story))}
        counts = dict(
            session.execute(
                sa.select(Article.story_id, sa.func.count()).group_by(Article.story_id)
            ).all()
        )
    assert None not in counts  # every article has a story
    assert all(stories[s].merged_into_id is None for s in counts)  # ... that was not absorbed
    assert {s for s, story in stories.items() if story.merged_into_id is not None} == merged
    assert all(stories[s].article_count == 0 for s in merged)
    matcher = service.matcher
    for story_id, count in counts.items():
        snapshot = matcher.snapshot(story_id)
        assert snapshot is not None and snapshot.article_count == count
        assert stories[story_id].article_count == count
    assert matcher.active_count == len(counts)

    service.rebuild()  # replaying the database gives the same stories
    assert service.matcher.active_count == len(counts)
    for story_id, count in counts.items():
        assert service.matcher.snapshot(story_id).article_count == count

    # Lone articles had their second look before the "restart": only the last hour's are pending.
    latest = max(datetime.fromisoformat(r["published"]) for r in rows)
    recent = {
        story_id
        for story_id in counts
        if service.matcher.snapshot(story_id).first_published
        > latest - service.matcher.config.revisit_after
    }
    assert service.matcher.pending_revisits == len(recent) < len(counts)


def _store(engine, items: list[tuple[str, int, int]]) -> None:  # type: ignore[no-untyped-def]
    """Store (title, published, fetched) articles, times in minutes after T0, in this order."""
    with session_scope(engine) as session:
        for title, published, fetched in items:
            insert_articles(
                None,
                [
                    NewArticle(
                        f"k:{title}",
                        None,
                        None,
                        title,
                        "",
                        "",
                        "",
                        T0 + timedelta(minutes=published),
                    )
                ],
                session=session,
                fetched_at=T0 + timedelta(minutes=fetched),
            )


def _story_of(engine, title: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return session.exec(select(Article.story_id).where(Article.title == title)).one()


def test_a_future_stamped_article_does_not_spend_second_looks_early(db_engine):
    service = StoryService.open(db_engine)
    _store(db_engine, [("Elephants tell human voices apart", 0, 0)])
    service.assign_pending()
    assert service.matcher.pending_revisits == 1
    # published an hour and a half after it was fetched: the look at 0 is not due yet
    _store(db_engine, [("Polar vortex returns to the Midwest", 100, 10)])
    service.assign_pending()
    assert service.matcher.pending_revisits == 2
    _store(db_engine, [("Titanfall review: the verdict", 61, 61)])
    service.assign_pending()
    assert service.matcher.pending_revisits == 2  # the elephants had their look


def test_a_restart_gives_the_second_looks_the_live_process_had_not_given(db_engine):
    service = StoryService.open(db_engine)
    _store(db_engine, [("Polar vortex returns to the Midwest", 180, 180)])
    service.assign_pending()
    # a feed catching up delivers an article three hours old, its look not yet given; a restart
    _store(db_engine, [("Elephants tell human voices apart", 0, 185)])
    service.assign_pending()
    assert service.matcher.pending_revisits == 2
    restarted = StoryService.open(db_engine)
    assert restarted.matcher.pending_revisits == 2
    _store(db_engine, [("Titanfall review: the verdict", 250, 250)])
    restarted.assign_pending()
    assert restarted.matcher.pending_revisits == 1  # both looks given now, one new pending


def test_a_restart_rebuilds_a_story_whole_though_it_began_before_the_window(db_engine):
    service = StoryService.open(db_engine, window_hours=48)
    _store(db_engine, [("Sbarro files for bankruptcy again", -47 * 60, -47 * 60)])
    _store(db_engine, [("Pizza chain Sbarro files for Chapter 11 bankruptcy", -60, -60)])
    _store(db_engine, [("Polar vortex returns to the Midwest", 120, 120)])
    service.assign_pending()
    story = _story_of(db_engine, "Sbarro files for bankruptcy again")
    assert story == _story_of(db_engine, "Pizza chain Sbarro files for Chapter 11 bankruptcy")
    live = service.matcher.snapshot(story)
    restarted = StoryService.open(db_engine, window_hours=48)
    assert restarted.matcher.snapshot(story) == live
    assert restarted.matcher.pending_revisits == service.matcher.pending_revisits
    _store(db_engine, [("Sbarro seeks bankruptcy protection for second time", 125, 125)])
    [step] = restarted.assign_pending()
    assert step.story_id == story
    with session_scope(db_engine) as session:
        assert session.get(Story, story).article_count == 3
        assert session.get(Story, story).first_published_at == T0 - timedelta(hours=47)


# --- feed boilerplate across a restart (bot.stories.matcher._Boilerplate) -------------------

_PLATFORM = "Syndicated by Feedsmith newswire. Read the full story and more at the site."


def _summarised(engine, title: str, hours: float, source: str, summary: str = _PLATFORM) -> None:  # type: ignore[no-untyped-def]
    when = T0 + timedelta(hours=hours)
    with session_scope(engine) as session:
        insert_articles(
            None,
            [NewArticle(f"k:{title}", None, None, title, summary, source, "", when)],
            session=session,
            fetched_at=when,
        )


def _story_of(engine, title: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return session.exec(select(Article.story_id).where(Article.title == title)).one()  # type: ignore[return-value]


@pytest.mark.parametrize("restart", [False, True])
def test_a_restart_still_knows_a_template_learned_from_stories_no_longer_active(db_engine, restart):
    """The template was learned from summaries three days old, which the replay of the active
    window never sees: a rebuilt matcher joined two unrelated stories with it. (Found in review.)"""
    live = StoryService.open(db_engine, clock=lambda: T0)
    for i, title in enumerate(
        ["Fed holds interest rates steady", "Apple buys Beats headphones", "Chelsea beat Arsenal"]
        + ["Oscars host announced for next year", "Drought hits Brazil coffee crop"]
    ):
        _summarised(db_engine, title, i * 0.5, f"Old site {i}")
    _summarised(db_engine, "Volcano erupts near Iceland village", 60, "Site X")
    live.assign_pending()
    service = StoryService.open(db_engine, clock=lambda: T0) if restart else live
    _summarised(db_engine, "Toyota recalls hybrid cars", 60.2, "Site Y")
    service.assign_pending()
    assert _story_of(db_engine, "Toyota recalls hybrid cars") != _story_of(
        db_engine, "Volcano erupts near Iceland village"
    )


def test_a_restart_weighs_summary_words_against_as_many_summaries_as_the_live_matcher(db_engine):
    """In a quiet stream the live matcher's last summaries span weeks; the replay of two days
    held a few dozen, so a story's background words in six summaries counted as everyone's
    boilerplate and were cut. (Found in review.)"""
    rng = random.Random(1)

    def word() -> str:
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))

    for i in range(300):  # two weeks of other news, each with words and a summary of its own
        title = " ".join(word() for _ in range(4))
        _summarised(db_engine, title, i, f"Outlet{i % 7}", f"{word()} {word()}")
    background = (
        "The Boeing 777 carrying 239 people vanished from radar after leaving Kuala Lumpur."
    )
    search = [
        "Search for missing jet widens to Andaman Sea",
        "Families wait in Beijing hotel for word on flight",
        "Malaysia Airlines chief defends response",
        "Investigators look at pilots' backgrounds",
        "Vietnam scales back search efforts",
        "Satellite data suggests plane flew for hours",
    ]
    for k, title in enumerate(search):
        _summarised(db_engine, title, 310 + k * 0.5, f"Paper {k}", background)
    StoryService.open(db_engine, clock=lambda: T0).assign_pending()
    assert len({_story_of(db_engine, t) for t in search}) == 1
    later = "Chinese satellite spots possible debris"
    _summarised(db_engine, later, 314, "Other Wire", background)
    StoryService.open(db_engine, clock=lambda: T0).assign_pending()  # a restart
    assert _story_of(db_engine, later) == _story_of(db_engine, search[0])
