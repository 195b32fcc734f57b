"""/start and /help."""

from __future__ import annotations

from telegram import Update
from telegram.ext import Application

from bot.app import StorywireContext
from handlers.common import command, reply

HELP = (
    "<b>Storywire</b> follows news <i>stories</i>, not feeds. Articles from many outlets are "
    "grouped into stories; follow one and you get a short digest with sources whenever it moves.\n\n"
    "/top: today's top stories\n"
    "/story ID: one story and its latest articles\n"
    "/search words: find stories\n"
    "/follow ID or /follow words: follow a story, or keywords (future matching stories too)\n"
    "/following: what this chat follows\n"
    "/unfollow ID or words\n"
    "/digest on, off or HH:MM: a daily digest of the top stories for this chat\n"
    "/timezone Area/City: the time zone for that digest\n"
)


async def start(update: Update, context: StorywireContext) -> None:
    await reply(update, "Welcome! " + HELP)


async def help_command(update: Update, context: StorywireContext) -> None:
    await reply(update, HELP)


def register(application: Application) -> None:
    application.add_handler(command("start", start))
    application.add_handler(command("help", help_command))
