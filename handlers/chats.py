"""Chat lifecycle: first contact, the bot added to or removed from a group, blocks, migrations."""

from __future__ import annotations

import logging

from telegram import Chat, ChatMemberUpdated, Update
from telegram.constants import ChatMemberStatus
from telegram.ext import Application, ChatMemberHandler, MessageHandler, TypeHandler, filters

from bot import following as svc
from bot.app import StorywireContext
from handlers.common import run_db
from store.chats import migrate_chat, set_chat_status
from store.db import session_scope
from store.models import ChatStatus

log = logging.getLogger(__name__)

GONE = (ChatMemberStatus.LEFT, ChatMemberStatus.BANNED)


async def record(update: Update, context: StorywireContext) -> None:
    """Every update from a chat records it (first contact) before other handlers run."""
    chat = update.effective_chat
    if chat is None or update.my_chat_member is not None:
        return
    if update.effective_message is not None and update.effective_message.migrate_to_chat_id:
        return
    await _record(context, chat)


async def _record(context: StorywireContext, chat: Chat) -> None:
    s = context.services
    await run_db(
        svc.record_chat,
        s.engine,
        chat.id,
        type=chat.type,
        title=chat.title,
        username=chat.username,
        now=s.now(),
        default_timezone=s.settings.default_timezone,
    )


def _set_status(engine, chat_id: int, status: str, now) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        set_chat_status(chat_id, status, session=session, now=now)


async def my_chat_member(update: Update, context: StorywireContext) -> None:
    change: ChatMemberUpdated | None = update.my_chat_member
    if change is None:
        return
    s = context.services
    chat = change.chat
    new = change.new_chat_member.status
    if new in GONE:
        status = ChatStatus.BLOCKED if chat.type == "private" else ChatStatus.LEFT
        log.info("chat %s: bot %s; pausing deliveries", chat.id, new)
        await run_db(_set_status, s.engine, chat.id, status, s.now())
        return
    await _record(context, chat)
    # Groups only: a channel's posts are not commands, and a hello there reaches every subscriber.
    if change.old_chat_member.status in GONE and chat.type in (Chat.GROUP, Chat.SUPERGROUP):
        await context.bot.send_message(
            chat.id,
            "Hello! I follow news stories. Admins can turn on a daily digest with /digest 08:00 "
            "and set the time zone with /timezone Area/City. /help lists everything.",
        )


def _migrate(engine, old_id: int, new_id: int, now) -> None:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        migrate_chat(old_id, new_id, session=session, now=now)


async def migrated(update: Update, context: StorywireContext) -> None:
    message = update.effective_message
    if message is None:
        return
    s = context.services
    if message.migrate_to_chat_id:
        old_id, new_id = message.chat.id, message.migrate_to_chat_id
    elif message.migrate_from_chat_id:
        old_id, new_id = message.migrate_from_chat_id, message.chat.id
    else:
        return
    log.info("group %s became supergroup %s; moving its settings and follows", old_id, new_id)
    await run_db(_migrate, s.engine, old_id, new_id, s.now())


def register(application: Application) -> None:
    application.add_handler(TypeHandler(Update, record), group=-1)
    application.add_handler(ChatMemberHandler(my_chat_member, ChatMemberHandler.MY_CHAT_MEMBER))
    application.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, migrated))
