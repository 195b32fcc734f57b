"""Feed lists in and out: OPML (read with listparser) and plain URL lists.

Writing OPML is a dozen lines of ElementTree, which escapes for us; listparser only reads.
"""

from __future__ import annotations

import codecs
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import listparser

MAX_FEED_LIST_BYTES = 16 * 1024 * 1024  # 16 MiB is some 100,000 feeds: anything bigger is no list


class FeedListError(ValueError):
    """The file is neither an OPML document nor a list of URLs."""


@dataclass(frozen=True, slots=True)
class FeedListEntry:
    url: str
    title: str | None
    line: int | None = None  # line number in a plain list, for error messages


def read_feed_list_file(path: Path) -> list[FeedListEntry]:
    """`read_feed_list` of a file, refused unread past MAX_FEED_LIST_BYTES (a device, a log).

    Raises OSError when the file cannot be read and FeedListError when it is no feed list."""
    with path.open("rb") as fh:
        data = fh.read(MAX_FEED_LIST_BYTES + 1)
    if len(data) > MAX_FEED_LIST_BYTES:
        raise FeedListError(f"larger than {MAX_FEED_LIST_BYTES // 1024} KiB: not a feed list")
    return read_feed_list(data)


def read_feed_list(data: bytes) -> list[FeedListEntry]:
    """Parse OPML (anything starting with '<') or a plain list of URLs, one per line."""
    # Windows tools often start OPML with a UTF-8 byte order mark.
    text_start = data.removeprefix(codecs.BOM_UTF8).lstrip()[:1]
    if text_start == b"<":
        result = listparser.parse(data)
        if result.get("bozo") and not result.feeds:
            raise FeedListError(f"not a readable OPML file: {result.get('bozo_exception')}")
        if not result.feeds:
            raise FeedListError("the OPML file lists no feeds (no outline with an xmlUrl)")
        return [FeedListEntry(f.url.strip(), (f.title or "").strip() or None) for f in result.feeds]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedListError("the file is not UTF-8 text, OPML or a URL list") from exc
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        url, *title = line.split(None, 1)  # a space or a tab, as spreadsheets export
        entries.append(FeedListEntry(url, title[0].strip() if title else None, number))
    if not entries:
        raise FeedListError("the file lists no feed URLs")
    return entries


def write_opml(feeds: Sequence[tuple[str, str | None]], *, title: str = "Storywire feeds") -> str:
    """OPML 2.0 for (url, title) pairs."""
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = title
    ET.SubElement(head, "dateCreated").text = format_datetime(datetime.now(UTC))
    body = ET.SubElement(root, "body")
    for url, name in feeds:
        label = name or url
        ET.SubElement(body, "outline", type="rss", text=label, title=label, xmlUrl=url)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
