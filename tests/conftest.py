"""Shared fixtures: a migrated database on SQLite always, and on PostgreSQL when configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
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


@contextmanager
def pg_schema_url(prefix: str = "t") -> Iterator[str]:
    """A DATABASE_URL for a throwaway PostgreSQL schema, dropped afterwards."""
    assert PG_URL
    admin = make_engine(PG_URL)
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=DB_KINDS)
def db_engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:  # type: ignore[no-untyped-def]
    """A migrated, empty database: a SQLite file, or a throwaway PostgreSQL schema."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'storywire.db'}")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    with pg_schema_url() as url:
        engine = make_engine(url)
        try:
            upgrade(engine)
            yield engine
        finally:
            engine.dispose()


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
