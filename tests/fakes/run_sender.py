"""A real sender process for crash tests: `python -m tests.fakes.run_sender API_URL TOKEN DB_URL`.

Drains the outbox one message at a time with a short lease, so a test can kill it mid-send.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from telegram import Bot

from bot.delivery import OutboxSender
from store.db import make_engine


async def main(api_url: str, token: str, database_url: str) -> None:
    engine = make_engine(database_url)
    async with Bot(token, base_url=f"{api_url}/bot") as bot:
        sender = OutboxSender(
            engine,
            bot,
            holder="crash-test-sender",
            lease_ttl=timedelta(seconds=2),
            per_chat_interval=0,
            concurrency=1,
        )
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while True:
            await sender.drain()
            await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
