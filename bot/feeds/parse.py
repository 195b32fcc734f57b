"""Parsing fetched feed bytes into plain, cleaned entries.

feedparser does the format and charset work (RSS 0.9x-2.0, RSS 1.0, Atom; HTTP and XML charset
declarations, with fallbacks). It is always handed a BytesIO, never a URL or bare bytes: given
bytes that happen to spell a local path, feedparser opens and parses that file. Tags are stripped
with the standard library's HTMLParser: all we need is the text, so a sanitiser or an HTML5 parser
would be a large dependency for nothing.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import urlsplit

import feedparser

from bot.feeds.urls import canonical_url

__all__ = ["NotAFeed", "ParsedEntry", "ParsedFeed", "clean_text", "parse_feed"]

TITLE_LIMIT = 500
SUMMARY_LIMIT = 1000
FUTURE_SLACK = timedelta(hours=1)
_SPACE = re.compile(r"\s+")
# C0 and C1 controls, DEL and lone surrogates: a loose parse keeps "&#0;" or a raw \x01, which
# PostgreSQL refuses in text (NUL) and Telegram would show as junk. Tabs and newlines are spaces.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")
_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*(<!doctype\s+html|<html)", re.I | re.S)


class NotAFeed(ValueError):
    """The bytes are not RSS or Atom (an HTML page, an error page, garbage)."""


@dataclass(frozen=True, slots=True)
class ParsedEntry:
    entry_key: str
    url: str
    # the link as the article's identity (unique across feeds and polls), or "" when the link
    # names no one item: a site's home page, or a page several items of this feed share
    canonical: str
    title: str
    summary: str
    published: datetime
    author: str
    source: str  # the outlet, when an aggregator feed names it (RSS <source>); else ""


@dataclass(frozen=True, slots=True)
class ParsedFeed:
    title: str
    site_url: str
    entries: tuple[ParsedEntry, ...]
    warnings: tuple[str, ...]
    skipped: int


class _TextExtractor(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "iframe", "object"})
    _BREAKS = frozenset({"p", "br", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BREAKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space > limit // 2:
        head = head[:space]
    return head.rstrip(" ,;:-") + "…"


def clean_text(html_or_text: str, *, limit: int | None = None) -> str:
    """Text without tags, entities unescaped, whitespace collapsed, optionally cut on a word."""
    if not html_or_text:
        return ""
    if "<" in html_or_text or "&" in html_or_text:
        parser = _TextExtractor()
        parser.feed(html_or_text)
        parser.close()
        text = "".join(parser.parts)
    else:
        text = html_or_text
    text = _SPACE.sub(" ", _CONTROL.sub(" ", text).replace("\u00a0", " ")).strip()
    return _cut(text, limit) if limit else text


def _when(entry: feedparser.FeedParserDict, fetched_at: datetime) -> datetime:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if isinstance(value, time.struct_time):
            try:
                when = datetime.fromtimestamp(calendar.timegm(value), tz=UTC)
            except (OverflowError, ValueError, OSError):
                continue
            return fetched_at if when > fetched_at + FUTURE_SLACK else when
    return fetched_at


def _entry_key(
    entry: feedparser.FeedParserDict, title: str, summary: str, sites: frozenset[str]
) -> str:
    for key in ("id", "link"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            if _is_web_url(value) and _names_a_site(canonical_url(value), sites):
                continue  # every item may carry it: it cannot tell them apart, poll after poll
            return _CONTROL.sub("", value.strip())[:1024]
    stamp = entry.get("published") or entry.get("updated") or ""
    return _digest(f"{title}\x1f{stamp}" if stamp else f"{title}\x1f{summary}")


def _names_a_site(link: str, sites: frozenset[str]) -> bool:
    """A (canonical) link to the feed itself, its site, or a home page: not to one item."""
    if link in sites:
        return True
    try:
        parts = urlsplit(link)
    except ValueError:
        return False
    return parts.path in ("", "/") and not parts.query and not parts.fragment


def _digest(text: str) -> str:
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()


def _is_web_url(value: object) -> bool:
    return (
        isinstance(value, str)
        and value.lower().startswith(("http://", "https://"))
        and not _CONTROL.search(value)
    )


_TRACKING_FRAGMENT = re.compile(r"^(?:xtor|utm|ixzz|at_|ref|rss|src|sm|cmp|mc_)", re.IGNORECASE)


def _anchor(link: str) -> str:
    """A link's fragment if it names a place in the page ("post-2"); "" for tracking
    ("xtor=RSS-3", "ixzz2vZ", "utm_source=...") and other key=value fragments."""
    try:
        fragment = urlsplit(link.strip()).fragment[:200]
    except ValueError:
        return ""
    if not fragment or "=" in fragment or _TRACKING_FRAGMENT.match(fragment):
        return ""
    return fragment


def _looks_like_html(body: bytes, content_type: str | None) -> bool:
    if content_type and "html" in content_type.lower() and "xml" not in content_type.lower():
        return True
    return bool(_HTML_START.match(body[:2048]))


def parse_feed(
    body: bytes, *, url: str, content_type: str | None, fetched_at: datetime
) -> ParsedFeed:
    """Entries from feed bytes; a bozo feed yields what it can. Raises NotAFeed otherwise.

    `url` is where the bytes came from (the base for relative links); `fetched_at` (aware) stands
    in for missing dates and caps future ones.
    """
    if fetched_at.tzinfo is None:
        raise ValueError("fetched_at must be timezone-aware")
    if not body.strip():
        raise NotAFeed("the response body was empty")
    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    # sanitize_html is off because clean_text keeps only the text anyway; relative URIs resolve
    # against content-location so entry links come out absolute.
    parsed = feedparser.parse(
        io.BytesIO(body), response_headers=headers, sanitize_html=False, resolve_relative_uris=True
    )
    warnings: list[str] = []
    if parsed.get("bozo"):
        warnings.append(f"{type(parsed.bozo_exception).__name__}: {parsed.bozo_exception}"[:300])
    if not parsed.entries and not parsed.get("version"):
        if _looks_like_html(body, content_type):
            raise NotAFeed("the URL served HTML, not RSS/Atom")
        reason = warnings[0] if warnings else "no RSS or Atom elements found"
        raise NotAFeed(f"not a feed: {reason}")
    entries: list[ParsedEntry] = []
    seen: set[str] = set()
    skipped = 0
    items = []
    feed = parsed.get("feed", {})
    site_url = feed.get("link") or ""
    site_url = canonical_url(site_url) if _is_web_url(site_url) else ""
    sites = frozenset(filter(None, (canonical_url(url) if _is_web_url(url) else "", site_url)))
    for entry in parsed.entries:
        summary = clean_text(
            entry.get("summary") or entry.get("description") or "", limit=SUMMARY_LIMIT
        )
        title = clean_text(entry.get("title") or "", limit=TITLE_LIMIT)
        if not title:
            title = _cut(summary, 120) if summary else ""
        if not title:
            skipped += 1
            continue
        raw_link = entry.get("link") or ""
        link = canonical_url(raw_link) if _is_web_url(raw_link) else ""
        # The canonical URL drops the fragment, but a live blog links each post as page#post-N:
        # without it the posts collide on the one URL (unique across polls and feeds) and all
        # but the first are lost. A fragment that is an anchor stays; tracking goes.
        anchor = _anchor(raw_link) if link else ""
        if anchor:
            link = f"{link}#{anchor}"
        items.append((entry, title, summary, link, _entry_key(entry, title, summary, sites)))
    # Some feeds give every item the same <guid> (often the site's address). The guid then cannot
    # tell items apart, and keying on it alone would keep only the first: such items are keyed by
    # guid and link (or title) instead. Items that agree on all of it are one item repeated.
    variants: dict[str, set[tuple[str, str]]] = {}
    for _, title, _, link, key in items:
        variants.setdefault(key, set()).add((link, "" if link else title))
    # A link is an article's identity across feeds and polls (one URL, one article) unless it
    # names no one item: a home page every item links to, or one page that items with other
    # keys and other titles share (a podcast's show page). Those items are told apart by key.
    shared: dict[str, set[tuple[str, str]]] = {}
    for _, title, _, link, key in items:
        if link:
            shared.setdefault(link, set()).add((key, title))
    for entry, title, summary, link, key in items:
        others = shared.get(link, ())
        identifies = bool(link) and not _names_a_site(link, sites)
        if identifies and len({k for k, _ in others}) > 1 and len({t for _, t in others}) > 1:
            identifies = False
        if len(variants[key]) > 1:
            key = f"{key[:900]}\x1f{link or _digest(title)}"[:1024]
        if key in seen:
            continue
        seen.add(key)
        source = entry.get("source") or {}
        entries.append(
            ParsedEntry(
                entry_key=key,
                url=link,
                canonical=link if identifies else "",
                title=title,
                summary=summary,
                published=_when(entry, fetched_at),
                author=clean_text(entry.get("author") or "", limit=200),
                source=clean_text(source.get("title") or "", limit=200)
                if isinstance(source, dict)
                else "",
            )
        )
    return ParsedFeed(
        title=clean_text(feed.get("title") or "", limit=200),
        site_url=site_url,
        entries=tuple(entries),
        warnings=tuple(warnings),
        skipped=skipped,
    )
