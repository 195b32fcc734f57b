"""/follow, /unfollow and /following."""

from __future__ import annotations

from datetime import timedelta

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import Application

from bot import following as svc
from bot.app import StorywireContext
from handlers.common import command, esc, parse_story_id, reply, required_argument, run_db

FOLLOW_USAGE = (
    "Use /follow ID to follow a story (ids are in /top), or /follow words to follow a topic: "
    "new stories whose headline matches are followed for you."
)


def ended_text(story: svc.StoryCard, window: timedelta) -> str:
    hours = round(window.total_seconds() / 3600)
    return (
        f"<b>{esc(story.headline)}</b> has had no new articles since "
        f"{story.last_published_at:%d %b %Y}, and only stories with news in the last {hours} "
        "hours get new articles, so it will not be updated. To hear of the next story like it, "
        "follow its words: /follow words."
    )


async def follow(update: Update, context: StorywireContext) -> None:
    text = await required_argument(update, context, usage=FOLLOW_USAGE)
    if text is None:
        return
    s = context.services
    chat_id = update.effective_chat.id  # type: ignore[union-attr]
    story_id = parse_story_id(text)
    if story_id is not None:
        result = await run_db(
            svc.follow_story_id, s.engine, chat_id, story_id, now=s.now(), window=s.story_window
        )
        if result.story is None:
            await reply(update, f"There is no story {story_id}. See /top for current ones.")
        elif result.ended:
            await reply(update, ended_text(result.story, s.story_window))
        elif result.created:
            await reply(
                update,
                f"Following <b>{esc(result.story.headline)}</b>. You will get a digest when "
                f"new articles arrive. /unfollow {result.story.id} to stop.",
            )
        else:
            await reply(update, f"This chat already follows <b>{esc(result.story.headline)}</b>.")
        return
    result = await run_db(svc.follow_topic, s.engine, chat_id, text, now=s.now())
    if result.topic is None:
        await reply(update, "Those words are too common to follow; add a name or a place.")
        return
    head = (
        f"Following the topic “{esc(result.topic)}”: new stories that match are followed "
        "automatically and you will be told."
        if result.created
        else f"This chat already follows the topic “{esc(result.topic)}”."
    )
    lines = [head]
    if result.matched_now:
        lines.append("\nStories matching it now (follow them too with the buttons):")
        lines += [f"• {esc(c.headline)} · /story {c.id}" for c in result.matched_now]
        markup = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton(f"Follow #{c.id}", callback_data=f"fol:{c.id}")]
                for c in result.matched_now
            ]
        )
        await reply(update, "\n".join(lines), reply_markup=markup)
        return
    await reply(update, "\n".join(lines))


async def unfollow(update: Update, context: StorywireContext) -> None:
    text = await required_argument(
        update, context, usage="Use /unfollow ID or /unfollow words (see /following)."
    )
    if text is None:
        return
    chat_id = update.effective_chat.id  # type: ignore[union-attr]
    target = str(parse_story_id(text)) if parse_story_id(text) is not None else text
    done = await run_db(
        svc.unfollow, context.services.engine, chat_id, target, now=context.services.now()
    )
    if done is None:
        await reply(update, f"This chat does not follow “{esc(text)}”. See /following.")
    elif not done.topic:
        await reply(update, f"Unfollowed {esc(done.name)}.")
    elif done.stories:
        stories = "1 story" if done.stories == 1 else f"{done.stories} stories"
        await reply(update, f"Unfollowed topic “{esc(done.name)}” and {stories} it followed.")
    else:
        await reply(update, f"Unfollowed topic “{esc(done.name)}”.")


async def following(update: Update, context: StorywireContext) -> None:
    chat_id = update.effective_chat.id  # type: ignore[union-attr]
    state = await run_db(svc.following, context.services.engine, chat_id)
    if not state.stories and not state.topics:
        await reply(update, "This chat follows nothing yet. Try /top, then /follow ID.")
        return
    lines = []
    if state.stories:
        lines.append("<b>Stories</b>")
        lines += [f"• {esc(c.headline)} · /story {c.id}" for c in state.stories[:30]]
        if len(state.stories) > 30:
            lines.append(f"…and {len(state.stories) - 30} more")
    if state.topics:
        lines.append("<b>Topics</b>")
        lines += [f"• {esc(t)}" for t in state.topics]
    markup = (
        InlineKeyboardMarkup(
            [
                [InlineKeyboardButton(f"Unfollow #{c.id}", callback_data=f"unf:{c.id}")]
                for c in state.stories[:10]
            ]
        )
        if state.stories
        else None
    )
    await reply(update, "\n".join(lines), reply_markup=markup)


def register(application: Application) -> None:
    application.add_handler(command("follow", follow))
    application.add_handler(command("unfollow", unfollow))
    application.add_handler(command("following", following))
