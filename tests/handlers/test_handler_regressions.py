"""Handlers against hostile input and Telegram's limits: the real Application over the loopback
Bot API, with stories and feeds written straight into its database."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from bot.following import follow_matching_topics
from store.db import session_scope
from store.feeds import add_feed
from store.follows import add_topic, follow_story
from store.models import Article
from store.stories import create_story
from tests.e2e.harness import e2e_settings, running_bot, services_of
from tests.fakes.bot_api import QUERY_TOO_OLD, FakeBotApi
from tests.fakes.telegram_html import utf16_length

USER, ADMIN = 501, 42
NOW = datetime.now(UTC).replace(microsecond=0)
SORRY = "Sorry, something went wrong"
MARKER = "Use /search words"


@pytest.fixture
def settings(api, tmp_path):  # type: ignore[no-untyped-def]
    return e2e_settings(
        api.url, f"sqlite:///{tmp_path / 'handlers.db'}", admin_user_ids=frozenset({ADMIN})
    )


async def say(api: FakeBotApi, chat_id: int, text: str, **kw) -> list[str]:  # type: ignore[no-untyped-def]
    """Send a message as a user; the bot's answers to it (a /search sent after it marks the end,
    since the bot handles one chat's updates in order)."""
    before = len(api.sent_to(chat_id))
    await api.inject_message(chat_id, text, **kw)
    await api.wait_for_messages(before + 1, chat_id=chat_id, within=10)
    await api.inject_message(chat_id, "/search")
    await api.wait_for(
        lambda: any(MARKER in m.plain_text for m in api.sent_to(chat_id)[before:]), 10
    )
    texts = [m.plain_text for m in api.sent_to(chat_id)[before:]]
    return texts[: next(i for i, t in enumerate(texts) if MARKER in t)]


def make_story(engine, headline: str, *, titles: tuple[str, ...] = ()) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        story = create_story(session=session, headline=headline, published_at=NOW, now=NOW)
        for i, title in enumerate(titles):
            session.add(
                Article(
                    entry_key=f"{story.id}-{i}",
                    url=f"https://a.example/{story.id}/{i}",
                    title=title,
                    source="S" * 200,
                    published_at=NOW - timedelta(minutes=i),
                    fetched_at=NOW,
                    story_id=story.id,
                )
            )
        story.article_count, story.source_count = len(titles), 1
        session.add(story)
        return story.id  # type: ignore[return-value]


def assert_fits(texts: list[str]) -> None:
    assert texts, "no reply"
    assert not any(SORRY in t for t in texts), texts
    assert all(utf16_length(t) <= 4096 for t in texts)


@pytest.mark.parametrize("command", ["/follow ²", "/story ²", "/unfollow ²", "/top ²"])
async def test_superscript_digits_are_not_taken_for_numbers(api, settings, command):
    async with running_bot(settings):
        replies = await say(api, USER, command)
    assert replies and not any(SORRY in r for r in replies), replies


async def test_unfollow_of_a_huge_number_is_answered(api, settings):
    async with running_bot(settings):
        replies = await say(api, USER, "/unfollow " + "9" * 150)
    assert replies and not any(SORRY in r for r in replies), replies
    assert "does not follow" in replies[0]


async def test_a_long_number_followed_as_a_topic_can_be_unfollowed(api, settings):
    async with running_bot(settings):
        followed = await say(api, USER, "/follow 1234567890123")
        unfollowed = await say(api, USER, "/unfollow 1234567890123")
    assert "topic" in followed[0]
    assert "Unfollowed" in unfollowed[0], unfollowed


@pytest.mark.parametrize(("stories", "stopped"), [(1, "1 story"), (2, "2 stories")])
async def test_unfollowing_a_topic_says_how_many_stories_stopped(api, settings, stories, stopped):
    async with running_bot(settings) as app:
        await say(api, USER, "/follow bitcoin")
        engine = services_of(app).engine
        ids = [make_story(engine, f"Bitcoin news number {n}") for n in range(stories)]
        assert len(follow_matching_topics(engine, ids, now=NOW)) == stories
        replies = await say(api, USER, "/unfollow bitcoin")
    assert replies == [f"Unfollowed topic “bitcoin” and {stopped} it followed."], replies


async def test_following_a_long_list_is_split_within_telegram_limits(api, settings):
    async with running_bot(settings) as app:
        await say(api, USER, "/start")
        engine = services_of(app).engine
        ids = [make_story(engine, f"Story {n} " + "headline words " * 30) for n in range(30)]
        with session_scope(engine) as session:
            for story_id in ids:
                follow_story(USER, story_id, session=session, now=NOW)
            for n in range(30):
                add_topic(USER, f"topic {n} " + "x" * 150, f"key{n}", session=session, now=NOW)
        replies = await say(api, USER, "/following")
    assert_fits(replies)
    joined = "\n".join(replies)
    assert "Story 29" in joined and "topic 29" in joined


async def test_top_with_long_headlines_fits(api, settings):
    async with running_bot(settings) as app:
        engine = services_of(app).engine
        for n in range(10):
            make_story(engine, f"Story {n} " + "w" * 480, titles=(f"Story {n}",))
        replies = await say(api, USER, "/top 10")
    assert_fits(replies)
    assert "Story 9" in "\n".join(replies)
    assert api.sent_to(USER)[-2].reply_markup is not None  # buttons on the last part


async def test_story_with_long_titles_fits(api, settings):
    async with running_bot(settings) as app:
        story_id = make_story(
            services_of(app).engine,
            "H" * 500,
            titles=tuple(f"Title {n} " + "t" * 490 for n in range(8)),
        )
        replies = await say(api, USER, f"/story {story_id}")
    assert_fits(replies)


async def test_feeds_list_escapes_names_before_cutting_them(api, settings):
    async with running_bot(settings) as app:
        with session_scope(services_of(app).engine) as session:
            add_feed("https://f.example/rss", session=session, name="A" * 77 + "&B", now=NOW)
        replies = await say(api, ADMIN, "/feeds")
    assert_fits(replies)
    assert "A" * 77 + "&B ·" in replies[0]  # a short name shown whole, unescaped


async def test_feeds_list_of_many_failing_feeds_fits(api, settings):
    async with running_bot(settings) as app:
        with session_scope(services_of(app).engine) as session:
            for n in range(50):
                feed = add_feed(
                    f"https://f.example/{n}", session=session, name=f"Feed {n} " + "n" * 90, now=NOW
                )
                feed.last_error = "e" * 400
                session.add(feed)
        replies = await say(api, ADMIN, "/feeds")
    assert_fits(replies)
    assert "Feed 49" in "\n".join(replies)


async def test_a_stale_follow_button_still_follows_and_says_so(api, settings):
    async with running_bot(settings) as app:
        story_id = make_story(services_of(app).engine, "Nara summit")
        await say(api, USER, "/start")
        before = len(api.sent_to(USER))
        api.fail("answerCallbackQuery", 400, QUERY_TOO_OLD)
        await api.inject_callback(USER, f"fol:{story_id}")
        await api.wait_for_messages(before + 1, chat_id=USER)
        replies = await say(api, USER, "/following")
    texts = [m.plain_text for m in api.sent_to(USER)[before:]]
    assert not any(SORRY in t for t in texts), texts
    assert texts[0].startswith("Following Nara summit")
    assert "Nara summit" in replies[0]


async def test_a_story_button_that_cannot_be_shown_answers_once(api, settings):
    async with running_bot(settings) as app:
        story_id = make_story(services_of(app).engine, "Nara summit")
        await say(api, USER, "/start")
        before = len(api.sent_to(USER))
        api.fail("sendMessage", 400, "Bad Request: chat not found", chat_id=USER)
        await api.inject_callback(USER, f"story:{story_id}")
        await api.wait_for(lambda: len(api.callback_answers) == 1)
        await say(api, USER, "/start")
    assert "Could not show the story" in (api.callback_answers[0].get("text") or "")
    assert not any(SORRY in m.plain_text for m in api.sent_to(USER)[before:])


@pytest.fixture
def any_db_settings(api, db_engine):  # type: ignore[no-untyped-def]
    """Settings on the SQLite and (when configured) the PostgreSQL test database."""
    url = db_engine.url.render_as_string(hide_password=False)
    return e2e_settings(api.url, url, admin_user_ids=frozenset({ADMIN}))


@pytest.mark.parametrize(
    "command", ["/follow 999999999999", "/story 999999999999", "/unfollow 999999999999"]
)
async def test_story_ids_beyond_the_column_are_no_story(api, any_db_settings, command):
    async with running_bot(any_db_settings):
        replies = await say(api, USER, command)
    assert replies and not any(SORRY in r for r in replies), replies
    assert "999999999999" in replies[0]


async def test_buttons_with_ids_beyond_the_column_are_answered(api, any_db_settings):
    async with running_bot(any_db_settings):
        await say(api, USER, "/start")
        for verb in ("fol", "unf", "mute", "story"):
            await api.inject_callback(USER, f"{verb}:999999999999")
        await api.wait_for(lambda: len(api.callback_answers) == 4)
        await say(api, USER, "/start")
    assert not any(SORRY in m.plain_text for m in api.sent_to(USER))
    assert all(a.get("text") for a in api.callback_answers)


async def test_a_channel_that_adds_the_bot_gets_no_hello_for_its_subscribers(api, settings):
    channel = -1001234567890
    async with running_bot(settings):
        await api.inject_my_chat_member(
            channel, user_id=1, old="left", new="administrator", chat_type="channel"
        )
        await say(api, USER, "/start")  # updates run in order: the channel's came first
    assert api.sent_to(channel) == []


@pytest.mark.parametrize("target", ["99999999999", "9" * 30, "²"])
async def test_removefeed_of_an_impossible_id_says_there_is_none(api, any_db_settings, target):
    async with running_bot(any_db_settings):
        replies = await say(api, ADMIN, f"/removefeed {target}")
    assert replies and not any(SORRY in r for r in replies), replies
    assert "No feed" in replies[0]


def _old_story(engine, headline: str, days: int) -> int:  # type: ignore[no-untyped-def]
    at = NOW - timedelta(days=days)
    with session_scope(engine) as session:
        return create_story(session=session, headline=headline, published_at=at, now=at).id  # type: ignore[return-value]


async def test_following_a_story_past_the_window_says_it_has_ended(api, settings):
    """The matcher adds articles to stories with news in the last 48 hours only: a follow of an
    older story promised a digest that could never come."""
    async with running_bot(settings) as app:
        engine = services_of(app).engine
        old = _old_story(engine, "Election night in Nara", days=5)
        replies = await say(api, USER, f"/follow {old}")
        await api.inject_callback(USER, f"fol:{old}")
        await api.wait_for(lambda: len(api.callback_answers) == 1)
        following = await say(api, USER, "/following")
    assert "will not be updated" in replies[0] and "48 hours" in replies[0]
    assert "has ended" in (api.callback_answers[0].get("text") or "")
    assert "follows nothing" in following[0]


async def test_a_story_with_news_inside_the_window_is_followed(api, settings):
    async with running_bot(settings) as app:
        story = _old_story(services_of(app).engine, "Election night in Nara", days=1)
        replies = await say(api, USER, f"/follow {story}")
    assert replies[0].startswith("Following Election night in Nara")


async def test_top_shows_the_counts_it_ranks_by(api, settings):
    """/top ranks by the last 24 hours; it showed lifetime counts, so its order looked wrong."""
    async with running_bot(settings) as app:
        engine = services_of(app).engine
        make_story(engine, "Storm hits coast", titles=("Storm hits coast", "Storm moves inland"))
        replies = await say(api, USER, "/top")
    assert "2 articles from 1 source in 24 h (2 in all)" in replies[0], replies[0]


async def _press_failing_button(api, monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """Press a Follow button whose handler fails; the chat's messages after the press."""

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("database unavailable")

    monkeypatch.setattr("bot.following.follow_story_id", broken)
    before = len(api.sent_to(USER))
    await api.inject_callback(USER, "fol:1")
    return [m.plain_text for m in api.sent_to(USER)[before:]]


async def test_a_failing_button_is_answered_so_its_spinner_stops(api, settings, monkeypatch):
    async with running_bot(settings):
        await say(api, USER, "/start")
        await _press_failing_button(api, monkeypatch)
        await api.wait_for(lambda: len(api.callback_answers) == 1)
        after = await say(api, USER, "/start")
    assert SORRY in (api.callback_answers[0].get("text") or "")
    assert not any(SORRY in t for t in after)  # the answer was the reply: no chat message too


async def test_a_failing_button_too_old_to_answer_is_told_in_the_chat(api, settings, monkeypatch):
    async with running_bot(settings):
        await say(api, USER, "/start")
        api.fail("answerCallbackQuery", 400, QUERY_TOO_OLD)
        before = len(api.sent_to(USER))
        await _press_failing_button(api, monkeypatch)
        await api.wait_for_messages(before + 1, chat_id=USER)
    assert SORRY in api.sent_to(USER)[before].plain_text


async def test_a_busy_group_does_not_hold_up_other_chats(api, settings):
    """Updates were handled one at a time: a group over Telegram's 20 messages a minute made the
    rate limiter wait inside its replies, and every other chat waited with it (12 s here)."""
    group = -700
    async with running_bot(settings):
        for n in range(24):
            await api.inject_message(group, "/help", user_id=1000 + n, chat_type="group")
        await api.wait_for_messages(20, chat_id=group, within=20)
        started = time.monotonic()
        await api.inject_message(USER, "/help")
        await api.wait_for_messages(1, chat_id=USER, within=30)
        waited = time.monotonic() - started
    assert waited < 2.0, f"answered after {waited:.1f}s"


async def test_a_command_deleted_before_the_answer_is_answered(api, settings):
    """In a group the answer quotes the command; deleted meanwhile (anti-spam bots do), the reply
    failed, and the apology with it: the setting changed without a word."""
    group = -700
    async with running_bot(settings):
        api.set_chat_member_status(group, ADMIN, "administrator")
        api.delay("getChatMember", 0.5, chat_id=group)  # while the bot checks the sender ...
        await api.inject_message(group, "/digest 09:00", user_id=ADMIN, chat_type="group")
        [command] = [k for k in api._messages if k[0] == group]
        del api._messages[command]  # ... the command is deleted
        await api.wait_for_messages(1, chat_id=group, within=10)
    assert "09:00" in api.sent_to(group)[0].plain_text


async def test_removefeed_finds_a_url_as_typed_to_addfeed(api, settings):
    async with running_bot(settings):
        added = await say(api, ADMIN, "/addfeed https://Example.ORG/rss.xml")
        removed = await say(api, ADMIN, "/removefeed https://Example.ORG/rss.xml")
    assert "added" in added[0], added
    assert "No feed" not in removed[0], removed


async def test_an_edited_command_is_not_run_again(api, settings):
    """Editing "/follow 1" into "/follow 2" to fix a typo left both stories followed."""
    async with running_bot(settings) as app:
        engine = services_of(app).engine
        first, second = make_story(engine, "Nara summit"), make_story(engine, "Apple iOS")
        await say(api, USER, f"/follow {first}")
        [message_id] = [m for c, m in api._messages if c == USER][:1]
        edited = {
            "message_id": message_id,
            "date": 0,
            "edit_date": 1,
            "chat": api._chat(USER),
            "from": api._user(USER),
            "text": f"/follow {second}",
            "entities": [{"type": "bot_command", "offset": 0, "length": 7}],
        }
        await api._push({"edited_message": edited})
        replies = await say(api, USER, "/following")
    assert "Nara summit" in replies[0] and "Apple iOS" not in "\n".join(replies), replies


async def test_a_story_of_one_article_from_one_source_is_worded_in_the_singular(api, settings):
    async with running_bot(settings) as app:
        story_id = make_story(services_of(app).engine, "Nara summit", titles=("Nara summit",))
        [reply] = await say(api, USER, f"/story {story_id}")
    assert f"Story {story_id}: 1 article from 1 source\n" in reply, reply


async def test_a_time_zone_too_long_to_be_one_is_refused_not_ignored(api, settings):
    """Past 64 characters it was taken for no argument: the bot showed the zone unchanged."""
    async with running_bot(settings):
        [reply] = await say(api, USER, "/timezone America/Argentina/Buenos_Aires_" + "x" * 40)
    assert "IANA time zone" in reply and not reply.startswith("Time zone:"), reply


async def test_buttons_pressed_in_a_forum_topic_answer_in_that_topic(api, settings):
    """The story view and the 'Following' line went to the group's General topic."""
    forum, member, thread = -1001234500000, 555, 7
    async with running_bot(settings) as app:
        story_id = make_story(services_of(app).engine, "Nara summit", titles=("Nara summit",))
        api._chat(forum, "supergroup")["is_forum"] = True
        await api.inject_message(
            forum, "/top", user_id=member, message_thread_id=thread, is_topic_message=True
        )
        await api.wait_for_messages(1, chat_id=forum, within=10)
        await api.inject_callback(forum, f"story:{story_id}", user_id=member)
        await api.wait_for_messages(2, chat_id=forum, within=10)
        await api.inject_callback(forum, f"fol:{story_id}", user_id=member)
        await api.wait_for_messages(3, chat_id=forum, within=10)
        answers = api.calls("sendMessage")[-3:]
    assert [str(a.get("message_thread_id")) for a in answers] == [str(thread)] * 3, answers
