"""The schema, its migrations and the dedup constraints, on every configured database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from store.articles import (
    NewArticle,
    StoryNews,
    assign_article,
    insert_articles,
    stories_matched_after,
    story_news,
)
from store.db import DatabaseClock, session_scope
from store.feeds import FeedExists, add_feed, due_feeds
from store.leases import LeaseTake, acquire_lease, lease_holder, release_lease, take_lease
from store.migrate import alembic_config, current_revision, upgrade
from store.models import Article, Feed
from store.stories import create_story
from store.watermarks import TOPICS, hold_watermark, move_watermark
from tests.conftest import T0


def _article(key: str, url: str | None) -> NewArticle:
    return NewArticle(
        entry_key=key,
        canonical_url=url,
        url=url,
        title=f"Title {key}",
        summary="",
        source="Outlet",
        author="",
        published_at=T0,
    )


def test_migrations_match_the_models(db_engine):
    with db_engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, SQLModel.metadata) == []


def test_upgrade_twice_is_a_no_op(db_engine):
    upgrade(db_engine)
    assert current_revision(db_engine) is not None


def _match(session, article_id: int, story_id: int) -> None:  # type: ignore[no-untyped-def]
    """Set an article's story as the matcher of an older revision did (the model is newer)."""
    table = Article.__table__
    session.execute(sa.update(table).where(table.c.id == article_id).values(story_id=story_id))


def test_the_keyword_watermark_starts_where_matching_is_on_an_existing_database(db_engine):
    """From the first article, the step would follow every old story matching a topic again."""
    command.downgrade(alembic_config(db_engine), "0003")
    with session_scope(db_engine) as session:
        story = create_story(session=session, headline="Storm", published_at=T0, now=T0)
        ids = insert_articles(
            None, [_article("a", None), _article("b", None)], session=session, fetched_at=T0
        )
        _match(session, ids[0], story.id)  # the second is not matched yet
    upgrade(db_engine, "0004")
    with session_scope(db_engine) as session:
        assert hold_watermark(TOPICS, session=session) == ids[0]


def test_match_numbers_start_an_existing_database_where_its_keyword_step_was(db_engine):
    """The step's watermark was an article id. Read as a match number it would check nothing
    again, the stories of articles matched past it (a crash before the step) included; starting
    from nothing it would follow every old story matching a topic again."""
    command.downgrade(alembic_config(db_engine), "0005")
    with session_scope(db_engine) as session:
        checked, unchecked = (
            create_story(session=session, headline=h, published_at=T0, now=T0).id
            for h in ("Storm", "Flood")
        )
        ids = insert_articles(
            None,
            [_article("a", None), _article("b", None), _article("c", None)],
            session=session,
            fetched_at=T0,
        )
        _match(session, ids[0], checked)
        _match(session, ids[1], unchecked)  # matched, and the process died before the step
        hold_watermark(TOPICS, session=session)
        move_watermark(TOPICS, ids[0], session=session, now=T0)
    upgrade(db_engine)
    with session_scope(db_engine) as session:
        since = hold_watermark(TOPICS, session=session)
        assert stories_matched_after(since, session=session)[0] == [unchecked]
        # and a keyword follow made of it starts with that article, as news
        assert story_news(unchecked, since, session=session, limit=50) == StoryNews(0, ())
        assert story_news(checked, since, session=session, limit=50) == StoryNews(ids[0], ())
        assign_article(ids[2], checked, session=session)  # the one not matched yet, matched now
    with session_scope(db_engine) as session:
        assert stories_matched_after(since, session=session)[0] == [checked, unchecked]


def test_going_back_to_article_ids_leaves_no_article_unchecked(db_engine):
    with session_scope(db_engine) as session:
        stories = [
            create_story(session=session, headline=h, published_at=T0, now=T0).id
            for h in ("Storm", "Flood")
        ]
        ids = insert_articles(
            None, [_article("a", None), _article("b", None)], session=session, fetched_at=T0
        )
    with session_scope(db_engine) as session:
        assign_article(ids[1], stories[1], session=session)
    with session_scope(db_engine) as session:
        _, upto = stories_matched_after(hold_watermark(TOPICS, session=session), session=session)
        move_watermark(TOPICS, upto, session=session, now=T0)
    with session_scope(db_engine) as session:
        assign_article(ids[0], stories[0], session=session)  # the lower id, matched later
    command.downgrade(alembic_config(db_engine), "0005")
    with session_scope(db_engine) as session:
        assert hold_watermark(TOPICS, session=session) == ids[0] - 1


def test_datetimes_round_trip_as_aware_utc(db_engine):
    with session_scope(db_engine) as session:
        feed = add_feed("https://example.org/feed", session=session, now=T0)
        feed_id = feed.id
    with session_scope(db_engine) as session:
        stored = session.get(Feed, feed_id)
        assert stored.created_at == T0
        assert stored.created_at.utcoffset() == timedelta(0)


def test_same_entry_polled_twice_is_stored_once(db_engine):
    with session_scope(db_engine) as session:
        feed = add_feed("https://example.org/feed", session=session, now=T0)
        first = insert_articles(
            feed.id, [_article("a", "https://x/1")], session=session, fetched_at=T0
        )
        again = insert_articles(
            feed.id, [_article("a", "https://x/1")], session=session, fetched_at=T0
        )
    assert len(first) == 1
    assert again == []


def test_same_url_in_two_feeds_is_one_article(db_engine):
    with session_scope(db_engine) as session:
        one = add_feed("https://one.example/feed", session=session, now=T0)
        two = add_feed("https://two.example/feed", session=session, now=T0)
        insert_articles(one.id, [_article("k1", "https://x/story")], session=session, fetched_at=T0)
        got = insert_articles(
            two.id, [_article("k2", "https://x/story")], session=session, fetched_at=T0
        )
        count = session.execute(sa.select(sa.func.count()).select_from(Article)).scalar_one()
    assert got == []
    assert count == 1


def test_entries_without_links_are_kept_apart(db_engine):
    with session_scope(db_engine) as session:
        feed = add_feed("https://example.org/feed", session=session, now=T0)
        got = insert_articles(
            feed.id, [_article("a", None), _article("b", None)], session=session, fetched_at=T0
        )
    assert len(got) == 2


def test_articles_stored_in_a_transaction_that_fails_are_not_kept(db_engine):
    """On SQLite, a savepoint opened before any write started a transaction of its own, and
    releasing it committed: the batch stayed although its transaction was rolled back."""
    with pytest.raises(RuntimeError), session_scope(db_engine) as session:
        insert_articles(
            None, [_article("a", "https://x.example/a")], session=session, fetched_at=T0
        )
        raise RuntimeError("what follows the insert in the same transaction fails")
    with session_scope(db_engine) as session:
        assert session.exec(sa.select(Article)).all() == []


def test_duplicate_feed_url_is_refused(db_engine):
    with session_scope(db_engine) as session:
        add_feed("https://example.org/feed", session=session, now=T0)
    with pytest.raises(FeedExists), session_scope(db_engine) as session:
        add_feed("https://example.org/feed", session=session, now=T0)


def test_due_feeds_skips_future_and_disabled(db_engine):
    with session_scope(db_engine) as session:
        due = add_feed("https://a.example/feed", session=session, now=T0)
        later = add_feed("https://b.example/feed", session=session, now=T0)
        later.next_poll_at = T0 + timedelta(hours=1)
        off = add_feed("https://c.example/feed", session=session, now=T0)
        off.status = "disabled"
    with session_scope(db_engine) as session:
        assert [f.id for f in due_feeds(session=session, now=T0)] == [due.id]


def test_lease_is_exclusive_until_it_expires(db_engine):
    ttl = timedelta(minutes=5)
    assert acquire_lease(db_engine, "poller", "a", ttl=ttl, now=T0)
    assert not acquire_lease(db_engine, "poller", "b", ttl=ttl, now=T0 + timedelta(minutes=1))
    assert acquire_lease(db_engine, "poller", "a", ttl=ttl, now=T0 + timedelta(minutes=2))
    assert lease_holder(db_engine, "poller", now=T0 + timedelta(minutes=3)) == "a"
    assert acquire_lease(db_engine, "poller", "b", ttl=ttl, now=T0 + timedelta(minutes=8))


def test_released_lease_is_free(db_engine):
    ttl = timedelta(minutes=5)
    assert acquire_lease(db_engine, "sender", "a", ttl=ttl, now=T0)
    release_lease(db_engine, "sender", "a")
    assert acquire_lease(db_engine, "sender", "b", ttl=ttl, now=T0)


def test_a_take_says_whether_anyone_else_held_the_lease_in_between(db_engine):
    ttl, late = timedelta(minutes=5), timedelta(minutes=30)
    assert take_lease(db_engine, "matcher", "a", ttl=ttl, now=T0) is LeaseTake.TAKEN  # new
    assert take_lease(db_engine, "matcher", "a", ttl=ttl, now=T0 + late) is LeaseTake.KEPT
    release_lease(db_engine, "matcher", "a")
    assert take_lease(db_engine, "matcher", "a", ttl=ttl, now=T0 + late) is LeaseTake.KEPT
    release_lease(db_engine, "matcher", "a")
    assert take_lease(db_engine, "matcher", "b", ttl=ttl, now=T0 + late) is LeaseTake.TAKEN
    release_lease(db_engine, "matcher", "b")
    # b held it and let go: a gets it back, but not as it left it
    assert take_lease(db_engine, "matcher", "a", ttl=ttl, now=T0 + late) is LeaseTake.TAKEN
    assert take_lease(db_engine, "matcher", "b", ttl=ttl, now=T0 + late) is LeaseTake.REFUSED


def test_two_processes_with_one_host_name_and_pid_are_different_holders(monkeypatch):
    import store.leases as leases

    first = leases.process_holder()
    assert first == leases.process_holder()  # stable within a process
    monkeypatch.setattr(leases, "_PROCESS_TOKEN", "another")  # a second container, also pid 1
    assert leases.process_holder() != first
    assert len(first) <= 100  # the holder column


def _skewed(seconds: float):  # type: ignore[no-untyped-def]
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


def test_the_database_clock_corrects_a_machine_clock_that_is_off(db_engine):
    clock = DatabaseClock(db_engine, local=_skewed(-90))
    offset = clock.sync()
    # the database runs on this machine's true clock: the offset undoes the 90 s skew
    assert abs(offset.total_seconds() - 90) < 1
    assert abs((clock() - datetime.now(UTC)).total_seconds()) < 1


def test_instances_with_skewed_clocks_agree_on_a_lease(db_engine):
    """A machine 20 s fast saw the 30 s lease of one 20 s slow as lapsed on the spot."""
    ttl = timedelta(seconds=30)
    slow, fast = _skewed(-20), _skewed(+20)
    assert acquire_lease(db_engine, "sender", "slow", ttl=ttl, now=slow())
    assert acquire_lease(db_engine, "sender", "fast", ttl=ttl, now=fast())  # the bug: both hold it

    release_lease(db_engine, "sender", "fast")
    slow_db, fast_db = DatabaseClock(db_engine, local=slow), DatabaseClock(db_engine, local=fast)
    slow_db.sync()
    fast_db.sync()
    assert acquire_lease(db_engine, "sender", "slow", ttl=ttl, now=slow_db())
    assert not acquire_lease(db_engine, "sender", "fast", ttl=ttl, now=fast_db())
