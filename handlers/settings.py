"""/digest and /timezone: the chat's daily digest (group admins only, in groups)."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application

from bot import following as svc
from bot.app import StorywireContext
from handlers.common import argument_text, command, esc, may_change_chat_settings, reply, run_db

DIGEST_USAGE = "Use /digest on, /digest off, or /digest HH:MM (24-hour, in this chat's time zone)."


def describe(setting: svc.DigestSetting) -> str:
    if not setting.enabled:
        return f"The daily digest is off. Time zone: {esc(setting.timezone)}."
    return f"The daily digest comes at {esc(setting.time)} ({esc(setting.timezone)})."


async def digest(update: Update, context: StorywireContext) -> None:
    s = context.services
    chat_id = update.effective_chat.id  # type: ignore[union-attr]
    text = argument_text(context).lower()
    if not text:
        current = await run_db(svc.digest_setting, s.engine, chat_id)
        await reply(update, (describe(current) + "\n" if current else "") + DIGEST_USAGE)
        return
    if len(text) > 20:
        await reply(update, DIGEST_USAGE)
        return
    if not await may_change_chat_settings(update, context):
        await reply(update, "Only this group's admins can change its daily digest.")
        return
    try:
        if text in ("on", "off"):
            result = await run_db(
                svc.change_digest,
                s.engine,
                chat_id,
                enabled=text == "on",
                time_text=None,
                now=s.now(),
            )
        else:
            result = await run_db(
                svc.change_digest, s.engine, chat_id, enabled=True, time_text=text, now=s.now()
            )
    except ValueError as exc:
        await reply(update, f"{esc(exc)}. {DIGEST_USAGE}")
        return
    await reply(update, describe(result))


async def timezone(update: Update, context: StorywireContext) -> None:
    s = context.services
    chat_id = update.effective_chat.id  # type: ignore[union-attr]
    text = argument_text(context)
    if not text:
        current = await run_db(svc.digest_setting, s.engine, chat_id)
        zone = current.timezone if current else "UTC"
        await reply(
            update,
            f"Time zone: {esc(zone)}. Change it with /timezone Area/City, e.g. /timezone Europe/Berlin.",
        )
        return
    if not await may_change_chat_settings(update, context):
        await reply(update, "Only this group's admins can change its time zone.")
        return
    try:
        result = await run_db(svc.change_timezone, s.engine, chat_id, text, now=s.now())
    except ValueError as exc:
        await reply(update, esc(exc))
        return
    await reply(update, f"Time zone set to {esc(result.timezone)}. " + describe(result))


def register(application: Application) -> None:
    application.add_handler(command("digest", digest))
    application.add_handler(command("timezone", timezone))
