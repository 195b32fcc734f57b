"""Named leases in the database: only one poller and one sender hold theirs at a time.

Acquire is a single conditional UPDATE (or an INSERT that the primary key makes exclusive), so two
processes racing for the same lease cannot both win, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import enum
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from store.models import Lease

# Host and pid alone can repeat: two containers on the host network both run as pid 1 on one
# host name, and would each renew the other's leases as their own.
_PROCESS_TOKEN = secrets.token_hex(4)


def process_holder() -> str:
    """This process's name as a lease holder: host, pid and a token drawn at start."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{_PROCESS_TOKEN}"


# A released lease keeps its row and holder, expired: so the next take tells whether anyone else
# held it in between (see LeaseTake.KEPT).
_RELEASED = datetime(1970, 1, 1, tzinfo=UTC)


class LeaseTake(enum.Enum):
    KEPT = "kept"  # the caller held it last: no one else has held it since, even if it lapsed
    TAKEN = "taken"  # new, or taken over from another holder whose lease had run out
    REFUSED = "refused"  # another holder has it


def take_lease(
    engine: Engine, name: str, holder: str, *, ttl: timedelta, now: datetime
) -> LeaseTake:
    """Take or renew `name` for `holder` until now+ttl, saying whether anyone held it between."""
    expires = now + ttl
    table = Lease.__table__
    named = sa.update(table).where(table.c.name == name)
    with engine.begin() as conn:
        own = conn.execute(named.where(table.c.holder == holder).values(expires_at=expires))
        if own.rowcount == 1:
            return LeaseTake.KEPT
        lapsed = conn.execute(
            named.where(table.c.expires_at < now).values(holder=holder, expires_at=expires)
        )
        if lapsed.rowcount == 1:
            return LeaseTake.TAKEN
        exists = conn.execute(sa.select(table.c.name).where(table.c.name == name)).first()
        if exists is not None:
            return LeaseTake.REFUSED
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(table).values(name=name, holder=holder, expires_at=expires))
        return LeaseTake.TAKEN
    except IntegrityError:
        return LeaseTake.REFUSED


def acquire_lease(engine: Engine, name: str, holder: str, *, ttl: timedelta, now: datetime) -> bool:
    """Take or renew `name` for `holder` until now+ttl. True when the caller holds it."""
    return take_lease(engine, name, holder, ttl=ttl, now=now) is not LeaseTake.REFUSED


def release_lease(engine: Engine, name: str, holder: str) -> None:
    """Let the lease go at once (it stays recorded as this holder's, expired)."""
    table = Lease.__table__
    with engine.begin() as conn:
        conn.execute(
            sa.update(table)
            .where(table.c.name == name)
            .where(table.c.holder == holder)
            .values(expires_at=_RELEASED)
        )


def lease_holder(engine: Engine, name: str, *, now: datetime) -> str | None:
    table = Lease.__table__
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.holder, table.c.expires_at).where(table.c.name == name)
        ).first()
    if row is None:
        return None
    holder, expires_at = row
    return holder if expires_at is not None and expires_at >= now else None
