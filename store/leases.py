"""Named leases in the database: only one poller and one sender hold theirs at a time.

Acquire is a single conditional UPDATE (or an INSERT that the primary key makes exclusive), so two
processes racing for the same lease cannot both win, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from store.models import Lease


def process_holder() -> str:
    """This process's name as a lease holder: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def acquire_lease(engine: Engine, name: str, holder: str, *, ttl: timedelta, now: datetime) -> bool:
    """Take or renew `name` for `holder` until now+ttl. True when the caller holds it."""
    expires = now + ttl
    table = Lease.__table__
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(table)
            .where(table.c.name == name)
            .where(sa.or_(table.c.holder == holder, table.c.expires_at < now))
            .values(holder=holder, expires_at=expires)
        )
        if result.rowcount == 1:
            return True
        exists = conn.execute(sa.select(table.c.name).where(table.c.name == name)).first()
        if exists is not None:
            return False
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(table).values(name=name, holder=holder, expires_at=expires))
        return True
    except IntegrityError:
        return False


def release_lease(engine: Engine, name: str, holder: str) -> None:
    table = Lease.__table__
    with engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.name == name).where(table.c.holder == holder))


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
