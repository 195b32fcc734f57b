"""Loopback feed serving for tests: RSS builders and a threaded HTTP server."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from xml.sax.saxutils import escape

import pytest
from pytest_httpserver import HTTPServer


@dataclass(frozen=True)
class Item:
    title: str
    link: str | None = None
    guid: str | None = None
    published: datetime | None = None
    summary: str = ""
    source: str | None = None


def rss(items: Sequence[Item], *, title: str = "Test Feed") -> bytes:
    parts = []
    for item in items:
        fields = [f"<title>{escape(item.title)}</title>"]
        if item.link:
            fields.append(f"<link>{escape(item.link)}</link>")
        if item.guid:
            fields.append(f"<guid isPermaLink='false'>{escape(item.guid)}</guid>")
        if item.published:
            fields.append(f"<pubDate>{format_datetime(item.published)}</pubDate>")
        if item.summary:
            fields.append(f"<description>{escape(item.summary)}</description>")
        if item.source:
            fields.append(f"<source url='http://src.example/'>{escape(item.source)}</source>")
        parts.append("<item>" + "".join(fields) + "</item>")
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>{escape(title)}</title><link>http://site.example/</link>"
        + "".join(parts)
        + "</channel></rss>"
    ).encode()


@pytest.fixture(scope="session")
def loopback_server() -> Iterator[HTTPServer]:
    """One threaded loopback HTTP server for the session: a slow feed never holds up the others,
    and it is not restarted per test (stopping one costs werkzeug's 0.5 s poll)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        if server.is_running():
            server.stop()


@pytest.fixture
def feed_server(loopback_server: HTTPServer) -> Iterator[HTTPServer]:
    """The loopback server with no handlers and an empty request log, for one test."""
    loopback_server.clear()
    try:
        yield loopback_server
    finally:
        loopback_server.clear()
