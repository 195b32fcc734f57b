"""Named positions in the article stream that a step has got to, kept with the step's work.

A step reads its watermark with `hold_watermark`, does its work and moves the watermark with
`move_watermark`, all in one transaction: after a crash it resumes where its last committed run
ended, and a second process running the same step waits for the first rather than repeating it.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from store.models import Watermark, utcnow

TOPICS = "topics"  # the keyword step: stories of articles up to here were checked for topics


def hold_watermark(name: str, *, session: Session) -> int:
    """The watermark's position, its row locked until the transaction ends; 0 if it is new.

    The lock is a write that changes nothing, as in store.db.lock_rows: a row lock on PostgreSQL,
    the database's write lock on SQLite."""
    table = Watermark.__table__
    locked = session.execute(
        sa.update(table).where(table.c.name == name).values(position=table.c.position)
    )
    if locked.rowcount == 0:  # type: ignore[attr-defined]
        session.add(Watermark(name=name, position=0, updated_at=utcnow()))
        session.flush()
        return 0
    return int(
        session.execute(sa.select(table.c.position).where(table.c.name == name)).scalar_one()
    )


def move_watermark(name: str, position: int, *, session: Session, now: datetime) -> None:
    """Set the watermark held with `hold_watermark` in this transaction."""
    table = Watermark.__table__
    session.execute(
        sa.update(table).where(table.c.name == name).values(position=position, updated_at=now)
    )
