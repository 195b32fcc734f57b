"""Telegram in, replies out. Each module parses, calls `bot`/`store` services and answers."""

from __future__ import annotations

from telegram.ext import Application

from handlers import admin, callbacks, chats, follow, settings, start, stories


def register(application: Application) -> None:
    """Add every handler to the application."""
    for module in (chats, start, stories, follow, settings, admin, callbacks):
        module.register(application)
