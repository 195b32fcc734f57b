"""`storywire demo`: the whole pipeline on bundled real headlines, no token, no internet.

Sample feeds are served on 127.0.0.1 and release their articles over 36 simulated hours. Storywire
polls them, matches stories, a demo user follows the three top stories, a demo group asks
for a daily digest, and the outbox is drained to the terminal instead of Telegram, printing each
message as the chat would see it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import tempfile
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from sqlalchemy.engine import Engine

from bot import following
from bot.config import Settings
from bot.digests.queue import DigestPolicy, queue_group_digests, queue_story_digests
from bot.digests.render import plural, render_plain
from bot.feeds.fetch import FetchLimits, make_http_client
from bot.feeds.poller import FeedPoller, PollPolicy
from bot.samples import START, SampleArticle, load
from bot.stories.service import StoryService
from store.chats import upsert_chat
from store.db import make_engine, session_scope
from store.feeds import add_feed
from store.migrate import upgrade
from store.outbox import claim, claimable, mark_sent

DEMO_USER = 1001
DEMO_GROUP = -1002
STEP = timedelta(hours=4)
FOLLOW_AT = timedelta(hours=8)
GROUP_TIME = time(18, 0)
GROUP_ZONE = "Europe/Berlin"


@dataclass
class SimClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FeedShelf:
    """What each sample feed has published by the simulated 'now'."""

    clock: SimClock
    articles: dict[str, list[SampleArticle]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slug(self, feed: str) -> str:
        return re.sub(r"[^a-z0-9]+", "-", feed.lower()).strip("-")

    def rss(self, slug: str) -> bytes | None:
        with self.lock:
            names = [f for f in self.articles if self.slug(f) == slug]
            if not names:
                return None
            items = [a for a in self.articles[names[0]] if a.published <= self.clock.now]
        body = "".join(
            f"<item><title>{escape(a.title)}</title><link>{escape(a.url)}</link>"
            f"<guid isPermaLink='false'>uci-{escape(a.id)}</guid>"
            f"<pubDate>{format_datetime(a.published)}</pubDate>"
            f"<source url={quoteattr(a.url)}>{escape(a.source)}</source></item>"
            for a in reversed(items[-60:])
        )
        return (
            f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
            f"<title>{escape(names[0])}</title><link>http://127.0.0.1/</link>"
            f"<description>Storywire demo feed</description>{body}</channel></rss>"
        ).encode()


def _serve(shelf: FeedShelf) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            slug = self.path.strip("/").removesuffix(".xml")
            body = shelf.rss(slug)
            if body is None:
                self.send_error(404)
                return
            etag = '"' + hashlib.sha1(body).hexdigest() + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/rss+xml; charset=utf-8")
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _buttons(markup: str | None) -> str:
    if not markup:
        return ""
    rows = json.loads(markup).get("inline_keyboard", [])
    return "  ".join(f"[ {b['text']} ]" for row in rows for b in row)


class TerminalChat:
    """Drains the outbox like the Telegram sender does, printing instead of sending."""

    def __init__(self, engine: Engine, clock: SimClock, out: Callable[[str], None]) -> None:
        self.engine, self.clock, self.out = engine, clock, out
        self.printed: dict[str, int] = defaultdict(int)
        self.names = {DEMO_USER: "demo user (private chat)", DEMO_GROUP: "demo group"}

    def drain(self) -> int:
        sent = 0
        while ids := claimable(self.engine, now=self.clock.now):
            for row_id in ids:
                row = claim(
                    self.engine, row_id, "demo", now=self.clock.now, ttl=timedelta(minutes=5)
                )
                if row is None:
                    continue
                when = self.clock.now.strftime("%a %d %b %H:%M UTC")
                who = self.names.get(row.chat_id, str(row.chat_id))
                self.out(f"\n┌─ to {who} · {row.kind.replace('_', ' ')} · {when}")
                # Telegram shows links as underlined names; so does the terminal, without URLs.
                text = render_plain(row.text, show_links=False) if row.parse_mode else row.text
                for line in text.splitlines():
                    self.out(f"│ {line}")
                buttons = _buttons(row.reply_markup)
                if buttons:
                    self.out(f"│ {buttons}")
                self.out("└" + "─" * 60)
                mark_sent(self.engine, row.id, "demo", message_id=None, now=self.clock.now)
                self.printed[row.kind] += 1
                sent += 1
        return sent


async def run_demo(settings: Settings, *, out: Callable[[str], None] = print) -> int:
    """Run the demo; returns the number of messages printed."""
    articles = load()
    clock = SimClock(START)
    shelf = FeedShelf(clock)
    for a in articles:
        shelf.articles[a.feed].append(a)
    server = _serve(shelf)
    workdir = Path(tempfile.mkdtemp(prefix="storywire-demo-"))
    engine = make_engine(f"sqlite:///{workdir / 'demo.db'}")
    try:
        upgrade(engine)
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with session_scope(engine) as session:
            for name in shelf.articles:
                add_feed(
                    f"{base}/{shelf.slug(name)}.xml", session=session, name=None, now=clock.now
                )
            for chat_id, kind in ((DEMO_USER, "private"), (DEMO_GROUP, "group")):
                upsert_chat(
                    chat_id, session=session, type=kind, title="Demo", username=None, now=clock.now
                )
        following.change_timezone(engine, DEMO_GROUP, GROUP_ZONE, now=clock.now)
        following.change_digest(
            engine, DEMO_GROUP, enabled=True, time_text=GROUP_TIME.strftime("%H:%M"), now=clock.now
        )
        out(
            f"Storywire demo: {len(articles)} real headlines from {len(shelf.articles)} feeds, "
            f"released over 36 simulated hours from {START:%d %b %Y %H:%M} UTC."
        )
        policy = PollPolicy(
            interval=timedelta(minutes=15),
            concurrency=1,
            per_host_concurrency=1,
            limits=FetchLimits(timeout=10),
        )
        stories = StoryService.open(engine, window_hours=settings.story_window_hours, clock=clock)
        digest_policy = DigestPolicy(group_size=settings.group_digest_size)
        terminal = TerminalChat(engine, clock, out)
        followed = False
        async with make_http_client(policy.limits) as client:
            poller = FeedPoller(engine, client, policy, clock=clock)
            end = START + timedelta(hours=36)
            while clock.now <= end:
                summary = await poller.poll_due()
                matched = await asyncio.to_thread(stories.assign_pending)
                await asyncio.to_thread(
                    following.follow_matching_topics,
                    engine,
                    now=clock.now,
                )
                out(
                    f"\n· {clock.now:%a %d %b %H:%M} UTC: "
                    f"{plural(summary.new_articles, 'new article')}, {len(matched)} matched, "
                    f"{plural(stories.matcher.active_count, 'active story', 'active stories')}"
                )
                if not followed and clock.now - START >= FOLLOW_AT:
                    followed = True
                    for card in following.top(engine, now=clock.now, limit=3):
                        following.follow_story_id(engine, DEMO_USER, card.id, now=clock.now)
                        out(f"  demo user follows story {card.id}: {card.headline}")
                # Let the debounce run out before looking for due digests.
                clock.now += timedelta(minutes=settings.digest_quiet_minutes)
                queue_story_digests(engine, now=clock.now, policy=digest_policy)
                queue_group_digests(engine, now=clock.now, policy=digest_policy)
                await asyncio.to_thread(terminal.drain)
                clock.now += STEP - timedelta(minutes=settings.digest_quiet_minutes)
        counts = ", ".join(f"{n} {k.replace('_', ' ')}s" for k, n in terminal.printed.items())
        out(f"\nDemo done: printed {counts or 'nothing'}.")
        return sum(terminal.printed.values())
    finally:
        server.shutdown()
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


def main(settings: Settings) -> int:
    printed = asyncio.run(run_demo(settings))
    return 0 if printed else 1
