"""Polls due feeds with bounded concurrency and records every outcome.

The database holds the schedule (`next_poll_at`); a pass asks it for due feeds, fetches each with a
global and a per-host limit, parses the bytes, stores new articles and the feed's new state. One
feed's failure only moves that feed's schedule back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.config import Settings
from bot.feeds.fetch import FetchLimits, FetchOutcome, FetchResult, fetch_feed
from bot.feeds.parse import NotAFeed, ParsedFeed, parse_feed
from bot.leases import renewing
from store.articles import NewArticle, insert_articles
from store.db import session_scope
from store.feeds import due_feeds, find_feed, get_feed
from store.leases import acquire_lease, process_holder, release_lease
from store.models import Feed, FeedStatus

__all__ = [
    "FeedPoller",
    "PollPolicy",
    "PollSummary",
    "FeedOutcome",
    "backoff_delay",
    "ParserPool",
    "parser_pool",
    "poll_policy",
]

log = logging.getLogger(__name__)

POLLER_LEASE = "poller"
MAX_BACKOFF = timedelta(hours=24)
LEASE_TTL = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    interval: timedelta = timedelta(minutes=15)
    concurrency: int = 20
    per_host_concurrency: int = 4
    failure_limit: int = 12
    limits: FetchLimits = field(default_factory=FetchLimits)
    lease_ttl: timedelta = LEASE_TTL  # renewed every third of it while a pass runs


@dataclass(frozen=True, slots=True)
class FeedOutcome:
    feed_id: int
    url: str
    outcome: str  # a FetchOutcome value, or "not_a_feed"
    new_articles: int
    error: str | None
    disabled: bool


@dataclass(slots=True)
class PollSummary:
    feeds: int = 0
    ok: int = 0
    not_modified: int = 0
    failed: int = 0
    new_articles: int = 0
    disabled: list[FeedOutcome] = field(default_factory=list)
    elapsed: float = 0.0
    skipped_lease: bool = False

    def line(self) -> str:
        return (
            f"polled {self.feeds} feeds in {self.elapsed:.1f}s: {self.ok} updated, "
            f"{self.not_modified} not modified, {self.failed} failed, "
            f"{self.new_articles} new articles, {len(self.disabled)} disabled"
        )


def poll_policy(settings: Settings) -> PollPolicy:
    """The poller's policy from Settings."""
    return PollPolicy(
        interval=timedelta(seconds=settings.poll_interval_seconds),
        concurrency=settings.poll_concurrency,
        per_host_concurrency=settings.poll_per_host_concurrency,
        failure_limit=settings.feed_failure_limit,
        limits=FetchLimits(
            timeout=settings.http_timeout_seconds,
            max_bytes=settings.max_feed_bytes,
            max_redirects=settings.max_redirects,
            user_agent=settings.user_agent,
        ),
    )


def parser_pool(processes: int) -> ParserPool | None:
    """Worker processes for parsing feeds, or None to parse in threads (processes == 0)."""
    if processes <= 0:
        return None
    return ParserPool(processes)


class ParserPool(Executor):
    """A process pool for parsing that replaces itself when a worker dies.

    A ProcessPoolExecutor whose worker is killed (the OOM killer, a crash in a C library) is
    broken for good: every later parse would fail, each counted as its feed's failure, until
    every feed was disabled. Here a parse that meets a broken pool starts a new pool and is
    tried once more there; a feed whose parse breaks the new pool too fails on its own.

    forkserver, not fork: the poller's process has threads (asyncio's, the database pool's).
    """

    def __init__(self, processes: int) -> None:
        self._processes = processes
        self._lock = threading.Lock()
        self._closed = False
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._processes, mp_context=multiprocessing.get_context("forkserver")
        )

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken and not self._closed:
                log.error("a feed parser process died; starting new parser processes")
                self._pool = self._start()

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[no-untyped-def, override]
        outer: Future = Future()
        self._submit(outer, functools.partial(fn, *args, **kwargs), retries=1)
        return outer

    def _submit(self, outer: Future, call: Callable[[], object], *, retries: int) -> None:
        with self._lock:
            pool = self._pool
        try:
            inner = pool.submit(call)
        except BrokenProcessPool as exc:
            if retries > 0:
                self._replace(pool)
                self._submit(outer, call, retries=retries - 1)
            elif outer.set_running_or_notify_cancel():
                outer.set_exception(exc)
            return
        except RuntimeError as exc:  # shut down
            if outer.set_running_or_notify_cancel():
                outer.set_exception(exc)
            return

        def done(future: Future) -> None:
            error = None if future.cancelled() else future.exception()
            if isinstance(error, BrokenProcessPool) and retries > 0:
                self._replace(pool)
                self._submit(outer, call, retries=retries - 1)
                return
            if not outer.set_running_or_notify_cancel():
                return  # the caller gave up on it
            if future.cancelled():
                outer.set_exception(CancelledError())
            elif error is not None:
                outer.set_exception(error)
            else:
                outer.set_result(future.result())

        inner.add_done_callback(done)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def backoff_delay(interval: timedelta, failures: int) -> timedelta:
    """Exponential backoff per feed: interval * 2**(failures-1), capped at 24 h."""
    if failures <= 0:
        return interval
    return min(interval * (2 ** min(failures - 1, 16)), max(MAX_BACKOFF, interval))


@dataclass(frozen=True, slots=True)
class _FeedJob:
    id: int
    url: str
    name: str | None
    etag: str | None
    last_modified: str | None


UNCHANGED_BATCH = 100  # feeds that answered 304, recorded together


def _new_validators(job: _FeedJob, result: FetchResult) -> bool:
    return bool(
        (result.etag and result.etag != job.etag)
        or (result.last_modified and result.last_modified != job.last_modified)
    )


class FeedPoller:
    """One pass over the due feeds. Safe to run twice: a DB lease keeps a second poller out."""

    def __init__(
        self,
        engine: Engine,
        client: httpx.AsyncClient,
        policy: PollPolicy,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        holder: str | None = None,
        parsers: Executor | None = None,
        on_disabled: Callable[[Feed, Session], None] | None = None,
    ) -> None:
        """`on_disabled(feed, session)` runs in the transaction that disables a feed, so that
        what it writes (a notice to the operators) is committed with the disable or not at all."""
        self._engine = engine
        self._on_disabled = on_disabled
        self._parsers = parsers
        self._client = client
        self._policy = policy
        self._clock = clock
        self._holder = holder or process_holder()
        self._write_lock = asyncio.Lock()
        # Feeds that answered 304, recorded in one transaction per batch: a 304 pass is mostly
        # these, and one commit per feed would cost more than its request. Losing a batch to a
        # crash costs only a repeated conditional GET.
        self._unchanged: list[tuple[int, datetime]] = []
        self._host_limits: dict[str, asyncio.Semaphore] = {}

    async def poll_due(
        self,
        *,
        on_start: Callable[[int], None] | None = None,
        on_feed_done: Callable[[FeedOutcome], None] | None = None,
    ) -> PollSummary:
        """Poll every due feed once and return a summary."""
        summary = PollSummary()
        started = asyncio.get_running_loop().time()
        now = self._clock()
        got = await asyncio.to_thread(
            acquire_lease,
            self._engine,
            POLLER_LEASE,
            self._holder,
            ttl=self._policy.lease_ttl,
            now=now,
        )
        if not got:
            log.info("another poller holds the lease; skipping this pass")
            summary.skipped_lease = True
            return summary
        try:
            jobs = await asyncio.to_thread(self._load_due, now)
            if on_start is not None:
                on_start(len(jobs))
            summary.feeds = len(jobs)
            gate = asyncio.Semaphore(self._policy.concurrency)

            async def run(job: _FeedJob) -> None:
                # The host's gate first: feeds queued behind a slow host must not hold the
                # global slots that feeds on other hosts could use meanwhile.
                async with self._host_gate(job.url), gate:
                    try:
                        outcome = await self._poll_one(job)
                    except Exception as exc:  # noqa: BLE001 - one feed must not end the pass
                        # A bug or a row the database refuses: inside the TaskGroup it would
                        # cancel every other feed's poll, pass after pass, since this feed would
                        # stay due. Count it as the feed's failure instead, so it backs off.
                        log.exception("feed %s (%s): unexpected error", job.id, job.url)
                        async with self._write_lock:
                            outcome = await asyncio.to_thread(
                                self._record_crash, job, f"{type(exc).__name__}: {exc}"[:300]
                            )
                self._count(summary, outcome)
                if on_feed_done is not None:
                    on_feed_done(outcome)

            keep = renewing(
                self._engine,
                POLLER_LEASE,
                self._holder,
                ttl=self._policy.lease_ttl,
                clock=self._clock,
            )
            async with keep, asyncio.TaskGroup() as tg:
                for job in jobs:
                    tg.create_task(run(job))
        finally:
            try:
                await self._flush_unchanged()
            finally:
                await asyncio.to_thread(release_lease, self._engine, POLLER_LEASE, self._holder)
        summary.elapsed = asyncio.get_running_loop().time() - started
        return summary

    def _host_gate(self, url: str) -> asyncio.Semaphore:
        host = (urlsplit(url).hostname or "").lower()
        gate = self._host_limits.get(host)
        if gate is None:
            gate = self._host_limits[host] = asyncio.Semaphore(self._policy.per_host_concurrency)
        return gate

    @staticmethod
    def _count(summary: PollSummary, outcome: FeedOutcome) -> None:
        summary.new_articles += outcome.new_articles
        if outcome.outcome == FetchOutcome.OK.value:
            summary.ok += 1
        elif outcome.outcome == FetchOutcome.NOT_MODIFIED.value:
            summary.not_modified += 1
        else:
            summary.failed += 1
        if outcome.disabled:
            summary.disabled.append(outcome)

    def _load_due(self, now: datetime) -> list[_FeedJob]:
        with session_scope(self._engine) as session:
            return [
                _FeedJob(f.id, f.url, f.name, f.etag, f.last_modified)  # type: ignore[arg-type]
                for f in due_feeds(session=session, now=now)
            ]

    async def _poll_one(self, job: _FeedJob) -> FeedOutcome:
        result = await fetch_feed(
            self._client,
            job.url,
            etag=job.etag,
            last_modified=job.last_modified,
            limits=self._policy.limits,
        )
        parsed: ParsedFeed | None = None
        parse_error: str | None = None
        fetched_at = self._clock()
        if result.outcome is FetchOutcome.OK and result.body is not None:
            parse = functools.partial(
                parse_feed,
                result.body,
                url=result.final_url,
                content_type=result.content_type,
                fetched_at=fetched_at,
            )
            try:
                # feedparser is CPU-bound: worker processes when given, else a thread.
                parsed = await asyncio.get_running_loop().run_in_executor(self._parsers, parse)
            except NotAFeed as exc:
                parse_error = str(exc)
        if (
            result.outcome is FetchOutcome.NOT_MODIFIED
            and not result.permanent_url
            and not _new_validators(job, result)
        ):
            self._unchanged.append((job.id, fetched_at))
            if len(self._unchanged) >= UNCHANGED_BATCH:
                await self._flush_unchanged()
            return FeedOutcome(job.id, job.url, result.outcome.value, 0, None, False)
        async with self._write_lock:
            return await asyncio.to_thread(
                self._record, job, result, parsed, parse_error, fetched_at
            )

    async def _flush_unchanged(self) -> None:
        if not self._unchanged:
            return
        batch, self._unchanged = self._unchanged, []
        async with self._write_lock:
            await asyncio.to_thread(self._record_unchanged, batch)

    def _record_unchanged(self, batch: list[tuple[int, datetime]]) -> None:
        """What _succeeded does, for many feeds that answered 304, in one statement."""
        table = Feed.__table__  # type: ignore[attr-defined]
        statement = (
            sa.update(table)
            .where(table.c.id == sa.bindparam("feed_id"), table.c.status == FeedStatus.ACTIVE)
            .values(
                last_polled_at=sa.bindparam("now"),
                last_success_at=sa.bindparam("now"),
                consecutive_failures=0,
                last_error=None,
                next_poll_at=sa.bindparam("next_poll"),
            )
        )
        interval = self._policy.interval
        with self._engine.begin() as conn:
            conn.execute(
                statement,
                [{"feed_id": i, "now": now, "next_poll": now + interval} for i, now in batch],
            )

    def _record(
        self,
        job: _FeedJob,
        result: FetchResult,
        parsed: ParsedFeed | None,
        parse_error: str | None,
        now: datetime,
    ) -> FeedOutcome:
        policy = self._policy
        with session_scope(self._engine) as session:
            feed = get_feed(job.id, session=session)
            if feed is None:  # removed while we were fetching
                return FeedOutcome(job.id, job.url, "removed", 0, None, False)
            feed.last_polled_at = now
            new_ids: list[int] = []
            outcome = result.outcome.value
            error = result.error
            # Follow a permanent move only to a feed: a 301 to a parked or broken page must not
            # rewrite the stored URL for good.
            landed = parsed is not None or result.outcome is FetchOutcome.NOT_MODIFIED
            if result.permanent_url and result.permanent_url != feed.url and landed:
                self._move_url(feed, result.permanent_url, session=session)
            if result.outcome is FetchOutcome.OK and parsed is not None:
                feed_source = feed.name or parsed.title or (urlsplit(feed.url).hostname or feed.url)
                new_ids = insert_articles(
                    feed.id,
                    [
                        NewArticle(
                            entry_key=e.entry_key,
                            canonical_url=e.canonical or None,
                            url=e.url or None,
                            title=e.title,
                            summary=e.summary,
                            source=e.source or feed_source,
                            author=e.author,
                            published_at=e.published,
                        )
                        for e in parsed.entries
                    ],
                    session=session,
                    fetched_at=now,
                )
                if parsed.title:
                    feed.title = parsed.title[:500]
                if parsed.site_url:
                    feed.site_url = parsed.site_url[:2048]
                feed.etag = result.etag
                feed.last_modified = result.last_modified
                self._succeeded(feed, now)
                for warning in parsed.warnings[:1]:
                    log.info("feed %s (%s) parsed with a warning: %s", feed.id, feed.url, warning)
                if parsed.skipped:
                    log.info(
                        "feed %s (%s): skipped %d item(s) with neither a title nor any text",
                        feed.id,
                        feed.url,
                        parsed.skipped,
                    )
            elif result.outcome is FetchOutcome.NOT_MODIFIED:
                # a 304 (or an empty 200) may name the version it stands for: ask with that next
                feed.etag = result.etag or feed.etag
                feed.last_modified = result.last_modified or feed.last_modified
                self._succeeded(feed, now)
            elif result.outcome is FetchOutcome.GONE:
                self._disable(
                    feed, f"the server says the feed is gone ({result.error or 'HTTP 410'})"
                )
            else:
                if parse_error is not None:
                    outcome, error = "not_a_feed", parse_error
                delay = None
                if result.outcome is FetchOutcome.RATE_LIMITED and result.retry_after is not None:
                    delay = max(result.retry_after, policy.interval)
                self._failed(feed, error or outcome, now, delay)
            disabled = self._disabled_now(feed, session)
            session.add(feed)
            if error and outcome not in (FetchOutcome.OK.value, FetchOutcome.NOT_MODIFIED.value):
                log.warning(
                    "feed %s (%s) failed (%d in a row): %s",
                    feed.id,
                    feed.url,
                    feed.consecutive_failures,
                    error,
                )
            return FeedOutcome(job.id, feed.url, outcome, len(new_ids), error, disabled)

    def _record_crash(self, job: _FeedJob, error: str) -> FeedOutcome:
        """A failure for a feed whose poll raised; what it fetched is fetched again later."""
        now = self._clock()
        with session_scope(self._engine) as session:
            feed = get_feed(job.id, session=session)
            if feed is None:
                return FeedOutcome(job.id, job.url, "removed", 0, None, False)
            feed.last_polled_at = now
            self._failed(feed, f"internal error: {error}", now, None)
            session.add(feed)
            disabled = self._disabled_now(feed, session)
            return FeedOutcome(job.id, feed.url, "error", 0, error, disabled)

    def _disabled_now(self, feed: Feed, session: Session) -> bool:
        """Whether recording this poll disabled the feed (only due, active feeds are polled);
        if so, `on_disabled` writes in the same transaction."""
        disabled = feed.status == FeedStatus.DISABLED
        if disabled and self._on_disabled is not None:
            self._on_disabled(feed, session)
        return disabled

    def _succeeded(self, feed: Feed, now: datetime) -> None:
        feed.last_success_at = now
        feed.consecutive_failures = 0
        feed.last_error = None
        feed.next_poll_at = now + self._policy.interval

    def _failed(self, feed: Feed, error: str, now: datetime, delay: timedelta | None) -> None:
        feed.consecutive_failures += 1
        feed.last_error = error[:500]
        if feed.consecutive_failures >= self._policy.failure_limit:
            self._disable(
                feed, f"{feed.consecutive_failures} failures in a row, last: {error}"[:500]
            )
            return
        feed.next_poll_at = now + (
            delay or backoff_delay(self._policy.interval, feed.consecutive_failures)
        )

    @staticmethod
    def _disable(feed: Feed, reason: str) -> None:
        feed.status = FeedStatus.DISABLED
        feed.disabled_reason = reason[:500]
        feed.last_error = reason[:500]
        feed.next_poll_at = None
        log.warning("feed %s (%s) disabled: %s", feed.id, feed.url, reason)

    @staticmethod
    def _move_url(feed: Feed, new_url: str, *, session: Session) -> None:
        other = find_feed(new_url, session=session)
        if other is not None and other.id != feed.id:
            log.warning(
                "feed %s moved permanently to %s, which is already feed %s; keeping the old URL",
                feed.id,
                new_url,
                other.id,
            )
            return
        log.info("feed %s moved permanently: %s -> %s", feed.id, feed.url, new_url)
        feed.url = new_url[:2048]
