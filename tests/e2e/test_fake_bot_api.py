"""The loopback Bot API answers a real python-telegram-bot client the way Telegram does."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from telegram import Bot
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter

from tests.fakes.bot_api import FakeBotApi


@pytest.fixture
async def api():  # type: ignore[no-untyped-def]
    async with FakeBotApi() as server:
        yield server


@pytest.fixture
async def bot(api):  # type: ignore[no-untyped-def]
    async with Bot(api.token, base_url=api.bot_base_url) as client:
        yield client


async def test_get_me_identifies_the_bot(bot, api):
    me = await bot.get_me()
    assert me.username == api.bot_user["username"] and me.is_bot


async def test_send_message_is_recorded_and_returned(bot, api):
    message = await bot.send_message(5, "<b>Hello</b> &amp; welcome", parse_mode="HTML")
    assert message.text == "Hello & welcome" and message.chat.id == 5
    [sent] = api.sent_to(5)
    assert sent.text == "<b>Hello</b> &amp; welcome" and sent.message_id == message.message_id


@pytest.mark.parametrize(
    "text", ["<b>unclosed", "a < b", "<script>x</script>", "<b><i>x</b></i>", "Tom & Jerry"]
)
async def test_invalid_html_is_refused_like_telegram(bot, text):
    with pytest.raises(BadRequest, match="parse entities"):
        await bot.send_message(5, text, parse_mode="HTML")


async def test_length_is_counted_after_entities(bot, api):
    await bot.send_message(5, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(5, "a" * 4097)
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(5, "😀" * 2049)  # 4098 UTF-16 code units


async def test_empty_text_is_refused(bot):
    with pytest.raises(BadRequest, match="empty"):
        await bot.send_message(5, "<b></b>", parse_mode="HTML")


async def test_429_becomes_retry_after(bot, api):
    api.rate_limit("sendMessage", 3)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(5, "hi")
    delay = caught.value.retry_after  # int in PTB 22, timedelta with PTB_TIMEDELTA set
    assert (delay.total_seconds() if isinstance(delay, timedelta) else delay) == 3
    await bot.send_message(5, "hi")  # only the next call failed


async def test_blocked_user_is_forbidden(bot, api):
    api.blocked.add(9)
    with pytest.raises(Forbidden, match="blocked"):
        await bot.send_message(9, "hi")


async def test_migration_error_carries_the_new_chat(bot, api):
    api.migrate_on_send(-100, -1001234567890)
    with pytest.raises(ChatMigrated) as caught:
        await bot.send_message(-100, "hi")
    assert caught.value.new_chat_id == -1001234567890


async def test_server_error_and_dropped_connection_are_network_errors(bot, api):
    api.fail("sendMessage", 502, "Bad Gateway")
    with pytest.raises(NetworkError):
        await bot.send_message(5, "hi")
    api.drop("sendMessage")
    with pytest.raises(NetworkError):
        await bot.send_message(5, "hi")
    await bot.send_message(5, "hi")
    assert len(api.sent_to(5)) == 1


async def test_long_polling_returns_as_soon_as_an_update_arrives(bot, api):
    task = asyncio.create_task(bot.get_updates(timeout=10))
    await asyncio.sleep(0)  # let the request start waiting
    await api.inject_message(5, "/start")
    updates = await asyncio.wait_for(task, 3)
    assert [u.message.text for u in updates] == ["/start"]
    assert updates[0].message.entities[0].type == "bot_command"


async def test_offsets_confirm_updates(bot, api):
    first = await api.inject_message(5, "one")
    await api.inject_message(5, "two")
    assert len(await bot.get_updates(timeout=0)) == 2
    rest = await bot.get_updates(offset=first + 1, timeout=0)
    assert [u.message.text for u in rest] == ["two"]
    assert [u.message.text for u in await bot.get_updates(timeout=0)] == ["two"]


async def test_callback_queries_are_delivered_and_answered(bot, api):
    await api.inject_callback(5, "fol:42")
    [update] = await bot.get_updates(timeout=0)
    assert update.callback_query.data == "fol:42"
    assert await bot.answer_callback_query(update.callback_query.id, "Following")
    assert api.callback_answers[0]["text"] == "Following"


async def test_chat_member_status_is_configurable(bot, api):
    api.set_member_status(-100, 7, "administrator")
    assert (await bot.get_chat_member(-100, 7)).status == "administrator"
    assert (await bot.get_chat_member(-100, 8)).status == "member"


async def test_wrong_token_is_unauthorized(api):
    from telegram.error import InvalidToken

    with pytest.raises(InvalidToken):
        async with Bot("999:WRONG", base_url=api.bot_base_url):
            pass
