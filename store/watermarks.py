"""Named positions in the stream of matches, kept with the work that moves them.

Matching numbers its transactions (`advance_watermark` on MATCHING, see store.articles.match_seq).
A step that follows the matches reads its watermark with `hold_watermark`, does its work and moves
the watermark with `move_watermark`, all in one transaction: after a crash it resumes where its
last committed run ended, and a second process running the same step waits for the first rather
than repeating it.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session

from store.models import Watermark, utcnow

# the last match number handed out: a transaction that sets articles' stories takes the next
MATCHING = "matching"
# the keyword step: the stories of articles matched up to this match number were checked
TOPICS = "topics"


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


def advance_watermark(name: str, *, session: Session) -> int:
    """Move the watermark on by one and return its new position, its row locked until the
    transaction ends (created at 1 if it is new).

    The lock makes a second transaction advancing it wait for this one to end: positions
    commit in the order they are handed out, so once one is visible none lower is still to
    come."""
    table = Watermark.__table__
    moved = session.execute(
        sa.update(table)
        .where(table.c.name == name)
        .values(position=table.c.position + 1, updated_at=utcnow())
        .returning(table.c.position)
    ).scalar_one_or_none()
    if moved is not None:
        return int(moved)
    session.add(Watermark(name=name, position=1, updated_at=utcnow()))
    session.flush()
    return 1
