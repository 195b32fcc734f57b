"""What chat commands do to the store: follows, topics, search, digest settings."""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from bot import following as svc
from bot.app import queue_topic_notice
from bot.stories.service import StoryService
from store.articles import NewArticle, assign_article, insert_articles
from store.chats import migrate_chat
from store.db import session_scope
from store.follows import follow_story, pending_follows
from store.models import (
    Article,
    Chat,
    Follow,
    OutboxMessage,
    Story,
    StoryOptOut,
    TopicFollow,
)
from store.outbox import OutgoingPart, enqueue, park_chat
from store.stories import create_story, merge_stories
from tests.conftest import T0

CHAT = 5


def _story(engine, headline: str, *, articles: int = 1, sources: int = 1, at=T0) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        story = create_story(session=session, headline=headline, published_at=at, now=at)
        story.article_count, story.source_count = articles, sources
        for i in range(articles):
            [aid] = insert_articles(
                None,
                [
                    NewArticle(
                        f"{headline}-{i}", None, None, f"{headline} {i}", "", "Outlet", "", at
                    )
                ],
                session=session,
                fetched_at=at,
            )
            assign_article(aid, story.id, session=session)
        return story.id


@pytest.fixture
def engine(db_engine):  # type: ignore[no-untyped-def]
    svc.record_chat(
        db_engine, CHAT, type="private", title=None, username="u", now=T0, default_timezone="UTC"
    )
    return db_engine


def test_topic_key_ignores_order_case_punctuation_and_stop_words():
    assert svc.topic_key("The Nara  Summit!") == svc.topic_key("summit, nara")


def test_topic_matches_headlines_containing_all_its_words():
    key = svc.topic_key("Nara summit")
    assert svc.topic_matches(key, "Lee's Nara Summit Reinforces Korea-Japan Ties")
    assert not svc.topic_matches(key, "Summit of G20 leaders in Osaka")


def test_follow_by_id_starts_after_existing_articles(engine):
    story_id = _story(engine, "Storm hits coast", articles=3)
    result = svc.follow_story_id(engine, CHAT, story_id, now=T0)
    assert result.created and result.story.id == story_id
    with session_scope(engine) as session:
        follow = session.exec(select(Follow)).one()
        newest = max(a.id for a in session.exec(select(Article)).all())
        assert follow.last_digested_article_id == newest


def test_follow_unknown_story_creates_nothing(engine):
    assert svc.follow_story_id(engine, CHAT, 999, now=T0).story is None


def test_unfollow_story_and_topic(engine):
    story_id = _story(engine, "Storm hits coast")
    svc.follow_story_id(engine, CHAT, story_id, now=T0)
    svc.follow_topic(engine, CHAT, "Bitcoin exchange", now=T0)
    assert svc.unfollow(engine, CHAT, str(story_id), now=T0) == svc.Unfollowed("Storm hits coast")
    assert svc.unfollow(engine, CHAT, "exchange bitcoin", now=T0) is not None
    assert svc.unfollow(engine, CHAT, "nothing here", now=T0) is None
    state = svc.following(engine, CHAT)
    assert state.stories == () and state.topics == ()


def test_search_ranks_matching_stories(engine):
    _story(engine, "Mt. Gox bitcoin exchange files for bankruptcy", sources=5)
    _story(engine, "Apple releases iOS 7.1", sources=9)
    cards = svc.search(engine, "bitcoin bankruptcy", now=T0)
    assert [c.headline for c in cards][:1] == ["Mt. Gox bitcoin exchange files for bankruptcy"]


def test_search_of_only_stop_words_finds_nothing(engine):
    _story(engine, "The news of the day")
    assert svc.search(engine, "the of", now=T0) == []


def test_topic_follow_follows_future_matching_stories(engine):
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    other = _story(engine, "Apple releases iOS 7.1")
    match = _story(engine, "Mt Gox seeks US bankruptcy protection")
    created = svc.follow_matching_topics(engine, [other, match], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, match)]
    assert svc.follow_matching_topics(engine, [match], now=T0) == []  # once only


def test_topic_follow_of_a_story_merged_meanwhile_follows_the_survivor(engine):
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    absorbed = _story(engine, "Mt Gox seeks US bankruptcy protection")
    survivor = _story(engine, "Mt Gox bitcoin exchange files for bankruptcy", articles=3)
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T0)
    created = svc.follow_matching_topics(engine, [absorbed, survivor], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, survivor)]
    with session_scope(engine) as session:
        assert [f.story_id for f in session.exec(select(Follow))] == [survivor]


def _notices(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        rows = session.exec(select(OutboxMessage).where(OutboxMessage.kind == "notice"))
        return [m.text for m in rows]


def test_keywords_followed_again_tell_the_chat_again(engine):
    """The notice's key was the chat and the story: after /unfollow of the keywords and /follow
    of them again, the story was followed again without a word, and its digests came unasked."""
    notify = functools.partial(queue_topic_notice, now=T0)
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    story = _story(engine, "Mt Gox seeks US bankruptcy protection")
    assert svc.follow_matching_topics(engine, [story], now=T0, on_follow=notify)
    assert svc.unfollow(engine, CHAT, "mt gox", now=T0).stories == 1  # type: ignore[union-attr]
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    assert svc.follow_matching_topics(engine, [story], now=T0, on_follow=notify)
    notices = _notices(engine)
    assert len(notices) == 2 and all("Now following" in n for n in notices), notices


def test_a_topic_notice_is_queued_with_its_follow_or_not_at_all(engine):
    def fail(session, chat_id, story, topic) -> None:  # type: ignore[no-untyped-def]
        queue_topic_notice(session, chat_id, story, topic, now=T0)
        raise RuntimeError("the process died before the transaction ended")

    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    story = _story(engine, "Mt Gox seeks US bankruptcy protection")
    with pytest.raises(RuntimeError):
        svc.follow_matching_topics(engine, [story], now=T0, on_follow=fail)
    with session_scope(engine) as session:
        assert session.exec(select(Follow)).all() == []
    assert _notices(engine) == []
    created = svc.follow_matching_topics(
        engine, [story], now=T0, on_follow=functools.partial(queue_topic_notice, now=T0)
    )
    assert len(created) == 1 and len(_notices(engine)) == 1  # the next batch follows and tells


def _unfollowed_topic_story(engine) -> int:  # type: ignore[no-untyped-def]
    """A story the chat's keywords followed, then the chat unfollowed."""
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    story = _story(engine, "Mt Gox seeks US bankruptcy protection")
    assert svc.follow_matching_topics(engine, [story], now=T0)
    assert svc.unfollow(engine, CHAT, str(story), now=T0) is not None
    return story


def test_a_story_unfollowed_is_not_followed_again_by_its_keywords(engine):
    """The notice says "/unfollow ID to stop"; the next batch followed it again, silently (the
    notice's dedup key had been used), and re-sent every article."""
    story = _unfollowed_topic_story(engine)
    assert svc.follow_matching_topics(engine, [story], now=T0) == []
    with session_scope(engine) as session:
        assert session.exec(select(Follow)).all() == []


def test_nor_is_a_story_that_absorbed_one_unfollowed(engine):
    absorbed = _unfollowed_topic_story(engine)
    survivor = _story(engine, "Mt Gox bitcoin exchange files for bankruptcy", articles=3)
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T0)
    assert svc.follow_matching_topics(engine, [survivor], now=T0) == []


def test_following_an_unfollowed_story_by_id_takes_the_opt_out_back(engine):
    story = _unfollowed_topic_story(engine)
    with session_scope(engine) as session:
        assert len(session.exec(select(StoryOptOut)).all()) == 1
    assert svc.follow_story_id(engine, CHAT, story, now=T0).created
    with session_scope(engine) as session:
        assert session.exec(select(StoryOptOut)).all() == []


def test_an_opt_out_moves_with_a_group_to_its_supergroup(engine):
    story = _unfollowed_topic_story(engine)
    with session_scope(engine) as session:
        migrate_chat(CHAT, -100123, session=session, now=T0)
    assert svc.follow_matching_topics(engine, [story], now=T0) == []


def _add_article(engine, story_id: int | None, title: str) -> int:  # type: ignore[no-untyped-def]
    """An article matched to `story_id` (None: not matched yet); returns its id."""
    with session_scope(engine) as session:
        [aid] = insert_articles(
            None,
            [NewArticle(title, None, None, title, "", "Outlet", "", T0)],
            session=session,
            fetched_at=T0,
        )
        if story_id is not None:
            assign_article(aid, story_id, session=session)
        return aid


def test_a_keyword_follow_starts_with_the_batch_that_matched(engine):
    """It started at 0: its first digest counted articles from before as new ones."""
    story = _story(engine, "Mt Gox seeks US bankruptcy protection", articles=2)
    assert svc.follow_matching_topics(engine, [story], now=T0) == []  # no topic yet
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    before = _add_article(engine, None, "unrelated, not matched yet")
    with session_scope(engine) as session:
        assign_article(before, story, session=session)
    newest = _add_article(engine, story, "Mt Gox files in Tokyo")
    assert svc.follow_matching_topics(engine, [story], now=T0)
    with session_scope(engine) as session:
        [follow] = session.exec(select(Follow)).all()
    assert follow.last_digested_article_id == before - 1  # the batch is `before` and `newest`
    assert newest > before


def test_a_crash_between_matching_and_the_keyword_step_loses_no_follow(engine):
    """The step ran for the stories of the pass that had just matched, from memory: a crash in
    between (or `poll --once`, which had no step) left those stories unfollowed for good."""
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    story = _story(engine, "Mt Gox seeks US bankruptcy protection", articles=2)
    # matched and committed; the process died before its keyword step: the next run knows of
    # no story of its own
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, story)]
    assert svc.follow_matching_topics(engine, [], now=T0) == []  # and only once


def test_the_keyword_step_waits_for_an_article_not_matched_yet(engine):
    """Articles are matched in id order: one not matched yet is matched by a later pass, and
    the step must still look at its story then, though articles after it were looked at."""
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    waiting = _add_article(engine, None, "Mt Gox seeks US bankruptcy protection")
    other = _story(engine, "Apple releases iOS 7.1")
    assert svc.follow_matching_topics(engine, [other], now=T0) == []
    with session_scope(engine) as session:
        story = create_story(session=session, headline="Mt Gox goes bust", published_at=T0, now=T0)
        assign_article(waiting, story.id, session=session)
        story_id = story.id
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, story_id)]


def _matched_under_id(  # type: ignore[no-untyped-def]
    engine, article_id: int, headline: str, *, story_id: int | None = None
) -> int:
    """An article whose id is `article_id`, matched to `story_id` or else to a new story of it;
    returns the story's id."""
    with session_scope(engine) as session:
        if story_id is None:
            story_id = create_story(session=session, headline=headline, published_at=T0, now=T0).id
        session.add(
            Article(
                id=article_id,
                entry_key=headline,
                title=headline,
                source="Outlet",
                published_at=T0,
                fetched_at=T0,
            )
        )
        session.flush()
        assert assign_article(article_id, story_id, session=session)  # type: ignore[arg-type]
        return story_id  # type: ignore[return-value]


def test_an_article_matched_late_under_a_lower_id_is_still_checked(engine):
    """The step's watermark was an article id: it took ids to become visible in id order. On
    PostgreSQL a second writer (a poller whose lease lapsed, `storywire cluster --database` on
    the live database) can commit a lower id after the step went past a higher one, and that
    article's story was never checked for topics."""
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    _matched_under_id(engine, 100, "Apple releases iOS 7.1")
    assert svc.follow_matching_topics(engine, [], now=T0) == []
    late = _matched_under_id(engine, 50, "Mt Gox seeks US bankruptcy protection")
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, late)]


def test_a_lower_id_committed_after_the_step_passed_a_higher_one_is_still_checked(engine):
    """The same, with two real writers: the late one's insert took the lower id first."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: a later insert waits for the earlier commit")
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    headline = "Mt Gox seeks US bankruptcy protection"
    with Session(engine) as second_writer:
        [late_id] = insert_articles(
            None,
            [NewArticle(headline, None, None, headline, "", "Outlet", "", T0)],
            session=second_writer,
            fetched_at=T0,
        )
        other = _story(engine, "Apple releases iOS 7.1")  # a higher id, matched and committed
        with session_scope(engine) as session:
            assert session.get(Article, late_id) is None  # not visible yet
            assert min(a.id for a in session.exec(select(Article))) > late_id
        assert svc.follow_matching_topics(engine, [other], now=T0) == []
        late = create_story(session=second_writer, headline=headline, published_at=T0, now=T0)
        assert assign_article(late_id, late.id, session=second_writer)
        late_story = late.id
        second_writer.commit()
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, late_story)]


def test_a_second_writer_takes_its_match_number_only_once_the_first_has_committed(engine):
    """What keeps the step's reads in order: numbers commit in the order they are handed out,
    so none lower than one the step has seen can still be on its way."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    from store.articles import match_seq

    with Session(engine) as first, Session(engine) as second:
        taken = match_seq(session=first)
        assert match_seq(session=first) == taken  # one number for the whole transaction
        second.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            match_seq(session=second)
        second.rollback()
        first.commit()
        assert match_seq(session=second) == taken + 1
        second.commit()


SBARRO = [
    "Sbarro files for bankruptcy again",
    "Pizza chain Sbarro files for Chapter 11 bankruptcy",
    "Sbarro bankruptcy: pizza chain to close stores",
    "Sbarro seeks bankruptcy protection for second time",
]


def _arrives(engine, title: str, minutes: int) -> None:  # type: ignore[no-untyped-def]
    at = T0 + timedelta(minutes=minutes)
    with session_scope(engine) as session:
        insert_articles(
            None,
            [NewArticle(title, None, None, title, "", "", "", at)],
            session=session,
            fetched_at=at,
        )


def test_a_second_look_that_moved_a_lone_article_before_a_crash_is_checked_after_it(engine):
    """A lone article that joins another story on its second look changed that story, but the
    step heard of it only from the pass's memory: a crash between matching and the step, and
    the story was never checked for topics."""
    service = StoryService.open(engine)
    _arrives(engine, "Pizza chain seeks protection from creditors again", 0)
    for minutes, title in enumerate(SBARRO, start=5):
        _arrives(engine, title, minutes)
    service.assign_pending()
    assert svc.follow_matching_topics(engine, [], now=T0) == []  # checked: no one's keywords yet
    svc.follow_topic(engine, CHAT, "Sbarro", now=T0)
    _arrives(engine, "Polar vortex returns to the Midwest", 61)
    [step] = service.assign_pending()
    [(lone, sbarro)] = step.merges  # the lone article had its second look and joined
    # the process dies here, before its keyword step; the next run knows of no story of its own
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, sbarro)]
    assert svc.follow_matching_topics(engine, [], now=T0) == []  # and only once


def test_a_merge_before_a_crash_is_checked_after_it(engine):
    """A merge changed the survivor, but the step heard of it only from the pass's memory. The
    follow it makes then starts with what arrived since the last run: the article that came into
    the absorbed story, not the survivor's older ones."""
    absorbed = _story(engine, "Bitcoin exchange chief apologises")
    survivor = _story(engine, "Mt Gox files for bankruptcy", articles=2)
    assert svc.follow_matching_topics(engine, [], now=T0) == []
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    arrived = _add_article(engine, absorbed, "Bitcoin exchange chief says sorry again")
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T0)
    # the process dies here, before its keyword step
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, survivor)]
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0)
        follow = session.get(Follow, pending.follow_id)
        assert follow is not None and follow.last_digested_article_id == arrived - 1
    assert (pending.story_id, pending.unsent, pending.owed) == (survivor, 1, ())


@pytest.mark.parametrize("absorbed_first", [True, False], ids=["lower-ids", "higher-ids"])
def test_a_keyword_follow_made_after_a_merge_is_not_sent_the_absorbed_storys_history(
    engine, absorbed_first
):
    """Merges stamp the articles they move so the step sees the survivor changed; the first
    digest took those stamps for news and sent a keyword follow made today the absorbed story's
    day-old articles (up to 50 below the survivor's, all of them above), where a follow by id
    made at the same time was sent none of those below."""
    day_before = T0 - timedelta(days=1)
    stories = {}
    for name, headline, articles in (
        ("absorbed", "Bitcoin exchange chief apologises", 60),
        ("survivor", "Mt Gox files for bankruptcy", 5),
    )[:: 1 if absorbed_first else -1]:
        stories[name] = _story(engine, headline, articles=articles, at=day_before)
    assert svc.follow_matching_topics(engine, [], now=day_before) == []
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    with session_scope(engine) as session:
        merge_stories(stories["absorbed"], stories["survivor"], session=session, now=T0)
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, stories["survivor"])]
    with session_scope(engine) as session:
        assert pending_follows(session=session, now=T0 + timedelta(hours=1)) == []


def test_an_article_matched_late_under_a_lower_id_is_owed_to_the_follow_it_makes(engine):
    """A second writer committed an article late under a lower id, into a story whose higher
    ids the step had seen: the follow starts after those, and owes the late one."""
    svc.follow_topic(engine, CHAT, "Mt. Gox", now=T0)
    seen = _matched_under_id(engine, 100, "Bitcoin exchange goes dark")  # no topic matches
    assert svc.follow_matching_topics(engine, [], now=T0) == []
    _matched_under_id(engine, 50, "Mt Gox", story_id=seen)  # late, under a lower id
    with session_scope(engine) as session:
        session.get(Story, seen).headline = "Mt Gox goes dark"  # type: ignore[union-attr]
    created = svc.follow_matching_topics(engine, [], now=T0)
    assert [(chat, card.id) for chat, card, _ in created] == [(CHAT, seen)]
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0)
    assert (pending.unsent, pending.owed, pending.last_digested_article_id) == (1, (50,), 100)


def test_the_keyword_step_and_a_second_matcher_take_their_locks_in_one_order(engine):
    """The step locked the stories it follows in id order while a second matcher (a lapsed
    lease, `storywire cluster --database` on the live database) updated stories in article order
    and then locked more in a merge: each waited for the other, and PostgreSQL killed one."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    svc.follow_topic(engine, CHAT, "storm", now=T0)
    first, second, third = (
        _story(engine, headline)
        for headline in ("Storm hits coast", "Storm closes schools", "Storm cuts power")
    )
    late = _add_article(engine, None, "Storm moves inland")
    errors: list[BaseException] = []
    with Session(engine) as matcher:  # its batch: an article into the second story ...
        assign_article(late, second, session=matcher)
        matcher.execute(sa.update(Story).where(col(Story.id) == second).values(article_count=2))

        def step() -> None:
            try:
                svc.follow_matching_topics(engine, [], now=T0)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=step)
        thread.start()
        _wait_for_a_lock_wait(engine)
        try:  # ... then, later in the same batch, a merge into the first story
            merge_stories(third, first, session=matcher, now=T0)
            matcher.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        thread.join(30)
    assert not errors, errors
    assert _followed(engine) == [first, second]


def _wait_for_a_lock_wait(engine) -> None:  # type: ignore[no-untyped-def]
    """Until another session of this database waits for a lock (PostgreSQL)."""
    deadline = time.monotonic() + 10
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar()
            connection.rollback()
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the keyword step never waited for the matcher")


def test_top_ranks_by_sources_then_recency(engine):
    _story(engine, "Old big story", sources=10, at=T0 - timedelta(hours=30))
    small = _story(engine, "Small story", sources=2)
    big = _story(engine, "Big story", sources=7)
    assert [c.id for c in svc.top(engine, now=T0, limit=5)] == [big, small]


def test_digest_on_schedules_the_next_local_time(engine):
    svc.change_timezone(engine, CHAT, "Asia/Tokyo", now=T0)
    setting = svc.change_digest(engine, CHAT, enabled=True, time_text="09:00", now=T0)
    assert setting.time == "09:00" and setting.timezone == "Asia/Tokyo"
    assert setting.next_at == datetime(2026, 3, 11, 0, 0, tzinfo=UTC)


def test_digest_off_clears_the_schedule(engine):
    svc.change_digest(engine, CHAT, enabled=True, time_text="09:00", now=T0)
    setting = svc.change_digest(engine, CHAT, enabled=False, time_text=None, now=T0)
    assert not setting.enabled and setting.next_at is None


def test_changing_time_zone_moves_the_next_digest(engine):
    svc.change_digest(engine, CHAT, enabled=True, time_text="09:00", now=T0)
    setting = svc.change_timezone(engine, CHAT, "America/New_York", now=T0)
    assert setting.next_at == datetime(2026, 3, 10, 13, 0, tzinfo=UTC)


def test_bad_digest_time_changes_nothing(engine):
    with pytest.raises(ValueError):
        svc.change_digest(engine, CHAT, enabled=True, time_text="25:99", now=T0)
    assert svc.digest_setting(engine, CHAT).enabled is False


def test_a_blocked_chat_that_writes_again_resumes_its_queue(engine):
    with session_scope(engine) as session:
        enqueue(CHAT, [OutgoingPart("hi")], session=session, kind="notice", dedup_key="n", now=T0)
        session.get(Chat, CHAT).status = "blocked"
    with session_scope(engine) as session:
        park_chat(CHAT, session=session, error="blocked")
    svc.record_chat(
        engine, CHAT, type="private", title=None, username="u", now=T0, default_timezone="UTC"
    )
    with session_scope(engine) as session:
        assert session.get(Chat, CHAT).status == "active"
        assert session.exec(select(OutboxMessage)).one().status == "pending"


def _follow_at(engine, chat_id: int, story_id: int, watermark: int) -> None:  # type: ignore[no-untyped-def]
    from store.follows import follow_story

    with session_scope(engine) as session:
        follow_story(chat_id, story_id, session=session, now=T0, from_article_id=watermark)


def test_merged_story_moves_articles_and_follows_and_its_id_still_works(engine):
    from store.stories import merge_stories

    other = 6
    svc.record_chat(
        engine, other, type="private", title=None, username="v", now=T0, default_timezone="UTC"
    )
    survivor = _story(engine, "GM recall widens", articles=3, sources=3)
    absorbed = _story(engine, "GM recall explained", articles=2, sources=2)
    with session_scope(engine) as session:
        survivor_ids = sorted(
            a.id for a in session.exec(select(Article).where(Article.story_id == survivor))
        )
        absorbed_ids = sorted(
            a.id for a in session.exec(select(Article).where(Article.story_id == absorbed))
        )
    # CHAT follows both (each with its own watermark); `other` follows only the absorbed story
    _follow_at(engine, CHAT, survivor, survivor_ids[-1])
    _follow_at(engine, CHAT, absorbed, absorbed_ids[0])
    _follow_at(engine, other, absorbed, absorbed_ids[0])

    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T0)

    with session_scope(engine) as session:
        moved = session.exec(select(Article).where(Article.story_id == survivor)).all()
        assert len(moved) == 5
        follows = session.exec(select(Follow).order_by(Follow.chat_id)).all()
        assert [(f.chat_id, f.story_id) for f in follows] == [(CHAT, survivor), (other, survivor)]
        # the chat that followed both keeps the later watermark: nothing is sent to it twice
        assert follows[0].last_digested_article_id == max(survivor_ids[-1], absorbed_ids[0])
        # the chat that followed only the absorbed story still gets what it had not been sent
        assert follows[1].last_digested_article_id == absorbed_ids[0]

    detail = svc.story_detail(engine, absorbed, chat_id=CHAT)
    assert detail is not None and detail.card.id == survivor and detail.following
    assert [c.id for c in svc.top(engine, now=T0, limit=10)] == [survivor]
    assert svc.unfollow(engine, other, str(absorbed), now=T0) is not None
    again = svc.follow_story_id(engine, other, absorbed, now=T0)
    assert again.story is not None and again.story.id == survivor


def test_merges_chain_to_the_last_survivor(engine):
    from store.stories import merge_stories, resolve_story

    a, b, c = (_story(engine, f"Story {n}") for n in "abc")
    with session_scope(engine) as session:
        merge_stories(a, b, session=session, now=T0)
    with session_scope(engine) as session:
        merge_stories(b, c, session=session, now=T0)
    with session_scope(engine) as session:
        assert resolve_story(a, session=session).id == c
        assert resolve_story(b, session=session).id == c
        assert resolve_story(999, session=session) is None


# --- unfollowing a topic ---------------------------------------------------------------------


def _topic_stories(engine, words: str, *headlines: str) -> list[int]:  # type: ignore[no-untyped-def]
    """Stories the chat's topic `words` followed (the topic is followed first if it is not)."""
    svc.follow_topic(engine, CHAT, words, now=T0)
    ids = [_story(engine, h) for h in headlines]
    created = svc.follow_matching_topics(engine, ids, now=T0)
    assert sorted(card.id for _, card, _ in created) == ids
    return ids


def _followed(engine) -> list[int]:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return sorted(f.story_id for f in session.exec(select(Follow)))


def test_unfollowing_a_topic_ends_the_story_follows_it_made(engine):
    """They stayed: "/unfollow bitcoin" after "/follow bitcoin" kept the bitcoin digests coming."""
    _topic_stories(engine, "bitcoin", "Bitcoin falls below $60,000", "Bitcoin ETF approved")
    done = svc.unfollow(engine, CHAT, "Bitcoin", now=T0)
    assert _followed(engine) == []
    assert done == svc.Unfollowed("Bitcoin", topic=True, stories=2)


def test_unfollowing_a_topic_keeps_the_stories_followed_by_id(engine):
    before = _story(engine, "Bitcoin miners move to Texas")
    svc.follow_story_id(engine, CHAT, before, now=T0)  # by id, then matched by the topic
    [after] = _topic_stories(engine, "bitcoin", "Bitcoin falls below $60,000")
    svc.follow_matching_topics(engine, [before], now=T0)
    assert not svc.follow_story_id(engine, CHAT, after, now=T0).created  # by id once followed
    assert svc.unfollow(engine, CHAT, "bitcoin", now=T0) == svc.Unfollowed(
        "bitcoin", topic=True, stories=0
    )
    assert _followed(engine) == sorted([before, after])


def test_unfollowing_a_topic_keeps_a_story_another_topic_follows(engine):
    [story] = _topic_stories(engine, "bitcoin", "Mt Gox bitcoin exchange files for bankruptcy")
    svc.follow_topic(engine, CHAT, "Mt Gox", now=T0)  # matches it as well, followed since
    assert svc.unfollow(engine, CHAT, "bitcoin", now=T0).stories == 0  # type: ignore[union-attr]
    assert _followed(engine) == [story]
    # and the one still followed answers for it now
    assert svc.unfollow(engine, CHAT, "Mt Gox", now=T0).stories == 1  # type: ignore[union-attr]
    assert _followed(engine) == []


@pytest.mark.parametrize("by_id", ["survivor", "absorbed"])
def test_a_story_followed_by_id_stays_followed_by_id_when_merged(engine, by_id):
    [by_topic] = _topic_stories(engine, "bitcoin", "Bitcoin falls below $60,000")
    other = _story(engine, "Crypto markets slide")
    svc.follow_story_id(engine, CHAT, other, now=T0)
    survivor, absorbed = (other, by_topic) if by_id == "survivor" else (by_topic, other)
    with session_scope(engine) as session:
        merge_stories(absorbed, survivor, session=session, now=T0)
    assert svc.unfollow(engine, CHAT, "bitcoin", now=T0).stories == 0  # type: ignore[union-attr]
    assert _followed(engine) == [survivor]


def test_unfollowing_a_topic_drops_the_digests_queued_for_its_stories(engine):
    kept = _story(engine, "Storm hits coast")
    svc.follow_story_id(engine, CHAT, kept, now=T0)
    [story] = _topic_stories(engine, "bitcoin", "Bitcoin falls below $60,000")
    with session_scope(engine) as session:
        for story_id in (kept, story):
            enqueue(
                CHAT,
                [OutgoingPart(f"digest {story_id}")],
                session=session,
                kind="story_digest",
                story_id=story_id,
                dedup_key=f"story:{CHAT}:{story_id}:1",
                now=T0,
            )
    svc.unfollow(engine, CHAT, "bitcoin", now=T0)
    with session_scope(engine) as session:
        assert [m.story_id for m in session.exec(select(OutboxMessage))] == [kept]


def test_a_story_a_topic_stopped_is_followed_again_with_the_topic(engine):
    """No opt-out: the chat gave up the words, not the story. Following the words again (or
    other words that match it) follows it again."""
    [story] = _topic_stories(engine, "bitcoin", "Bitcoin falls below $60,000")
    svc.unfollow(engine, CHAT, "bitcoin", now=T0)
    svc.follow_topic(engine, CHAT, "bitcoin", now=T0)
    assert [card.id for _, card, _ in svc.follow_matching_topics(engine, [story], now=T0)] == [
        story
    ]


def test_an_article_matched_late_under_a_lower_id_is_owed_to_an_existing_follow(engine):
    """A follow was sent its story up to article 100; a second writer then committed article 50
    late, and the matcher put it in that story. The watermark said 50 was sent: it never was."""
    story = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    assert svc.follow_story_id(engine, CHAT, story, now=T0).created
    with session_scope(engine) as session:
        assert session.exec(select(Follow)).one().last_digested_article_id == 100
        late = Article(
            id=50,
            entry_key="late",
            title="Mt Gox bankruptcy protection filing in Tokyo",
            source="Other Outlet",
            published_at=T0,
            fetched_at=T0,
        )
        session.add(late)
    [assignment] = StoryService.open(engine, clock=lambda: T0).assign_pending()
    assert (assignment.article_id, assignment.story_id) == (50, story)
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0)
    assert (pending.unsent, pending.owed, pending.last_digested_article_id) == (1, (50,), 100)


def test_a_match_above_the_watermark_is_not_put_on_the_backlog(engine):
    story = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    assert svc.follow_story_id(engine, CHAT, story, now=T0).created
    with session_scope(engine) as session:
        session.add(
            Article(
                id=150,
                entry_key="next",
                title="Mt Gox bankruptcy protection filing in Tokyo",
                source="Other Outlet",
                published_at=T0,
                fetched_at=T0,
            )
        )
    [assignment] = StoryService.open(engine, clock=lambda: T0).assign_pending()
    assert assignment.story_id == story
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0)
    assert (pending.unsent, pending.owed, pending.newest_article_id) == (1, (), 150)


def _late_article(engine, article_id: int = 50) -> None:  # type: ignore[no-untyped-def]
    """Committed by a second writer after higher ids: not matched yet."""
    with session_scope(engine) as session:
        session.add(
            Article(
                id=article_id,
                entry_key=f"late{article_id}",
                title="Mt Gox bankruptcy protection filing in Tokyo",
                source="Other Outlet",
                published_at=T0,
                fetched_at=T0,
            )
        )


def test_a_keyword_unfollow_while_a_late_article_is_owed_does_not_fail_the_matching_batch(
    engine, monkeypatch
):
    """A keyword unfollow ends follows without the story's lock: one committed between the
    read of the follows and the backlog insert broke the foreign key, and the whole batch (up
    to 500 matches) rolled back. (Found in review; the interleaving is forced.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("needs two writers at once")
    import store.follows

    story = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    svc.follow_topic(engine, CHAT, "Mt Gox", now=T0)
    with session_scope(engine) as session:  # the keyword's follow, sent up to article 100
        topic = session.exec(select(TopicFollow)).one()
        follow_story(CHAT, story, session=session, now=T0, topic_id=topic.id, from_article_id=100)
    _late_article(engine)
    real = store.follows.owe_articles
    calls = []

    def unfollow_meanwhile(owed, *, session, now):  # type: ignore[no-untyped-def]
        calls.append(owed)
        unfollowed = svc.unfollow(engine, CHAT, "Mt Gox", now=T0)  # commits on its own
        assert unfollowed is not None and unfollowed.stories == 1
        real(owed, session=session, now=now)

    monkeypatch.setattr(store.follows, "owe_articles", unfollow_meanwhile)
    [assignment] = StoryService.open(engine, clock=lambda: T0).assign_pending()
    assert assignment.story_id == story and len(calls) == 1
    with session_scope(engine) as session:
        assert session.get(Article, 50).story_id == story  # type: ignore[union-attr]


def test_a_late_article_of_a_story_the_chat_unfollowed_is_not_owed_through_a_merge(engine):
    """A merge owes a follower of the survivor nothing of a story it unfollowed; a late article
    of that story, merged in the same batch, was owed anyway. (Found in review.)"""
    from store.follows import opt_out, owe_late_match

    survivor = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    absorbed = _matched_under_id(engine, 90, "Bitcoin exchange goes dark")
    assert svc.follow_story_id(engine, CHAT, survivor, now=T0).created  # watermark 100
    with session_scope(engine) as session:
        opt_out(CHAT, absorbed, session=session, now=T0)
    _late_article(engine)
    with session_scope(engine) as session:  # the calls of one matching step
        assert assign_article(50, absorbed, session=session)
        assert owe_late_match(50, absorbed, session=session, now=T0) == 0
        merge_stories(absorbed, survivor, session=session, now=T0)
    with session_scope(engine) as session:
        assert pending_follows(session=session, now=T0) == []


def test_a_late_article_owed_to_a_follow_of_its_story_is_still_owed_after_a_merge(engine):
    """The follow of the story the late article joined moves to the survivor, with its backlog."""
    from store.follows import owe_late_match

    survivor = _matched_under_id(engine, 90, "Bitcoin exchange goes dark")
    story = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    assert svc.follow_story_id(engine, CHAT, story, now=T0).created  # watermark 100
    _late_article(engine)
    with session_scope(engine) as session:
        assert assign_article(50, story, session=session)
        assert owe_late_match(50, story, session=session, now=T0) == 1
        merge_stories(story, survivor, session=session, now=T0)
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0)
    assert (pending.story_id, pending.owed) == (survivor, (50,))


def _late_article_joins_a_story_that_absorbs_a_followed_one(  # type: ignore[no-untyped-def]
    engine, monkeypatch, article_id: int = 50
) -> tuple[StoryService, int, int]:
    """(service, followed, survivor): the followed story (sent up to article 100) is absorbed
    by an unfollowed one, which the article joins in the next batch; the matcher is forced."""
    from bot.stories.matcher import Merge, StorySnapshot

    survivor = _matched_under_id(engine, 90, "Bitcoin exchange goes dark")  # nobody follows it
    followed = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    assert svc.follow_story_id(engine, CHAT, followed, now=T0).created  # watermark 100
    _late_article(engine, article_id)
    service = StoryService.open(engine, clock=lambda: T0, rebuild=False)
    matcher = service.matcher
    snapshot = StorySnapshot(survivor, "Bitcoin exchange goes dark", 3, 2, T0, T0)
    monkeypatch.setattr(matcher, "match", lambda text: (survivor, 1.0))
    monkeypatch.setattr(matcher, "add", lambda story_id, text: snapshot)
    monkeypatch.setattr(matcher, "settle", lambda story_id: Merge(followed, survivor, snapshot))
    monkeypatch.setattr(matcher, "revisit", lambda clock: ())
    return service, followed, survivor


@pytest.mark.parametrize("article_id", [150, 50], ids=["in-order", "late"])
def test_an_article_in_a_story_that_then_absorbs_a_followed_one_is_sent(
    engine, monkeypatch, article_id
):
    """The follow moves to the survivor from its own watermark (100): a late article (50) put
    in the survivor just before was checked against the survivor's follows, none then, and
    was lost. (Found in review; the matcher's decisions are forced.)"""
    service, followed, survivor = _late_article_joins_a_story_that_absorbs_a_followed_one(
        engine, monkeypatch, article_id
    )
    [done] = service.assign_pending()
    assert done.merges == ((followed, survivor),)
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0)
    assert pending.story_id == survivor
    sent = {
        *pending.owed,
        *([pending.newest_article_id] if pending.newest_article_id > 100 else []),
    }
    assert article_id in sent


@pytest.mark.parametrize("survivor_is", ["followed", "new"])
def test_a_late_article_in_a_new_story_merged_with_a_followed_one_is_sent(
    engine, monkeypatch, survivor_is
):
    """Article 50 was fetched before the chat followed the story (sent up to 100) but matched
    late: it started a story that settled with the followed one in the same step. When the
    followed story survived, the merge took 50 for history (fetched before the follow) and it
    was never sent, though matched into that story directly it is owed. (Found in review.)"""
    from bot.stories.matcher import Merge, StorySnapshot

    followed = _matched_under_id(engine, 100, "Mt Gox files for bankruptcy protection in Tokyo")
    assert svc.follow_story_id(engine, CHAT, followed, now=T0 + timedelta(minutes=5)).created
    _late_article(engine)
    service = StoryService.open(engine, clock=lambda: T0 + timedelta(minutes=10), rebuild=False)
    matcher = service.matcher

    def settle(story_id: int) -> Merge:
        if survivor_is == "followed":
            return Merge(story_id, followed, StorySnapshot(followed, "Mt Gox", 2, 2, T0, T0))
        return Merge(followed, story_id, StorySnapshot(story_id, "Mt Gox", 2, 2, T0, T0))

    monkeypatch.setattr(matcher, "match", lambda text: None)  # a story of its own first
    monkeypatch.setattr(
        matcher, "add", lambda story_id, text: StorySnapshot(story_id, "x", 1, 1, T0, T0)
    )
    monkeypatch.setattr(matcher, "settle", settle)
    monkeypatch.setattr(matcher, "revisit", lambda clock: ())
    [done] = service.assign_pending()
    assert len(done.merges) == 1
    with session_scope(engine) as session:
        [pending] = pending_follows(session=session, now=T0 + timedelta(hours=1))
    assert pending.owed == (50,)


def test_a_follow_made_on_the_absorbed_story_while_the_batch_runs_is_owed_too(engine, monkeypatch):
    """The follows a merge moves were read before the merge locked the stories: one made on
    the absorbed story in between moved with the others but was not owed the batch's late
    article. (Found in review; the interleaving is forced.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("needs two writers at once")
    import bot.stories.service as service_module

    other_chat = CHAT + 1
    svc.record_chat(
        engine, other_chat, type="private", title=None, username="v", now=T0, default_timezone="UTC"
    )
    service, followed, survivor = _late_article_joins_a_story_that_absorbs_a_followed_one(
        engine, monkeypatch
    )
    real = service_module.merge_stories

    def follow_meanwhile(absorbed, survivor, *, session, now):  # type: ignore[no-untyped-def]
        # another chat follows the absorbed story by id and commits just before the merge
        assert svc.follow_story_id(engine, other_chat, absorbed, now=T0).created
        return real(absorbed, survivor, session=session, now=now)

    monkeypatch.setattr(service_module, "merge_stories", follow_meanwhile)
    [done] = service.assign_pending()
    assert done.merges == ((followed, survivor),)
    with session_scope(engine) as session:
        pending = pending_follows(session=session, now=T0)
    assert sorted((p.chat_id, p.owed) for p in pending) == [(CHAT, (50,)), (other_chat, (50,))]
