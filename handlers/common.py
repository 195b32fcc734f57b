"""Small pieces every handler uses: services, argument limits, escaping, admin checks."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from telegram import Chat, Update
from telegram.constants import ChatMemberStatus
from telegram.error import TelegramError
from telegram.ext import CommandHandler, filters

from bot.app import Services, StorywireContext
from bot.digests.render import MAX_MESSAGE, telegram_length
from bot.following import MAX_STORY_ID_DIGITS

log = logging.getLogger(__name__)

MAX_ARGUMENT = 200
GROUP_ANONYMOUS_BOT = 1087968824  # Telegram's stand-in sender for anonymous group admins

T = TypeVar("T")


def esc(text: object) -> str:
    return html.escape(str(text), quote=False)


def services(context: StorywireContext) -> Services:
    return context.services


async def run_db(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Store work runs in a thread so the event loop keeps answering other chats."""
    return await asyncio.to_thread(func, *args, **kwargs)


def argument_text(context: StorywireContext) -> str:
    return " ".join(context.args or []).strip()


class BadArgument(ValueError):
    """Shown to the user as is (already safe text)."""


def checked_argument(context: StorywireContext, *, usage: str) -> str:
    text = argument_text(context)
    if not text:
        raise BadArgument(usage)
    if len(text) > MAX_ARGUMENT:
        raise BadArgument(f"That is too long: keep it under {MAX_ARGUMENT} characters.")
    return text


async def required_argument(update: Update, context: StorywireContext, *, usage: str) -> str | None:
    """The command's argument, or None after telling the user what to send instead."""
    try:
        return checked_argument(context, usage=usage)
    except BadArgument as exc:
        await reply(update, str(exc))
        return None


def parse_story_id(text: str) -> int | None:
    text = text.strip().lstrip("#")
    # isdecimal, not isdigit: isdigit() takes '²', which int() refuses
    if text.isdecimal() and len(text) <= MAX_STORY_ID_DIGITS:
        return int(text)
    return None


def message_parts(text: str) -> list[str]:
    """The text cut between lines into messages within Telegram's length limit.

    Every line a handler writes is whole HTML (tags closed on the line), and no line comes near
    the limit: headlines, titles and topics are stored at most a few hundred characters long.
    """
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        candidate = f"{current}\n{line}" if current else line
        if current and telegram_length(candidate) > MAX_MESSAGE:
            parts.append(current)
            current = line
        else:
            current = candidate
    parts.append(current)
    return parts


async def reply(update: Update, text: str, **kwargs: Any) -> None:
    """Answer in the chat; a long answer goes in several messages, the keyboard on the last."""
    message = update.effective_message
    if message is None:
        return
    *head, last = message_parts(text)
    for part in head:
        await message.reply_text(part)
    await message.reply_text(last, **kwargs)


async def may_change_chat_settings(update: Update, context: StorywireContext) -> bool:
    """Anyone in a private chat; in groups only the group's admins (asked with getChatMember)."""
    chat, user = update.effective_chat, update.effective_user
    if chat is None:
        return False
    if chat.type == Chat.PRIVATE:
        return True
    message = update.effective_message
    if (
        message is not None
        and message.sender_chat is not None
        and message.sender_chat.id == chat.id
    ):
        return True  # an anonymous admin posting as the group
    if user is None:
        return False
    if user.id == GROUP_ANONYMOUS_BOT:
        return True
    try:
        member = await context.bot.get_chat_member(chat.id, user.id)
    except TelegramError as exc:
        log.warning("chat %s: could not check admin status of %s: %s", chat.id, user.id, exc)
        return False
    return member.status in (ChatMemberStatus.OWNER, ChatMemberStatus.ADMINISTRATOR)


def is_bot_admin(update: Update, context: StorywireContext) -> bool:
    user = update.effective_user
    return user is not None and user.id in context.services.settings.admin_user_ids


def command(name: str, callback: Callable[..., Any]) -> CommandHandler:
    """A command handler for new messages only: an edited command is not run again (editing
    "/follow 1" into "/follow 2" to fix a typo would leave both followed)."""
    return CommandHandler(name, callback, filters=filters.UpdateType.MESSAGE)
