"""Engine and sessions from DATABASE_URL; SQLite gets WAL and foreign keys, PostgreSQL works as is."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

log = logging.getLogger(__name__)


def _normalise_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and route them to psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine; for a SQLite file, create its directory and turn on WAL and foreign keys."""
    url = _normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if in_memory:
            engine = sa.create_engine(
                url,
                echo=echo,
                connect_args={"check_same_thread": False},
                poolclass=StaticPool,
            )
        else:
            # SQLite does not expand "~": open the file in the directory we create.
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                parsed.set(database=str(path)),
                echo=echo,
                connect_args={"check_same_thread": False, "timeout": 30},
            )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            if not in_memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "savepoint")
        def _begin_before_savepoint(conn, _name) -> None:  # type: ignore[no-untyped-def]
            # pysqlite opens a transaction only before a write, and a SAVEPOINT is not one: a
            # savepoint opened first starts a transaction of its own, and releasing it commits,
            # whatever the session's transaction does after. Open the real one first.
            driver = conn.connection.driver_connection
            if not driver.in_transaction:
                driver.execute("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def _utc_now() -> datetime:
    return datetime.now(UTC)


class DatabaseClock:
    """The database server's time: this machine's clock plus a measured offset.

    Instances sharing one PostgreSQL compare times they each wrote (lease and claim expiries,
    due digests). Read from their own clocks, a machine running 20 s fast would see another's
    30 s sender lease as lapsed after 10 s and take it over while that one is still sending.
    Read from the database's clock they agree, however far off the machines are. The offset is
    measured with `sync` (at start and now and then) rather than asked per call, which would cost
    a round trip for every timestamp. On SQLite the database's clock is this machine's.
    """

    # a sync whose round trip takes longer than this says little about the offset: keep the last
    _MAX_ROUND_TRIP = timedelta(seconds=2)

    def __init__(self, engine: Engine, *, local: Callable[[], datetime] = _utc_now) -> None:
        self._engine = engine
        self._local = local
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self._local() + self.offset

    def sync(self) -> timedelta:
        """Measure the offset (database minus this machine) and use it from now on."""
        if is_sqlite(self._engine):
            query = sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
        else:
            query = sa.select(sa.func.clock_timestamp())
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))  # a fresh pooled connection is ready before timing
            before = self._local()
            value = conn.execute(query).scalar_one()
            after = self._local()
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if after - before <= self._MAX_ROUND_TRIP:
            self.offset = value - (before + (after - before) / 2)
        return self.offset


def lock_rows(session: Session, table: sa.Table, ids: Iterable[int]) -> None:
    """Lock rows by id until the transaction ends, with a write that changes nothing (their
    `updated_at` set to itself): a row lock on PostgreSQL; on SQLite the database's write lock,
    after which this transaction's reads see no other writer's work in progress. Ids in order,
    so two lockers of the same rows cannot deadlock."""
    column = table.c.updated_at
    session.execute(sa.update(table).where(table.c.id.in_(sorted(ids))).values({column: column}))
