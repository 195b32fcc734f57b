"""Inline buttons. Callback data is `verb:story_id`; anything else is answered politely."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from telegram import CallbackQuery, Update
from telegram.error import BadRequest
from telegram.ext import Application, CallbackQueryHandler

from bot import following as svc
from bot.app import StorywireContext
from handlers.common import esc, message_parts, run_db
from handlers.stories import story_keyboard, story_text
from store.db import session_scope
from store.follows import get_follow, mute_follow
from store.stories import resolve_story

log = logging.getLogger(__name__)

CALLBACK = re.compile(r"^(fol|unf|mute|story):(\d{1,12})$")
MUTE_FOR = timedelta(hours=24)


def _mute(engine, chat_id: int, story_id: int, until):  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        story = resolve_story(story_id, session=session)
        follow = story and get_follow(chat_id, story.id, session=session)  # type: ignore[arg-type]
        if follow is None:
            return False
        mute_follow(follow, until, session=session)
        return True


async def _answer(query: CallbackQuery, text: str | None = None) -> None:
    """Answer the button press; one too old to answer (pressed while the bot was down) has still
    been acted on, so the chat is told the rest as usual."""
    try:
        await query.answer(text)
    except BadRequest as exc:
        log.info("callback %s: could not answer: %s", query.data, exc.message)


def _topic_of(query: CallbackQuery) -> int | None:
    """The forum topic the pressed button's message sits in: the answer goes there too, as a
    command's reply does, not to the group's General topic."""
    message = query.message
    if message is None or not getattr(message, "is_topic_message", False):
        return None
    return getattr(message, "message_thread_id", None)


async def on_button(update: Update, context: StorywireContext) -> None:
    query = update.callback_query
    if query is None:
        return
    match = CALLBACK.match(query.data or "")
    chat = update.effective_chat
    if match is None or chat is None:
        await _answer(query, "This button has expired.")
        return
    verb, story_id = match.group(1), int(match.group(2))
    s = context.services
    if verb == "fol":
        result = await run_db(
            svc.follow_story_id, s.engine, chat.id, story_id, now=s.now(), window=s.story_window
        )
        if result.story is None:
            await _answer(query, "That story is no longer available.")
            return
        if result.ended:
            await _answer(query, "That story has ended: no new articles will join it.")
            return
        await _answer(query, "Following" if result.created else "Already following")
        if result.created and query.message is not None:
            await context.bot.send_message(
                chat.id,
                f"Following <b>{esc(result.story.headline)}</b>. /unfollow {result.story.id} to stop.",
                message_thread_id=_topic_of(query),
            )
        return
    if verb == "unf":
        done = await run_db(svc.unfollow, s.engine, chat.id, str(story_id), now=s.now())
        await _answer(query, "Unfollowed" if done else "You were not following that story")
        return
    if verb == "mute":
        ok = await run_db(_mute, s.engine, chat.id, story_id, s.now() + MUTE_FOR)
        await _answer(query, "Muted for 24 hours" if ok else "You are not following that story")
        return
    detail = await run_db(svc.story_detail, s.engine, story_id, chat_id=chat.id)
    if detail is None:
        await _answer(query, "That story is no longer available.")
        return
    *head, last = message_parts(story_text(detail))
    try:
        thread = _topic_of(query)
        for part in head:
            await context.bot.send_message(chat.id, part, message_thread_id=thread)
        await context.bot.send_message(
            chat.id,
            last,
            reply_markup=story_keyboard(detail.card.id, detail.following),
            message_thread_id=thread,
        )
    except BadRequest as exc:
        log.warning("chat %s: could not show story %s: %s", chat.id, story_id, exc.message)
        await _answer(query, f"Could not show the story: {exc.message}"[:190])
        return
    await _answer(query)


def register(application: Application) -> None:
    application.add_handler(CallbackQueryHandler(on_button))
