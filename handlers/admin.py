"""Bot admins (ADMIN_USER_IDS): /addfeed, /removefeed, /feeds."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application

from bot.app import StorywireContext
from bot.feeds.urls import feed_lookup_keys, validate_feed_url
from handlers.common import command, esc, is_bot_admin, reply, required_argument, run_db
from store.db import session_scope
from store.feeds import add_feed, enable_feed, find_feed, list_feeds_with_counts, remove_feed

NOT_ADMIN = "This command is for Storywire's operators."


def _add(engine, url: str, now) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Add the feed, or switch a disabled one back on; returns (id, what happened)."""
    with session_scope(engine) as session:
        existing = find_feed(url, session=session)
        if existing is None:
            return add_feed(url, session=session, now=now).id, "added"  # type: ignore[return-value]
        if enable_feed(existing, session=session, now=now):
            return existing.id, "re-enabled"  # type: ignore[return-value]
        return existing.id, "exists"  # type: ignore[return-value]


def _remove(engine, target: str):  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        found = (find_feed(key, session=session) for key in feed_lookup_keys(target))
        feed = next((f for f in found if f is not None), None)
        if feed is None:
            return None
        url = feed.url
        remove_feed(feed, session=session)
        return url


def _list(engine):  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return list_feeds_with_counts(session=session)


async def addfeed(update: Update, context: StorywireContext) -> None:
    if not is_bot_admin(update, context):
        await reply(update, NOT_ADMIN)
        return
    raw = await required_argument(update, context, usage="Use /addfeed URL")
    if raw is None:
        return
    try:
        url = validate_feed_url(raw)
    except ValueError as exc:
        await reply(update, f"That is not a feed URL: {esc(exc)}")
        return
    s = context.services
    feed_id, what = await run_db(_add, s.engine, url, s.now())
    if what == "exists":
        await reply(update, f"Already polling {esc(url)} (feed {feed_id}).")
    else:
        await reply(update, f"Feed {feed_id} {what}: {esc(url)}. It is polled on the next tick.")


async def removefeed(update: Update, context: StorywireContext) -> None:
    if not is_bot_admin(update, context):
        await reply(update, NOT_ADMIN)
        return
    target = await required_argument(update, context, usage="Use /removefeed ID (see /feeds)")
    if target is None:
        return
    url = await run_db(_remove, context.services.engine, target)
    if url is None:
        await reply(update, f"No feed {esc(target)}. See /feeds.")
    else:
        await reply(update, f"Removed {esc(url)}. Its articles stay in their stories.")


async def feeds(update: Update, context: StorywireContext) -> None:
    if not is_bot_admin(update, context):
        await reply(update, NOT_ADMIN)
        return
    rows = await run_db(_list, context.services.engine)
    if not rows:
        await reply(update, "No feeds yet. Add one with /addfeed URL.")
        return
    lines = ["<b>Feeds</b>"]
    for row in rows[:50]:
        f = row.feed
        status = f.status if not f.last_error else f"{f.status}, error: {f.last_error[:80]}"
        lines.append(
            f"{f.id}. {esc(f.display_name[:80])} · {row.article_count} articles · {esc(status)}"
        )
    if len(rows) > 50:
        lines.append(f"…and {len(rows) - 50} more (storywire feeds list shows all)")
    await reply(update, "\n".join(lines))


def register(application: Application) -> None:
    application.add_handler(command("addfeed", addfeed))
    application.add_handler(command("removefeed", removefeed))
    application.add_handler(command("feeds", feeds))
