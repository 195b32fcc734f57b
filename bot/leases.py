"""Keeping a database lease alive while the work it guards runs.

A lease is taken for a short time-to-live so that a crashed holder does not block the others for
long. Work can outlast that time (a poll pass of slow feeds; a send that waits out Telegram's
RetryAfter), and an expired lease lets a second instance in while the first is still working:
the duplicate sends the lease exists to prevent. `renewing` renews it every third of its TTL in
the background until the work ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from store.leases import LeaseTake, take_lease

__all__ = ["KeptLease", "renewing"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class KeptLease:
    name: str
    lost: bool = False  # a renewal found the lease held by someone else
    until: datetime | None = None  # when the latest renewal made here runs out
    # a renewal found that another holder had the lease since our last take (it ran out, they
    # took it and let go): we hold it again, but what they did meanwhile is not in our memory
    lapsed: bool = False


@asynccontextmanager
async def renewing(
    engine: Engine,
    name: str,
    holder: str,
    *,
    ttl: timedelta,
    clock: Callable[[], datetime],
) -> AsyncIterator[KeptLease]:
    """Renew a lease the caller already holds, every ttl/3, while the block runs."""
    kept = KeptLease(name)

    async def renew() -> None:
        while True:
            await asyncio.sleep(ttl.total_seconds() / 3)
            try:
                now = clock()
                take = await asyncio.to_thread(take_lease, engine, name, holder, ttl=ttl, now=now)
            except Exception:  # noqa: BLE001 - a database hiccup: try again next time
                log.warning("could not renew the %s lease; retrying", name, exc_info=True)
                continue
            if take is not LeaseTake.REFUSED:
                kept.until = now + ttl
            if take is LeaseTake.TAKEN:
                kept.lapsed = True
            if take is LeaseTake.REFUSED and not kept.lost:
                kept.lost = True
                log.error("lost the %s lease to another instance while still working", name)

    task = asyncio.create_task(renew(), name=f"renew {name} lease")
    try:
        yield kept
    finally:
        task.cancel()
        # gather, not a bare await: the renewer's CancelledError is a result, ours still raises
        await asyncio.gather(task, return_exceptions=True)
