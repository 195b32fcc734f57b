"""Shared fixtures: a migrated database on SQLite always, and on PostgreSQL when configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from telegram import Bot

from store.db import make_engine
from store.migrate import upgrade
from tests.fakes.bot_api import FakeBotApi
from tests.fakes.feeds import feed_server, loopback_server  # noqa: F401  (shared fixtures)

PG_URL = os.environ.get("STORYWIRE_TEST_DATABASE_URL")
DB_KINDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _pg_engine_in_fresh_schema() -> tuple[Engine, Engine, str]:
    assert PG_URL
    admin = make_engine(PG_URL)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    engine = make_engine(f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}")
    return admin, engine, schema


@pytest.fixture(params=DB_KINDS)
def db_engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """A migrated, empty database: a SQLite file, or a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'storywire.db'}")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    admin, engine, schema = _pg_engine_in_fresh_schema()
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'storywire.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def api() -> AsyncIterator[FakeBotApi]:
    """The loopback Bot API server."""
    async with FakeBotApi() as server:
        yield server


@pytest.fixture
async def bot(api: FakeBotApi) -> AsyncIterator[Bot]:
    """A PTB Bot pointed at the loopback Bot API."""
    async with Bot(api.token, base_url=api.bot_base_url) as client:
        yield client
