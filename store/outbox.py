"""The delivery outbox: enqueue idempotently, claim atomically, record what Telegram said.

Guarantees, relied on by `bot.delivery`:
- `enqueue` uses the unique `dedup_key`, so the same digest queued twice is one row.
- `claim` is one conditional UPDATE; two senders can never both claim a row.
- `hold_claim`, just before the send, tells a sender whose lease ran out that another sender has
  taken its rows over since it claimed them.
- Only the oldest pending row of a chat is claimable, so a chat's messages go out in order.
- A row is marked sent only after Telegram accepted it; a claim that was never resolved (a crash
  mid-send) expires and the row is sent again: at most the one in-flight message repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from store.models import OutboxMessage, OutboxStatus

_T = OutboxMessage.__table__


@dataclass(frozen=True, slots=True)
class OutgoingPart:
    text: str
    reply_markup: str | None = None  # JSON of an InlineKeyboardMarkup
    parse_mode: str | None = "HTML"


def enqueue(
    chat_id: int,
    parts: Sequence[OutgoingPart],
    *,
    session: Session,
    kind: str,
    dedup_key: str,
    now: datetime,
    story_id: int | None = None,
) -> int:
    """Queue a message (several parts when split); returns rows inserted (0 if already queued).

    The first part's key is `dedup_key` itself, whatever the number of parts, and the others are
    queued only if it was new: a digest queued again after it grew from two messages to three is
    still the one digest, not a lone third part.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert(_T) if dialect == "postgresql" else sqlite.insert(_T)
    inserted = 0
    for index, part in enumerate(parts):
        key = dedup_key if index == 0 else f"{dedup_key}#{index}"
        result = session.execute(
            insert.on_conflict_do_nothing()
            .values(
                chat_id=chat_id,
                kind=kind,
                story_id=story_id,
                dedup_key=key[:200],
                part=index,
                text=part.text,
                parse_mode=part.parse_mode,
                reply_markup=part.reply_markup,
                status=OutboxStatus.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            .returning(_T.c.id)
        )
        if result.first() is None:
            if index == 0:
                return 0  # queued before, perhaps split differently
            continue
        inserted += 1
    return inserted


def claimable(engine: Engine, *, now: datetime, limit: int = 100) -> list[int]:
    """Ids of due rows that head their chat's queue, oldest first."""
    earlier = _T.alias("earlier")
    blocked_by_earlier = (
        sa.select(earlier.c.id)
        .where(earlier.c.chat_id == _T.c.chat_id)
        .where(earlier.c.status == OutboxStatus.PENDING)
        .where(earlier.c.id < _T.c.id)
        .exists()
    )
    stmt = (
        sa.select(_T.c.id)
        .where(_T.c.status == OutboxStatus.PENDING)
        .where(_T.c.next_attempt_at <= now)
        .where(sa.or_(_T.c.claimed_until.is_(None), _T.c.claimed_until < now))
        .where(~blocked_by_earlier)
        .order_by(_T.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(stmt)]


def claim(
    engine: Engine, row_id: int, holder: str, *, now: datetime, ttl: timedelta
) -> OutboxMessage | None:
    """Claim one row for `holder` until now+ttl; None if someone else has it or it is done."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(_T)
            .where(_T.c.id == row_id)
            .where(_T.c.status == OutboxStatus.PENDING)
            .where(sa.or_(_T.c.claimed_until.is_(None), _T.c.claimed_until < now))
            .values(claimed_by=holder, claimed_until=now + ttl, attempts=_T.c.attempts + 1)
        )
        if result.rowcount != 1:
            return None
        row = conn.execute(sa.select(_T).where(_T.c.id == row_id)).one()
    return OutboxMessage.model_validate(dict(row._mapping))


def hold_claim(engine: Engine, row_id: int, holder: str, *, now: datetime, ttl: timedelta) -> bool:
    """Renew `holder`'s claim on a row it is about to send; False if the claim is no longer its
    own (a sender that took the lease over since released or claimed it) or the row is done."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(_T)
            .where(_T.c.id == row_id)
            .where(_T.c.status == OutboxStatus.PENDING)
            .where(_T.c.claimed_by == holder)
            .values(claimed_until=now + ttl)
        )
    return result.rowcount == 1


def release_stale_claims(engine: Engine, *, holder: str) -> int:
    """Free rows claimed by other holders. Call only while holding the sender lease, which
    proves those holders are gone."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(_T)
            .where(_T.c.status == OutboxStatus.PENDING)
            .where(_T.c.claimed_by.is_not(None))
            .where(_T.c.claimed_by != holder)
            .values(claimed_by=None, claimed_until=None)
        )
    return result.rowcount or 0


def _finish(engine: Engine, row_id: int, holder: str, **values: object) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(_T)
            .where(_T.c.id == row_id)
            .where(_T.c.claimed_by == holder)
            .where(_T.c.status == OutboxStatus.PENDING)
            .values(**values)
        )
    return result.rowcount == 1


def mark_sent(
    engine: Engine, row_id: int, holder: str, *, message_id: int | None, now: datetime
) -> bool:
    return _finish(
        engine,
        row_id,
        holder,
        status=OutboxStatus.SENT,
        sent_at=now,
        telegram_message_id=message_id,
        claimed_until=None,
        last_error=None,
    )


def mark_retry(
    engine: Engine, row_id: int, holder: str, *, error: str, next_attempt_at: datetime
) -> bool:
    return _finish(
        engine,
        row_id,
        holder,
        next_attempt_at=next_attempt_at,
        claimed_by=None,
        claimed_until=None,
        last_error=error[:500],
    )


def mark_dead(engine: Engine, row_id: int, holder: str, *, error: str) -> bool:
    return _finish(
        engine, row_id, holder, status=OutboxStatus.DEAD, claimed_until=None, last_error=error[:500]
    )


def fall_back_to_plain(engine: Engine, row_id: int, holder: str, *, text: str) -> bool:
    """Telegram rejected the HTML: keep the row, send it as plain text next."""
    return _finish(engine, row_id, holder, text=text, parse_mode=None, claimed_until=None)


def park_chat(chat_id: int, *, session: Session, error: str) -> int:
    """The chat blocked the bot or is gone: its pending rows wait until it comes back.

    Call in the transaction that marks the chat so: the chat coming back (`unpark_chat`) then
    sees both or neither, and cannot leave rows parked behind an active chat."""
    result = session.execute(
        sa.update(_T)
        .where(_T.c.chat_id == chat_id)
        .where(_T.c.status == OutboxStatus.PENDING)
        .values(
            status=OutboxStatus.PARKED,
            claimed_by=None,
            claimed_until=None,
            last_error=error[:500],
        )
    )
    return result.rowcount or 0


def unpark_chat(chat_id: int, *, session: Session, now: datetime) -> int:
    result = session.execute(
        sa.update(OutboxMessage)
        .where(col(OutboxMessage.chat_id) == chat_id)
        .where(col(OutboxMessage.status) == OutboxStatus.PARKED)
        .values(status=OutboxStatus.PENDING, next_attempt_at=now)
    )
    return result.rowcount or 0


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            status: int(n)
            for status, n in conn.execute(
                sa.select(_T.c.status, sa.func.count()).group_by(_T.c.status)
            )
        }


def cancel_story_digests(chat_id: int, story_ids: Sequence[int], *, session: Session) -> int:
    """Drop a chat's queued digests of these stories (it unfollowed); returns rows dropped.

    A digest whose first message already went out is left to finish: a chat's rows go out in
    order, so a digest is either wholly unsent (its first row pending) or partly sent.
    """
    if not story_ids:
        return 0
    waiting = (OutboxStatus.PENDING, OutboxStatus.PARKED)
    heads = session.execute(
        sa.select(_T.c.dedup_key).where(
            _T.c.chat_id == chat_id,
            _T.c.kind == "story_digest",
            _T.c.story_id.in_(story_ids),
            _T.c.part == 0,
            _T.c.status.in_(waiting),
        )
    ).scalars()
    dropped = 0
    for key in list(heads):
        result = session.execute(
            sa.delete(_T).where(
                _T.c.chat_id == chat_id,
                _T.c.status.in_(waiting),
                sa.or_(
                    _T.c.dedup_key == key, _T.c.dedup_key.startswith(f"{key}#", autoescape=True)
                ),
            )
        )
        dropped += result.rowcount or 0
    return dropped
