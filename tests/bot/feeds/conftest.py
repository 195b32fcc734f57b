"""Fixtures for the fetch and parse tests: a fresh threaded loopback server and a client."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pytest_httpserver import HTTPServer

from bot.feeds.fetch import FetchLimits, make_http_client


@pytest.fixture
def unblock() -> threading.Event:
    """Set at teardown: slow handlers wait on it, so no server thread outlives its test."""
    return threading.Event()


@pytest.fixture
def httpserver(feed_server: HTTPServer, unblock: threading.Event) -> Iterator[HTTPServer]:
    """Shadows pytest-httpserver's single-threaded server with the shared threaded one: a handler
    that stalls (the timeout tests) must not hold up other requests."""
    try:
        yield feed_server
    finally:
        unblock.set()


@pytest.fixture
def limits() -> FetchLimits:
    return FetchLimits(timeout=5.0, max_bytes=256 * 1024)


@pytest.fixture
async def client(limits: FetchLimits) -> AsyncIterator[httpx.AsyncClient]:
    async with make_http_client(limits) as http:
        yield http
