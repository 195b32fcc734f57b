"""Drains the outbox to Telegram and turns each Telegram answer into a decision.

Only the holder of the `sender` lease sends, so two running instances never send the same row.
A row is marked sent only after Telegram accepted it. The overall (30/s) and per-group (20/min)
limits are the AIORateLimiter's job; the per-chat pace (one message a second) is kept here.

| Telegram says                   | decision                                                   |
|---------------------------------|------------------------------------------------------------|
| ok                              | sent                                                       |
| RetryAfter(n)                   | retry the row in n seconds (the rate limiter already waited)|
| TimedOut / NetworkError / 5xx   | retry with exponential backoff (capped at 15 min), forever |
| ChatMigrated(new_id)            | move the chat's settings, follows and queue; resend there  |
| Forbidden (blocked, kicked)     | chat paused, its rows parked until it comes back           |
| BadRequest "can't parse ..."    | resend the same text as plain text                         |
| BadRequest "chat not found"     | chat marked left, rows parked                              |
| other BadRequest                | dead: logged with the row id, never retried                |
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from telegram import Bot, InlineKeyboardMarkup, LinkPreviewOptions
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter

from bot.digests.render import plain_fallback
from bot.leases import KeptLease, renewing
from store.chats import migrate_chat, set_chat_status
from store.db import session_scope
from store.leases import acquire_lease, process_holder, release_lease
from store.models import ChatStatus, OutboxMessage
from store.outbox import (
    claim,
    claimable,
    fall_back_to_plain,
    hold_claim,
    mark_dead,
    mark_retry,
    mark_sent,
    park_chat,
    release_stale_claims,
)

__all__ = ["OutboxSender", "DrainSummary"]

log = logging.getLogger(__name__)

SENDER_LEASE = "sender"
MAX_BACKOFF = timedelta(minutes=15)


@dataclass(slots=True)
class DrainSummary:
    sent: int = 0
    retried: int = 0
    parked: int = 0
    dead: int = 0
    skipped_lease: bool = False


def _retry_delay(attempts: int) -> timedelta:
    return min(timedelta(seconds=5) * (2 ** min(max(attempts - 1, 0), 10)), MAX_BACKOFF)


class OutboxSender:
    """Sends due outbox rows in order per chat. `drain()` is safe to call from several ticks."""

    def __init__(
        self,
        engine: Engine,
        bot: Bot,
        *,
        holder: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        claim_ttl: timedelta = timedelta(seconds=120),
        lease_ttl: timedelta = timedelta(seconds=30),
        per_chat_interval: float = 1.0,
        concurrency: int = 30,
    ) -> None:
        self._engine = engine
        self._bot = bot
        self._holder = holder or process_holder()
        self._clock = clock
        self._claim_ttl = claim_ttl
        self._lease_ttl = lease_ttl
        self._per_chat_interval = per_chat_interval
        self._gate = asyncio.Semaphore(concurrency)
        self._last_sent: dict[int, float] = {}
        self._has_lease = False
        self._kept: KeptLease | None = None  # the lease renewal of the round being sent
        self._lease_until: datetime | None = None  # when our latest take of the lease runs out
        self._draining = asyncio.Lock()

    @property
    def holder(self) -> str:
        return self._holder

    async def _take_lease(self) -> bool:
        now = self._clock()
        got = await asyncio.to_thread(
            acquire_lease,
            self._engine,
            SENDER_LEASE,
            self._holder,
            ttl=self._lease_ttl,
            now=now,
        )
        if got:
            self._lease_until = now + self._lease_ttl
        if got and not self._has_lease:
            # We hold the only sender lease: claims by anyone else belong to a dead process.
            freed = await asyncio.to_thread(release_stale_claims, self._engine, holder=self._holder)
            if freed:
                log.warning("released %d outbox rows claimed by a sender that is gone", freed)
        self._has_lease = got
        return got

    def _lease_surely_held(self) -> bool:
        if self._kept is not None and self._kept.lapsed:
            # Another sender held the lease in between and may have sent what we claimed: our
            # lease runs again, but our claims must each be checked.
            return False
        renewed = self._kept.until if self._kept is not None else None
        until = max(self._lease_until, renewed) if renewed else self._lease_until
        return until is not None and self._clock() < until - self._lease_ttl / 3

    async def release(self) -> None:
        if self._has_lease:
            await asyncio.to_thread(release_lease, self._engine, SENDER_LEASE, self._holder)
            self._has_lease = False

    async def drain(self, *, max_rounds: int | None = None) -> DrainSummary:
        """Send everything that is due now; returns when nothing due is left."""
        summary = DrainSummary()
        if self._draining.locked():
            return summary
        async with self._draining:
            rounds = 0
            while max_rounds is None or rounds < max_rounds:
                rounds += 1
                if not await self._take_lease():
                    summary.skipped_lease = True
                    return summary
                ids = await asyncio.to_thread(claimable, self._engine, now=self._clock(), limit=200)
                if not ids:
                    return summary
                # A send can outlast the lease (the rate limiter waits out RetryAfter): renew it
                # meanwhile, or a second instance would take it over and send these rows again.
                keep = renewing(
                    self._engine,
                    SENDER_LEASE,
                    self._holder,
                    ttl=self._lease_ttl,
                    clock=self._clock,
                )
                async with keep as self._kept:
                    results = await asyncio.gather(*(self._send_one(row_id) for row_id in ids))
                if self._kept.lost:
                    self._has_lease = False
                for outcome in results:
                    if outcome is not None:
                        setattr(summary, outcome, getattr(summary, outcome) + 1)
                if all(r is None for r in results):
                    return summary  # everything due is claimed elsewhere or paced
        return summary

    async def _pace(self, chat_id: int) -> None:
        loop = asyncio.get_running_loop()
        last = self._last_sent.get(chat_id)
        if last is not None:
            wait = self._per_chat_interval - (loop.time() - last)
            if wait > 0:
                await asyncio.sleep(wait)
        self._last_sent[chat_id] = loop.time()

    async def _send_one(self, row_id: int) -> str | None:
        row = await asyncio.to_thread(
            claim, self._engine, row_id, self._holder, now=self._clock(), ttl=self._claim_ttl
        )
        if row is None:
            return None
        async with self._gate:
            await self._pace(row.chat_id)
            if self._kept is not None and self._kept.lost:
                # Another instance holds the lease now and will send what we claimed.
                return None
            # The renewal says so only at its next turn: until then, a sender that took the lease
            # over (our renewals did not land in time) may have released and sent these rows.
            # While the lease surely still runs, no one can have: skip the round trip then.
            if self._lease_surely_held():
                return await self._deliver(row)
            held = await asyncio.to_thread(
                hold_claim,
                self._engine,
                row.id,
                self._holder,
                now=self._clock(),
                ttl=self._claim_ttl,
            )
            if not held:
                log.warning("chat %s: row %s was taken over by another sender", row.chat_id, row.id)
                return None
            return await self._deliver(row)

    async def _deliver(self, row: OutboxMessage) -> str:
        markup = (
            InlineKeyboardMarkup.de_json(json.loads(row.reply_markup), self._bot)
            if row.reply_markup
            else None
        )
        try:
            message = await self._bot.send_message(
                chat_id=row.chat_id,
                text=row.text,
                parse_mode=row.parse_mode,
                reply_markup=markup,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            )
        except RetryAfter as exc:
            delay = exc.retry_after
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
            log.warning(
                "chat %s: flood limit, row %s retried in %.0fs", row.chat_id, row.id, seconds
            )
            await self._retry(row, f"RetryAfter {seconds:.0f}s", timedelta(seconds=seconds))
            return "retried"
        except ChatMigrated as exc:
            log.info("chat %s migrated to %s; moving it", row.chat_id, exc.new_chat_id)
            await asyncio.to_thread(self._migrate, row.chat_id, exc.new_chat_id)
            await self._retry(row, f"migrated to {exc.new_chat_id}", timedelta(0))
            return "retried"
        except Forbidden as exc:
            status = ChatStatus.LEFT if "kicked" in exc.message.lower() else ChatStatus.BLOCKED
            await asyncio.to_thread(self._pause_chat, row.chat_id, status, exc.message)
            return "parked"
        except BadRequest as exc:
            return await self._bad_request(row, exc)
        except NetworkError as exc:  # includes TimedOut and 5xx answers
            delay = _retry_delay(row.attempts)
            log.warning(
                "chat %s: network error sending row %s (%s); retry in %s",
                row.chat_id,
                row.id,
                exc.message,
                delay,
            )
            await self._retry(row, f"network: {exc.message}", delay)
            return "retried"
        await asyncio.to_thread(
            mark_sent,
            self._engine,
            row.id,
            self._holder,
            message_id=message.message_id,
            now=self._clock(),
        )
        return "sent"

    async def _bad_request(self, row: OutboxMessage, exc: BadRequest) -> str:
        text = exc.message.lower()
        if "parse entities" in text and row.parse_mode:
            log.warning(
                "chat %s: Telegram rejected the HTML of row %s (%s); sending plain text",
                row.chat_id,
                row.id,
                exc.message,
            )
            await asyncio.to_thread(
                fall_back_to_plain,
                self._engine,
                row.id,
                self._holder,
                text=plain_fallback(row.text),
            )
            return "retried"
        if "chat not found" in text:
            await asyncio.to_thread(self._pause_chat, row.chat_id, ChatStatus.LEFT, exc.message)
            return "parked"
        log.error("chat %s: Telegram refused row %s for good: %s", row.chat_id, row.id, exc.message)
        await asyncio.to_thread(mark_dead, self._engine, row.id, self._holder, error=exc.message)
        return "dead"

    async def _retry(self, row: OutboxMessage, error: str, delay: timedelta) -> None:
        await asyncio.to_thread(
            mark_retry,
            self._engine,
            row.id,
            self._holder,
            error=error,
            next_attempt_at=self._clock() + delay,
        )

    def _migrate(self, old_id: int, new_id: int) -> None:
        with session_scope(self._engine) as session:
            migrate_chat(old_id, new_id, session=session, now=self._clock())

    def _pause_chat(self, chat_id: int, status: str, reason: str) -> None:
        log.info("chat %s: %s; pausing its deliveries", chat_id, reason)
        with session_scope(self._engine) as session:
            set_chat_status(chat_id, status, session=session, now=self._clock())
            park_chat(chat_id, session=session, error=reason)
