"""Run the real Storywire Application in-process against a loopback Bot API server.

The same `build_application` as `storywire run`, started the way `run_polling` starts it
(initialize, post_init, start, updater polling) and stopped the same way, so tests exercise the
real handlers, jobs, rate limiter and outbox sender over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from telegram import Update
from telegram.ext import Application

from bot.app import Services, build_application
from bot.config import Settings


def e2e_settings(api_url: str, database_url: str, **overrides: Any) -> Settings:
    """Settings for a test: loopback Bot API, fast ticks, no .env file."""
    values: dict[str, Any] = {
        "telegram_bot_token": "123456:TEST-TOKEN",
        "telegram_api_base_url": api_url,
        "database_url": database_url,
        "poll_tick_seconds": 0.2,
        "delivery_tick_seconds": 0.2,
        "digest_quiet_minutes": 0,
        "digest_max_wait_minutes": 1,
        "poll_interval_seconds": 30,
        "rate_limit_max_retries": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_bot(
    settings: Settings, *, clock: Callable[[], datetime] | None = None
) -> AsyncIterator[Application]:
    application = build_application(settings, clock=clock)
    await application.initialize()
    if application.post_init is not None:
        await application.post_init(application)
    await application.start()
    assert application.updater is not None
    await application.updater.start_polling(
        poll_interval=0.0, timeout=1, allowed_updates=Update.ALL_TYPES
    )
    try:
        yield application
    finally:
        if application.updater.running:
            await application.updater.stop()
        if application.running:
            await application.stop()
        if application.post_stop is not None:
            await application.post_stop(application)
        await application.shutdown()
        if application.post_shutdown is not None:
            await application.post_shutdown(application)


def services_of(application: Application) -> Services:
    return application.bot_data["services"]
