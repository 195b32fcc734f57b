"""End to end: the real Storywire Application over real HTTP, against the loopback Bot API server
and a loopback feed server. A user follows a story, new articles arrive, the digest arrives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from store.db import session_scope
from store.models import Chat, Feed, Story
from tests.e2e.harness import e2e_settings, running_bot, services_of
from tests.fakes.bot_api import FakeBotApi
from tests.fakes.feeds import Item, rss

USER, ADMIN, GROUP = 501, 42, -700
NOW = datetime.now(UTC).replace(microsecond=0)

FIRST = [
    Item(
        "Malaysia Airlines flight MH370 missing with 239 aboard",
        "https://a.example/1",
        "a1",
        NOW - timedelta(hours=2),
        "The Boeing 777 lost contact over the South China Sea.",
        "Reuters",
    ),
    Item(
        "Missing Malaysia Airlines MH370: search widens over sea",
        "https://a.example/2",
        "a2",
        NOW - timedelta(hours=1),
        "Ships and planes from several nations joined the search.",
        "BBC",
    ),
    Item(
        "Apple releases iOS 7.1 with CarPlay",
        "https://a.example/3",
        "a3",
        NOW - timedelta(hours=1),
        "The update brings CarPlay and Siri changes.",
        "The Verge",
    ),
]
LATER = [
    Item(
        "MH370 search: Malaysia Airlines jet still missing, oil slick found",
        "https://a.example/4",
        "a4",
        NOW,
        "Vietnam reported an oil slick near the last known position of flight MH370.",
        "AP",
    ),
    Item(
        "Malaysia Airlines MH370: relatives wait for news in Beijing",
        "https://a.example/5",
        "a5",
        NOW,
        "Families of passengers on flight MH370 gathered at a Beijing hotel.",
        "CNN",
    ),
]


@pytest.fixture
def feed(feed_server):  # type: ignore[no-untyped-def]
    items = list(FIRST)

    def serve() -> None:
        feed_server.clear()
        feed_server.expect_request("/world.xml").respond_with_data(
            rss(items, title="World Wire"), content_type="application/rss+xml"
        )

    serve()
    return feed_server, items, serve


@pytest.fixture
def settings(api, tmp_path):  # type: ignore[no-untyped-def]
    return e2e_settings(
        api.url, f"sqlite:///{tmp_path / 'e2e.db'}", admin_user_ids=frozenset({ADMIN})
    )


def last_text(api: FakeBotApi, chat_id: int) -> str:
    return api.sent_to(chat_id)[-1].text


async def say(api: FakeBotApi, chat_id: int, text: str, *, within: float = 10, **kw) -> str:  # type: ignore[no-untyped-def]
    """Send a message as a user and return the bot's reply."""
    before = len(api.sent_to(chat_id))
    await api.inject_message(chat_id, text, **kw)
    await api.wait_for_messages(before + 1, chat_id=chat_id, within=within)
    return api.sent_to(chat_id)[before].text


async def test_start_sets_up_commands_and_replies(api, settings):
    async with running_bot(settings):
        reply = await say(api, USER, "/start")
    assert "Storywire" in reply and "/follow" in reply
    assert {c["command"] for c in api.commands} >= {"top", "follow", "digest"}


async def test_a_follower_gets_a_digest_when_the_story_moves(api, settings, feed):
    server, items, serve = feed
    async with running_bot(settings) as app:
        assert "Feed 1 added" in await say(api, ADMIN, f"/addfeed {server.url_for('/world.xml')}")
        services = services_of(app)
        await api.wait_for(lambda: _story_count(services) >= 2, within=15)
        top = await say(api, USER, "/top")
        assert "Malaysia Airlines" in top and "MH370" in top
        story_id = _story_id_of(services, "MH370")
        assert "Following" in await say(api, USER, f"/follow {story_id}")
        items.extend(LATER)
        serve()
        _make_feeds_due(services)
        await api.wait_for(lambda: any("Updated (" in m.text for m in api.sent_to(USER)), within=20)
    digest = next(m for m in api.sent_to(USER) if "Updated (" in m.text)
    assert "Updated (2 articles)" in digest.text
    assert "[1]" in digest.text and "Sources (2 articles)" in digest.text
    assert "AP" in digest.text and "CNN" in digest.text
    assert f"/story {story_id}" in digest.text
    assert digest.reply_markup["inline_keyboard"][0][0]["callback_data"] == f"unf:{story_id}"
    assert sum("Updated (" in m.text for m in api.sent_to(USER)) == 1


async def test_group_admin_sets_the_daily_digest_and_others_are_refused(api, settings):
    api.set_member_status(GROUP, 1, "administrator")
    async with running_bot(settings):
        refused = await say(api, GROUP, "/digest 08:30", user_id=2, chat_type="group")
        accepted = await say(api, GROUP, "/digest 08:30", user_id=1)
        zone = await say(api, GROUP, "/timezone Europe/Berlin", user_id=1)
    assert "Only this group's admins" in refused
    assert "08:30" in accepted
    assert "Europe/Berlin" in zone


async def test_hostile_arguments_get_short_escaped_replies(api, settings):
    async with running_bot(settings):
        replies = [
            await say(api, USER, "/follow " + "x" * 5000),
            await say(api, USER, "/story <b>1</b>"),
            await say(api, USER, "/timezone Mars/Olympus_Mons"),
            await say(api, USER, "/digest 25:99"),
            await say(api, USER, "/follow"),
            await say(api, USER, "/search <script>alert(1)</script>"),
            await say(api, USER, "/story 99999"),
            await say(api, USER, "/addfeed http://evil.example/"),
        ]
    assert "too long" in replies[0]
    assert "number" in replies[1]
    assert "unknown time zone" in replies[2]
    assert "HH:MM" in replies[3]
    assert "Use /follow" in replies[4]
    assert "&lt;script&gt;" in replies[5]
    assert "no story 99999" in replies[6]
    assert "operators" in replies[7]
    assert all(len(r) < 600 for r in replies)


async def test_buttons_are_validated_and_stale_ones_answered(api, settings):
    async with running_bot(settings):
        await say(api, USER, "/start")
        await api.inject_callback(USER, "fol:123456")
        await api.inject_callback(USER, "garbage:<b>")
        await api.wait_for(lambda: len(api.callback_answers) == 2)
    texts = [a.get("text") for a in api.callback_answers]
    assert texts == ["That story is no longer available.", "This button has expired."]


async def test_bot_added_to_a_group_says_hello_and_removed_pauses_it(api, settings):
    async with running_bot(settings) as app:
        await api.inject_my_chat_member(
            GROUP, user_id=1, old="left", new="member", chat_type="group"
        )
        await api.wait_for_messages(1, chat_id=GROUP)
        await api.inject_my_chat_member(GROUP, user_id=1, old="member", new="kicked")
        services = services_of(app)
        await api.wait_for(lambda: _chat_status(services, GROUP) == "left")
    assert "/digest" in api.sent_to(GROUP)[0].text


async def test_a_group_upgraded_to_a_supergroup_keeps_its_settings(api, settings):
    api.set_member_status(GROUP, 1, "administrator")
    new_id = -1009876543210
    async with running_bot(settings) as app:
        await say(api, GROUP, "/digest 07:15", user_id=1, chat_type="group")
        await api.inject_migration(GROUP, new_id)
        services = services_of(app)
        await api.wait_for(lambda: _chat_status(services, GROUP) == "migrated")
        reply = await say(api, new_id, "/digest", user_id=1)
    assert "07:15" in reply


async def test_a_user_who_blocks_the_bot_is_paused(api, settings):
    async with running_bot(settings) as app:
        await say(api, USER, "/start")
        await api.inject_my_chat_member(USER, user_id=USER, old="member", new="kicked")
        await api.wait_for(lambda: _chat_status(services_of(app), USER) == "blocked")


async def test_replies_survive_telegram_faults(api, settings):
    async with running_bot(settings):
        api.fail("sendMessage", 502, "Bad Gateway", chat_id=USER)
        await api.inject_message(USER, "/help")
        await api.inject_message(USER, "/help")
        await api.wait_for_messages(1, chat_id=USER)
    assert "Storywire" in last_text(api, USER)


# --- helpers reading the bot's own database ---------------------------------------------------


def _story_count(services) -> int:  # type: ignore[no-untyped-def]
    with session_scope(services.engine) as session:
        return len(session.exec(select(Story)).all())


def _story_id_of(services, word: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(services.engine) as session:
        return next(s.id for s in session.exec(select(Story)).all() if word in s.headline)


def _chat_status(services, chat_id: int) -> str | None:  # type: ignore[no-untyped-def]
    with session_scope(services.engine) as session:
        chat = session.get(Chat, chat_id)
        return chat.status if chat else None


def _make_feeds_due(services) -> None:  # type: ignore[no-untyped-def]
    with services.engine.begin() as conn:
        conn.execute(sa.update(Feed).values(next_poll_at=datetime.now(UTC) - timedelta(seconds=1)))


async def test_the_rate_limiter_retries_a_reply_after_429(api, tmp_path):
    settings = e2e_settings(api.url, f"sqlite:///{tmp_path / 'rl.db'}", rate_limit_max_retries=1)
    async with running_bot(settings):
        api.rate_limit("sendMessage", 1, chat_id=USER)
        reply = await say(api, USER, "/help", within=10)
    assert "Storywire" in reply
    assert len([c for c in api.calls("sendMessage") if str(c.get("chat_id")) == str(USER)]) == 2
