"""One instance matches articles at a time; one that takes over rebuilds from the database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from bot.app import MATCHER_LEASE, MATCHER_LEASE_TTL, Services, assign_and_notify
from bot.config import Settings
from bot.stories.service import StoryService
from store.articles import NewArticle, insert_articles
from store.db import session_scope
from store.leases import release_lease
from store.models import Article, Story
from tests.conftest import T0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


def _instance(engine, clock, name: str) -> Services:  # type: ignore[no-untyped-def]
    return Services(
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        engine=engine,
        clock=clock,
        stories=StoryService.open(engine, clock=clock),
        holder=name,
    )


def _add(engine, title: str, at) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        insert_articles(
            None,
            [NewArticle(title, None, None, title, "", "Outlet", "", at)],
            session=session,
            fetched_at=at,
        )


def _stories(engine) -> list[int | None]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return [a.story_id for a in session.exec(select(Article).order_by(Article.id))]


async def test_a_second_instance_leaves_matching_to_the_lease_holder(db_engine):
    clock = Clock()
    a, b = _instance(db_engine, clock, "A"), _instance(db_engine, clock, "B")
    _add(db_engine, "Sbarro files for bankruptcy again", T0)
    assert await assign_and_notify(a) == 1
    _add(db_engine, "Pizza chain Sbarro files for bankruptcy", T0 + timedelta(minutes=1))
    assert await assign_and_notify(b) == 0  # A holds the lease
    assert _stories(db_engine)[1] is None


async def test_an_instance_taking_over_rebuilds_what_the_other_matched(db_engine):
    clock = Clock()
    a, b = _instance(db_engine, clock, "A"), _instance(db_engine, clock, "B")
    _add(db_engine, "Sbarro files for bankruptcy again", T0)
    assert await assign_and_notify(a) == 1  # B's matcher, opened before, never saw it
    clock.now += MATCHER_LEASE_TTL + timedelta(seconds=1)  # A is gone: its lease runs out
    _add(db_engine, "Pizza chain Sbarro files for bankruptcy", clock.now)
    assert await assign_and_notify(b) == 1
    first, second = _stories(db_engine)
    assert first is not None and second == first  # joined A's story: B rebuilt before matching


async def test_an_instance_whose_lease_lapsed_rebuilds_even_if_no_one_holds_it_now(db_engine):
    """A's tick came late: its lease ran out, B (say `poll --once`) matched and let go. A takes
    the lease again without a fight, but its matcher missed B's story: it must rebuild."""
    clock = Clock()
    a, b = _instance(db_engine, clock, "A"), _instance(db_engine, clock, "B")
    _add(db_engine, "Eurozone ministers meet in Brussels", T0)
    assert await assign_and_notify(a) == 1
    clock.now += MATCHER_LEASE_TTL + timedelta(seconds=1)
    _add(db_engine, "Sbarro files for bankruptcy again", clock.now)
    assert await assign_and_notify(b) == 1
    release_lease(db_engine, MATCHER_LEASE, "B")
    clock.now += timedelta(minutes=1)
    _add(db_engine, "Pizza chain Sbarro files for bankruptcy", clock.now)
    assert await assign_and_notify(a) == 1
    _, sbarro, pizza = _stories(db_engine)
    assert sbarro is not None and pizza == sbarro  # joined B's story: A rebuilt first


def test_a_batch_another_instance_matched_meanwhile_is_dropped_not_doubled(db_engine):
    """A's lease ran out mid-batch; B took over and matched the same article first. A's commit
    would have started the article's story a second time (an empty twin)."""
    if db_engine.dialect.name == "sqlite":
        pytest.skip("SQLite has one writer: the overlap needs PostgreSQL")
    clock = Clock()
    a, b = _instance(db_engine, clock, "A"), _instance(db_engine, clock, "B")
    _add(db_engine, "Sbarro files for bankruptcy again", T0)
    match = a.stories.matcher.match  # type: ignore[union-attr]

    def b_first(article):  # type: ignore[no-untyped-def]
        assert b.stories is not None and len(b.stories.assign_pending()) == 1
        return match(article)

    a.stories.matcher.match = b_first  # type: ignore[method-assign,union-attr]
    assert a.stories.assign_pending() == []  # type: ignore[union-attr]
    with session_scope(db_engine) as session:
        stories = session.exec(select(Story)).all()
    assert len(stories) == 1 and _stories(db_engine) == [stories[0].id]
    assert a.stories.matcher.active_count == 1  # type: ignore[union-attr]  # caught up
