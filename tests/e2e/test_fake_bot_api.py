"""The loopback Bot API answers a real python-telegram-bot client the way Telegram does."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeAllGroupChats,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LinkPreviewOptions,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ContextTypes
from telegram.request import HTTPXRequest

from tests.fakes.bot_api import FakeBotApi, parse_telegram_html

KEYBOARD = InlineKeyboardMarkup([[InlineKeyboardButton("Follow", callback_data="fol:42")]])


def seconds(delay: int | timedelta) -> float:
    """RetryAfter.retry_after is an int in PTB 22, a timedelta with PTB_TIMEDELTA set."""
    return delay.total_seconds() if isinstance(delay, timedelta) else delay


# --- identity, routing, request encodings -----------------------------------------------------


async def test_get_me_identifies_the_bot(bot: Bot, api: FakeBotApi) -> None:
    me = await bot.get_me()
    assert me.is_bot and me.id == 123456 and me.username == "storywire_test_bot"
    assert api.bot_user["username"] == bot.username


async def test_wrong_token_is_unauthorized_and_unknown_method_not_found(api: FakeBotApi) -> None:
    async with httpx.AsyncClient(base_url=api.url) as client:
        wrong = await client.post("/bot999:WRONG/getMe")
        unknown = await client.post(f"/bot{api.token}/noSuchMethod")
    assert wrong.status_code == 401
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert unknown.status_code == 404 and unknown.json()["description"] == "Not Found"
    with pytest.raises(InvalidToken):
        async with Bot("999:WRONG", base_url=api.bot_base_url):
            pass


async def test_json_query_and_multipart_requests_are_understood(api: FakeBotApi) -> None:
    markup = {"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}
    async with httpx.AsyncClient(base_url=f"{api.url}/bot{api.token}") as client:
        by_json = await client.post(
            "/SENDMESSAGE", json={"chat_id": 5, "text": "json", "reply_markup": markup}
        )
        by_query = await client.get("/sendMessage", params={"chat_id": "5", "text": "query"})
        by_multipart = await client.post(
            "/sendMessage", data={"chat_id": "5", "text": "multipart"}, files={"f": b"x"}
        )
    assert [r.json()["ok"] for r in (by_json, by_query, by_multipart)] == [True] * 3
    assert [m.text for m in api.sent_to(5)] == ["json", "query", "multipart"]
    assert api.sent_to(5)[0].reply_markup == markup
    assert by_json.json()["result"]["reply_markup"] == markup


# --- sendMessage ------------------------------------------------------------------------------


async def test_send_message_is_recorded_and_returned(bot: Bot, api: FakeBotApi) -> None:
    first = await bot.send_message(
        5,
        "<b>Hello</b> &amp; welcome",
        parse_mode="HTML",
        reply_markup=KEYBOARD,
        disable_notification=True,
        link_preview_options=LinkPreviewOptions(is_disabled=True),
    )
    second = await bot.send_message(5, "again")
    assert first.text == "Hello & welcome" and first.chat.id == 5 and first.from_user.is_bot
    assert [(e.type, e.offset, e.length) for e in first.entities] == [("bold", 0, 5)]
    assert first.reply_markup == KEYBOARD
    assert second.message_id == first.message_id + 1
    sent = api.sent_to(5)[0]
    assert sent.text == "<b>Hello</b> &amp; welcome" and sent.plain_text == "Hello & welcome"
    assert sent.parse_mode == "HTML" and sent.message_id == first.message_id
    assert sent.reply_markup == {
        "inline_keyboard": [[{"text": "Follow", "callback_data": "fol:42"}]]
    }
    assert sent.disable_notification and sent.link_preview_options == {"is_disabled": True}
    assert sent.method == "sendMessage" and sent.timestamp.tzinfo is not None
    assert api.calls("sendMessage")[1] == {"chat_id": "5", "text": "again"}


async def test_replies_quote_the_users_message(bot: Bot, api: FakeBotApi) -> None:
    await api.inject_message(-700, "/digest", user_id=1)
    [update] = await bot.get_updates()
    reply = await update.message.reply_text("Done")  # PTB quotes the message in groups
    assert reply.reply_to_message.message_id == update.message.message_id
    with pytest.raises(BadRequest, match="Message to be replied not found"):
        await bot.send_message(-700, "x", reply_to_message_id=999)


@pytest.mark.parametrize(
    ("html", "reason"),
    [
        ("a < b", 'Unsupported start tag "" at byte offset 2'),
        ("<script>x</script>", 'Unsupported start tag "script" at byte offset 0'),
        ("<b>unclosed", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("é <b", "Unclosed start tag at byte offset 3"),
    ],
)
async def test_invalid_html_is_refused_with_telegrams_reason(
    bot: Bot, html: str, reason: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        await bot.send_message(5, html, parse_mode="HTML")
    # PTB drops "Bad Request: " and capitalizes the rest, which lower-cases it.
    assert caught.value.message == f"Can't parse entities: {reason}".capitalize()


def test_telegram_html_gives_text_and_utf16_entities() -> None:
    text, entities = parse_telegram_html(
        '😀 <b>a<i>b</i></b> Tom & Jerry &#169;&nbsp;<span class="tg-spoiler">s</span> '
        '<a href="https://e.x/?a=1&amp;b=2">l</a><blockquote expandable>q</blockquote>'
        '<pre><code class="language-python">p</code></pre><code>c</code>'
    )
    assert text == "😀 ab Tom & Jerry ©&nbsp;s lqpc"
    assert entities == [
        {"offset": 3, "length": 2, "type": "bold"},
        {"offset": 4, "length": 1, "type": "italic"},
        {"offset": 25, "length": 1, "type": "spoiler"},
        {"offset": 27, "length": 1, "type": "text_link", "url": "https://e.x/?a=1&b=2"},
        {"offset": 28, "length": 1, "type": "expandable_blockquote"},
        {"offset": 29, "length": 1, "type": "pre", "language": "python"},
        {"offset": 30, "length": 1, "type": "code"},
    ]


async def test_length_is_counted_after_entities_in_utf16_units(bot: Bot) -> None:
    await bot.send_message(5, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
    await bot.send_message(5, "😀" * 2048)
    with pytest.raises(BadRequest, match="^Message is too long$"):
        await bot.send_message(5, "a" * 4097)
    with pytest.raises(BadRequest, match="^Message is too long$"):
        await bot.send_message(5, "😀" * 2049)  # 4098 UTF-16 code units


@pytest.mark.parametrize("text", ["", "   ", "<b> </b>"])
async def test_empty_text_is_refused(bot: Bot, api: FakeBotApi, text: str) -> None:
    with pytest.raises(BadRequest, match="^Message text is empty$"):
        await bot.send_message(5, text, parse_mode="HTML")
    assert api.sent == []


async def test_unknown_chat_is_not_found(bot: Bot, api: FakeBotApi) -> None:
    api.unknown_chats.add(77)
    with pytest.raises(BadRequest, match="^Chat not found$"):
        await bot.send_message(77, "hi")
    with pytest.raises(BadRequest, match="^Chat not found$"):
        await bot.get_chat(77)
    assert (await bot.get_chat(-700)).type == "group"


async def test_oversized_callback_data_is_refused(bot: Bot) -> None:
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x" * 65)]])
    with pytest.raises(BadRequest, match="Button_data_invalid"):
        await bot.send_message(5, "hi", reply_markup=markup)


# --- edits and buttons ------------------------------------------------------------------------


async def test_edits_change_the_message_like_telegram(bot: Bot, api: FakeBotApi) -> None:
    sent = await bot.send_message(5, "draft", reply_markup=KEYBOARD)
    edited = await bot.edit_message_text("<i>final</i>", 5, sent.message_id, parse_mode="HTML")
    assert edited.text == "final" and edited.reply_markup is None  # no markup given: removed
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("<i>final</i>", 5, sent.message_id, parse_mode="HTML")
    again = await bot.edit_message_reply_markup(5, sent.message_id, reply_markup=KEYBOARD)
    assert again.reply_markup == KEYBOARD and again.text == "final"
    with pytest.raises(BadRequest, match="Message to edit not found"):
        await bot.edit_message_text("x", 5, 999)
    assert [m.method for m in api.sent_to(5)] == [
        "sendMessage",
        "editMessageText",
        "editMessageReplyMarkup",
    ]


async def test_callback_queries_are_delivered_and_answered_once(bot: Bot, api: FakeBotApi) -> None:
    sent = await bot.send_message(5, "pick", reply_markup=KEYBOARD)
    await api.inject_callback_query(5, 5, "fol:42")
    [update] = await bot.get_updates()
    query = update.callback_query
    assert query.data == "fol:42" and query.from_user.id == 5
    assert query.message.message_id == sent.message_id and query.message.text == "pick"
    assert await query.answer("Following")
    assert api.callback_answers == [{"callback_query_id": query.id, "text": "Following"}]
    with pytest.raises(BadRequest, match="Query is too old"):
        await query.answer("twice")


# --- faults -----------------------------------------------------------------------------------


async def test_429_becomes_retry_after_once(bot: Bot, api: FakeBotApi) -> None:
    api.rate_limit("sendMessage", 3)
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(5, "hi")
    assert seconds(caught.value.retry_after) == 3
    await bot.send_message(5, "hi")  # only the next call failed
    assert len(api.sent_to(5)) == 1 and len(api.calls("sendMessage")) == 2


async def test_blocked_chat_is_forbidden_until_unblocked(bot: Bot, api: FakeBotApi) -> None:
    api.block(9)
    api.block(-700)
    for _ in range(2):
        with pytest.raises(Forbidden, match="^Forbidden: bot was blocked by the user$"):
            await bot.send_message(9, "hi")
    with pytest.raises(Forbidden, match="kicked from the group chat"):
        await bot.send_message(-700, "hi")
    api.unblock(9)
    await bot.send_message(9, "hi")
    assert [m.chat_id for m in api.sent] == [9]


async def test_a_forbidden_fault_is_consumed_by_one_call(bot: Bot, api: FakeBotApi) -> None:
    api.forbid("sendMessage", chat_id=9)
    await bot.send_message(8, "other chat")
    with pytest.raises(Forbidden, match="blocked by the user"):
        await bot.send_message(9, "hi")
    await bot.send_message(9, "hi")


async def test_migration_error_carries_the_new_chat(bot: Bot, api: FakeBotApi) -> None:
    api.migrate_chat(-100, -1001234567890)
    with pytest.raises(ChatMigrated) as caught:
        await bot.send_message(-100, "hi")
    assert caught.value.new_chat_id == -1001234567890
    await bot.send_message(-1001234567890, "hi")


async def test_server_error_is_a_network_error(bot: Bot, api: FakeBotApi) -> None:
    api.server_error("sendMessage", 502)
    api.server_error("sendMessage", 500)
    with pytest.raises(NetworkError, match="^Bad Gateway$"):
        await bot.send_message(5, "hi")
    with pytest.raises(NetworkError, match="Internal Server Error"):
        await bot.send_message(5, "hi")
    assert api.sent == []


async def test_dropped_connection_is_a_network_error(bot: Bot, api: FakeBotApi) -> None:
    api.drop("sendMessage")
    with pytest.raises(NetworkError):
        await bot.send_message(5, "lost on the way")
    api.drop("sendMessage", processed=True)
    with pytest.raises(NetworkError):
        await bot.send_message(5, "delivered, answer lost")
    assert [m.text for m in api.sent_to(5)] == ["delivered, answer lost"]


async def test_a_slow_answer_times_the_client_out(api: FakeBotApi) -> None:
    api.delay("sendMessage", 2)
    request = HTTPXRequest(read_timeout=0.2)
    async with Bot(api.token, base_url=api.bot_base_url, request=request) as bot:
        with pytest.raises(TimedOut):
            await bot.send_message(5, "slow")
        await bot.send_message(5, "fast")


async def test_faults_match_only_their_method_and_chat(bot: Bot, api: FakeBotApi) -> None:
    api.fail("sendMessage", 400, "Bad Request: custom", chat_id=1, times=2)
    await bot.get_me()
    await bot.send_message(2, "fine")
    for _ in range(2):
        with pytest.raises(BadRequest, match="^Custom$"):
            await bot.send_message(1, "refused")
    await bot.send_message(1, "fine")


# --- updates ----------------------------------------------------------------------------------


async def test_long_polling_returns_as_soon_as_an_update_arrives(bot: Bot, api: FakeBotApi) -> None:
    started = time.monotonic()
    task = asyncio.create_task(bot.get_updates(timeout=10))
    await api.wait_for(lambda: len(api.calls("getUpdates")) == 1)
    update_id = await api.inject_message(5, "/start@storywire_test_bot now")
    [update] = await asyncio.wait_for(task, 3)
    assert time.monotonic() - started < 3
    assert update.update_id == update_id and update.message.text == "/start@storywire_test_bot now"
    [entity] = update.message.entities
    assert (entity.type, entity.offset, entity.length) == ("bot_command", 0, 25)


async def test_long_polling_waits_out_its_timeout_when_nothing_comes(bot: Bot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert 0.9 <= time.monotonic() - started < 3


async def test_offsets_confirm_updates_and_limit_caps_them(bot: Bot, api: FakeBotApi) -> None:
    first = await api.inject_message(5, "one")
    await api.inject_message(5, "two")
    await api.inject_message(5, "three")
    assert [u.message.text for u in await bot.get_updates(limit=2)] == ["one", "two"]
    assert len(await bot.get_updates()) == 3  # nothing confirmed yet
    rest = await bot.get_updates(offset=first + 1)
    assert [u.message.text for u in rest] == ["two", "three"]
    assert [u.message.text for u in await bot.get_updates()] == ["two", "three"]
    assert [u.message.text for u in await bot.get_updates(offset=-1)] == ["three"]
    assert [u.message.text for u in await bot.get_updates()] == ["three"]


async def test_allowed_updates_filter_and_persist(bot: Bot, api: FakeBotApi) -> None:
    await api.inject_message(5, "hi")
    pressed = await api.inject_callback_query(5, 5, "x")
    [update] = await bot.get_updates(allowed_updates=["callback_query"])
    assert update.update_id == pressed and update.callback_query.data == "x"
    await api.inject_message(5, "still filtered")
    assert await bot.get_updates(offset=pressed + 1) == ()  # the choice persists
    await api.inject_message(5, "all again")
    assert [u.message.text for u in await bot.get_updates(allowed_updates=[])] == ["all again"]


async def test_a_second_poller_ends_the_first_with_conflict(bot: Bot, api: FakeBotApi) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=10))
    await api.wait_for(lambda: len(api.calls("getUpdates")) == 1)
    async with Bot(api.token, base_url=api.bot_base_url) as second_instance:
        assert await second_instance.get_updates() == ()
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await asyncio.wait_for(first, 3)


async def test_a_webhook_blocks_polling_until_deleted(bot: Bot, api: FakeBotApi) -> None:
    await bot.set_webhook("https://bot.example/hook")
    assert (await bot.get_webhook_info()).url == "https://bot.example/hook"
    with pytest.raises(Conflict, match="webhook is active"):
        await bot.get_updates()
    await api.inject_message(5, "pending")
    await bot.delete_webhook(drop_pending_updates=True)
    assert await bot.get_updates() == ()


async def test_membership_and_migration_updates(bot: Bot, api: FakeBotApi) -> None:
    added = await api.inject_my_chat_member(-700, 1, "left", "member", "group")
    migrated = await api.inject_migration(-700, -1009876543210)
    updates = await bot.get_updates()
    assert [u.update_id for u in updates] == [added, migrated, migrated + 1]
    change = updates[0].my_chat_member
    assert change.chat.type == "group" and change.from_user.id == 1
    assert (change.old_chat_member.status, change.new_chat_member.status) == ("left", "member")
    assert change.new_chat_member.user.id == bot.id
    assert updates[1].message.migrate_to_chat_id == -1009876543210
    assert updates[2].message.chat.type == "supergroup"
    assert updates[2].message.migrate_from_chat_id == -700
    with pytest.raises(ChatMigrated):
        await bot.send_message(-700, "to the old group")


async def test_chat_member_status_is_configurable(bot: Bot, api: FakeBotApi) -> None:
    for user_id, status in enumerate(
        ["creator", "administrator", "restricted", "left", "kicked"], 1
    ):
        api.set_chat_member_status(-100, user_id, status)
        assert (await bot.get_chat_member(-100, user_id)).status == status
    assert (await bot.get_chat_member(-100, 99)).status == "member"


async def test_commands_are_kept_per_scope(bot: Bot, api: FakeBotApi) -> None:
    await bot.set_my_commands([BotCommand("start", "Start"), BotCommand("top", "Top stories")])
    await bot.set_my_commands(
        [BotCommand("digest", "Daily digest")], scope=BotCommandScopeAllGroupChats()
    )
    assert [c.command for c in await bot.get_my_commands()] == ["start", "top"]
    assert [c["command"] for c in api.commands] == ["start", "top"]
    groups = await bot.get_my_commands(scope=BotCommandScopeAllGroupChats())
    assert [c.command for c in groups] == ["digest"]
    await bot.delete_my_commands()
    assert await bot.get_my_commands() == ()
    with pytest.raises(BadRequest, match="Bot_command_invalid"):
        await bot.set_my_commands([BotCommand("Bad-Name", "x")])


async def test_waiting_for_messages_times_out_saying_what_came(bot: Bot, api: FakeBotApi) -> None:
    await bot.send_message(5, "only one")
    with pytest.raises(
        TimeoutError, match=r"waited for 2 messages to chat 5, got 1: \['only one'\]"
    ):
        await api.wait_for_messages(2, chat_id=5, within=0.2)


# --- a real Application ---------------------------------------------------------------------


async def test_an_application_answers_start_over_long_polling(api: FakeBotApi) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.effective_message.reply_html(
            f"<b>Hello</b>, {update.effective_user.first_name}"
        )

    application: Application = (
        ApplicationBuilder()
        .token(api.token)
        .base_url(api.bot_base_url)
        .base_file_url(api.file_base_url)
        .build()
    )
    application.add_handler(CommandHandler("start", start))
    async with application:
        await application.start()
        assert application.updater is not None
        await application.updater.start_polling(poll_interval=0, timeout=5)
        await api.inject_message(501, "/start")
        await api.inject_message(-700, "/start@storywire_test_bot", user_id=7)
        await api.inject_message(-700, "/start@some_other_bot", user_id=7)
        [private] = await api.wait_for_messages(1, chat_id=501)
        [group] = await api.wait_for_messages(1, chat_id=-700)
        await application.updater.stop()
        await application.stop()
    assert private.plain_text == "Hello, User501" and private.parse_mode == "HTML"
    assert group.plain_text == "Hello, User7"
    methods = [c.method for c in api.requests]
    assert methods[:3] == ["getMe", "deleteWebhook", "getUpdates"]
    # On stop the updater confirms what it handled, so a restart does not see it again.
    last = api.calls("getUpdates")[-1]
    assert int(last["offset"]) == 4 and last["timeout"] == "0"
