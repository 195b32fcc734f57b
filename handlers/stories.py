"""/top, /story and /search."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import Application

from bot import following as svc
from bot.app import StorywireContext
from bot.digests.render import plural
from handlers.common import (
    argument_text,
    command,
    esc,
    parse_story_id,
    reply,
    required_argument,
    run_db,
)

TOP_DEFAULT, TOP_MAX = 5, 10


def card_line(number: int, card: svc.StoryCard) -> str:
    if card.day_articles is not None:  # /top: ranked by the last 24 hours, so show those
        counts = (
            f"{plural(card.day_articles, 'article')} from {plural(card.day_sources or 0, 'source')}"
            f" in 24 h ({card.article_count} in all)"
        )
    else:
        counts = f"{plural(card.article_count, 'article')}, {plural(card.source_count, 'source')}"
    return f"<b>{number}.</b> {esc(card.headline)}\n    {counts} · /story {card.id}"


def follow_keyboard(cards: list[svc.StoryCard]) -> InlineKeyboardMarkup | None:
    if not cards:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton(f"Follow #{c.id}", callback_data=f"fol:{c.id}")] for c in cards]
    )


async def top(update: Update, context: StorywireContext) -> None:
    text = argument_text(context)
    limit = TOP_DEFAULT
    if text:
        if not text.isdecimal() or not 1 <= int(text) <= TOP_MAX:
            await reply(update, f"Use /top or /top N with N from 1 to {TOP_MAX}.")
            return
        limit = int(text)
    s = context.services
    cards = await run_db(svc.top, s.engine, now=s.now(), limit=limit)
    if not cards:
        await reply(update, "No stories in the last 24 hours yet. Try again after the next poll.")
        return
    lines = ["<b>Top stories of the last 24 hours</b>"]
    lines += [card_line(i, c) for i, c in enumerate(cards, start=1)]
    await reply(update, "\n".join(lines), reply_markup=follow_keyboard(cards))


def story_text(detail: svc.StoryDetail) -> str:
    card = detail.card
    lines = [
        f"<b>{esc(card.headline)}</b>",
        f"Story {card.id}: {plural(card.article_count, 'article')} from "
        f"{plural(card.source_count, 'source')}",
        "",
    ]
    for a in detail.latest:
        label = esc(a.title)
        if a.url and a.url.startswith(("http://", "https://")):
            label = f'<a href="{esc(a.url).replace(chr(34), "&quot;")}">{label}</a>'
        lines.append(f"• {label} ({esc(a.source or 'unknown')})")
    return "\n".join(lines)


def story_keyboard(story_id: int, following: bool) -> InlineKeyboardMarkup:
    button = (
        InlineKeyboardButton("Unfollow", callback_data=f"unf:{story_id}")
        if following
        else InlineKeyboardButton("Follow", callback_data=f"fol:{story_id}")
    )
    return InlineKeyboardMarkup([[button]])


async def story(update: Update, context: StorywireContext) -> None:
    text = await required_argument(
        update, context, usage="Use /story ID, e.g. /story 42 (ids are in /top)."
    )
    if text is None:
        return
    story_id = parse_story_id(text)
    if story_id is None:
        await reply(
            update, "A story id is a number, e.g. /story 42. To find one, use /search words."
        )
        return
    chat_id = update.effective_chat.id  # type: ignore[union-attr]
    detail = await run_db(svc.story_detail, context.services.engine, story_id, chat_id=chat_id)
    if detail is None:
        await reply(update, f"There is no story {story_id}. See /top for current ones.")
        return
    await reply(
        update, story_text(detail), reply_markup=story_keyboard(detail.card.id, detail.following)
    )


async def search(update: Update, context: StorywireContext) -> None:
    words = await required_argument(
        update, context, usage="Use /search words, e.g. /search Nara summit"
    )
    if words is None:
        return
    s = context.services
    cards = await run_db(svc.search, s.engine, words, now=s.now())
    if not cards:
        await reply(update, f"No recent story matches “{esc(words)}”.")
        return
    lines = [f"<b>Stories matching “{esc(words)}”</b>"]
    lines += [card_line(i, c) for i, c in enumerate(cards, start=1)]
    await reply(update, "\n".join(lines), reply_markup=follow_keyboard(cards))


def register(application: Application) -> None:
    application.add_handler(command("top", top))
    application.add_handler(command("story", story))
    application.add_handler(command("search", search))
