"""The `storywire` command. Each subcommand builds Settings, opens the store and does one job."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from bot.config import Settings, SettingsError, load_settings

log = logging.getLogger("storywire")


class CommandError(Exception):
    """A user error: printed as one line, exit status 1."""


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO, and Bot API URLs carry the token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The JobQueue's scheduler logs every tick at INFO.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def open_engine(settings: Settings) -> Engine:
    """The engine for DATABASE_URL with the schema migrated to head; CommandError if it cannot
    be opened (no driver, unknown kind, server down), naming the setting."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import NoSuchModuleError, OperationalError

    from store.db import make_engine
    from store.migrate import upgrade

    url = settings.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        engine = make_engine(url)
    except NoSuchModuleError:
        raise CommandError(
            f"DATABASE_URL {shown!r} is no database Storywire knows: "
            "use sqlite:///path/to/file.db or postgresql://user@host/db"
        ) from None
    except ImportError as exc:
        raise CommandError(
            f"DATABASE_URL {shown!r} needs a driver that is not installed ({exc.name}): "
            "for PostgreSQL use postgresql://... and pip install 'storywire[postgres]'"
        ) from None
    except OSError as exc:
        raise CommandError(f"cannot create the database directory for {shown!r}: {exc}") from None
    try:
        upgrade(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise CommandError(
            f"cannot open the database at DATABASE_URL {shown!r}: {reason}"
        ) from None
    return engine


def _now() -> datetime:
    return datetime.now(UTC)


# --- feeds ------------------------------------------------------------------------------------


def _feed_name_limit() -> int:
    """The width of feed.name: PostgreSQL refuses a longer value, and the whole transaction."""
    from store.models import Feed

    return Feed.__table__.c.name.type.length  # type: ignore[attr-defined]


def cmd_feeds_add(settings: Settings, args: argparse.Namespace) -> int:
    from bot.feeds.urls import validate_feed_url
    from store.db import session_scope
    from store.feeds import add_feed, enable_feed, find_feed

    try:
        url = validate_feed_url(args.url)
    except ValueError as exc:
        raise CommandError(f"invalid feed URL {args.url!r}: {exc}") from None
    if args.name is not None and len(args.name) > _feed_name_limit():
        raise CommandError(f"--name is longer than {_feed_name_limit()} characters")
    engine = open_engine(settings)
    with session_scope(engine) as session:
        existing = find_feed(url, session=session)
        if existing is None:
            feed = add_feed(url, session=session, name=args.name, now=_now())
            print(f"added feed {feed.id}: {url}")
            return 0
        if enable_feed(existing, session=session, now=_now()):
            print(f"re-enabled feed {existing.id}: {url}")
            return 0
    raise CommandError(f"feed already registered: {url}")


def cmd_feeds_list(settings: Settings, args: argparse.Namespace) -> int:
    from store.db import session_scope
    from store.feeds import list_feeds_with_counts

    engine = open_engine(settings)
    with session_scope(engine) as session:
        rows = list_feeds_with_counts(session=session)
    if not rows:
        print("no feeds yet: add one with `storywire feeds add URL`")
        return 0
    table = [("ID", "STATUS", "LAST SUCCESS", "ARTICLES", "FAILS", "NAME / URL", "ERROR")]
    for row in rows:
        f = row.feed
        last = f.last_success_at.strftime("%Y-%m-%d %H:%M") if f.last_success_at else "never"
        label = f"{f.name or f.title or ''} {f.url}".strip()
        table.append(
            (
                str(f.id),
                f.status,
                last,
                str(row.article_count),
                str(f.consecutive_failures),
                label,
                (f.last_error or "")[:60],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1])
    return 0


def cmd_feeds_remove(settings: Settings, args: argparse.Namespace) -> int:
    from bot.feeds.urls import feed_lookup_keys
    from store.db import session_scope
    from store.feeds import find_feed, remove_feed

    engine = open_engine(settings)
    with session_scope(engine) as session:
        found = (find_feed(key, session=session) for key in feed_lookup_keys(args.feed))
        feed = next((f for f in found if f is not None), None)
        if feed is None:
            raise CommandError(f"no feed with id or URL {args.feed!r}")
        remove_feed(feed, session=session)
        print(f"removed feed {feed.id}: {feed.url}")
    return 0


def cmd_feeds_import(settings: Settings, args: argparse.Namespace) -> int:
    from bot.feeds.opml import FeedListError, read_feed_list_file
    from bot.feeds.urls import validate_feed_url
    from store.db import session_scope
    from store.feeds import add_feed, feed_ids_by_url

    path = Path(args.file)
    try:
        entries = read_feed_list_file(path)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    except FeedListError as exc:
        raise CommandError(f"{path}: {exc}") from None
    engine = open_engine(settings)
    added = existing = invalid = 0
    with session_scope(engine) as session:
        known = feed_ids_by_url(session=session)
        for entry in entries:
            where = f"{path}:{entry.line}" if entry.line else str(path)
            try:
                url = validate_feed_url(entry.url)
            except ValueError as exc:
                print(f"{where}: skipped {entry.url!r}: {exc}", file=sys.stderr)
                invalid += 1
                continue
            if url in known:
                existing += 1
                continue
            name = entry.title[: _feed_name_limit()] if entry.title else None
            feed = add_feed(url, session=session, name=name, now=_now())
            known[url] = feed.id  # type: ignore[assignment]
            added += 1
    print(f"imported {added} feeds ({existing} already present, {invalid} invalid)")
    return 1 if invalid and not added and not existing else 0


def cmd_feeds_export(settings: Settings, args: argparse.Namespace) -> int:
    from bot.feeds.opml import write_opml
    from store.db import session_scope
    from store.feeds import list_feeds

    engine = open_engine(settings)
    with session_scope(engine) as session:
        pairs = [(f.url, f.name or f.title) for f in list_feeds(session=session)]
    text = write_opml(pairs)
    if args.output and args.output != "-":
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"exported {len(pairs)} feeds to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# --- polling ----------------------------------------------------------------------------------


async def _poll_once(settings: Settings, engine: Engine, *, progress: bool) -> int:
    from tqdm import tqdm

    from bot.feeds.fetch import make_http_client
    from bot.feeds.poller import FeedPoller, parser_pool, poll_policy
    from store.db import DatabaseClock

    policy = poll_policy(settings)
    clock = DatabaseClock(engine)  # the leases it takes are compared with a running bot's
    await asyncio.to_thread(clock.sync)
    bar: tqdm | None = None

    def on_start(total: int) -> None:
        nonlocal bar
        bar = tqdm(total=total, unit="feed", file=sys.stderr, disable=not progress)

    def on_done(_outcome: object) -> None:
        if bar is not None:
            bar.update(1)

    parsers = parser_pool(settings.parse_processes)
    try:
        async with make_http_client(policy.limits) as client:
            poller = FeedPoller(engine, client, policy, clock=clock, parsers=parsers)
            summary = await poller.poll_due(on_start=on_start, on_feed_done=on_done)
    finally:
        if parsers is not None:
            parsers.shutdown()
    if bar is not None:
        bar.close()
    if summary.skipped_lease:
        raise CommandError("another Storywire process is polling right now; try again later")
    assigned = await assign_pending_stories(settings, engine, clock=clock)
    if assigned is None:
        print(summary.line() + ", articles left to the running instance to match")
    else:
        print(summary.line() + f", {assigned} articles matched to stories")
    for outcome in summary.disabled:
        print(f"disabled feed {outcome.feed_id} ({outcome.url}): {outcome.error}", file=sys.stderr)
    return 0


async def assign_pending_stories(
    settings: Settings, engine: Engine, *, clock: Callable[[], datetime] = _now
) -> int | None:
    """Match every stored article that has no story yet; returns how many were matched.

    None when another process (a running bot) holds the matcher lease: it matches them from its
    own memory, which a second matcher working beside it would leave out of date."""
    from bot.app import MATCHER_LEASE, MATCHER_LEASE_TTL, queue_topic_notice
    from bot.following import follow_matching_topics
    from bot.leases import renewing
    from bot.stories.service import StoryService
    from store.leases import acquire_lease, process_holder, release_lease

    holder = process_holder()
    lease = (engine, MATCHER_LEASE, holder)
    if not await asyncio.to_thread(acquire_lease, *lease, ttl=MATCHER_LEASE_TTL, now=clock()):
        return None
    try:
        async with renewing(*lease, ttl=MATCHER_LEASE_TTL, clock=clock):
            service = await asyncio.to_thread(
                StoryService.open, engine, window_hours=settings.story_window_hours, clock=clock
            )
            assignments = await asyncio.to_thread(service.assign_pending)
            # as the running bot does after matching: keywords follow the stories they match
            await asyncio.to_thread(
                follow_matching_topics,
                engine,
                now=clock(),
                on_follow=functools.partial(queue_topic_notice, now=clock()),
            )
            return len(assignments)
    finally:
        await asyncio.to_thread(release_lease, *lease)


def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    engine = open_engine(settings)
    if args.once:
        return asyncio.run(_poll_once(settings, engine, progress=not args.quiet))
    raise CommandError("continuous polling runs inside `storywire run`; use `poll --once` here")


def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from store.migrate import current_revision

    engine = open_engine(settings)
    print(f"database at revision {current_revision(engine)}")
    return 0


def cmd_cluster(settings: Settings, args: argparse.Namespace) -> int:
    from bot.stories.cluster import run_cluster

    return run_cluster(
        Path(args.input),
        output=args.output,
        database_url=args.database,
        window_hours=settings.story_window_hours,
        progress=not args.quiet,
    )


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import run

    settings.require_token()
    open_engine(settings)
    run(settings)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from bot.demo import main as demo_main

    return demo_main(settings)


# --- wiring -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storywire", description="Follow news stories, not feeds, in Telegram."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    feeds = sub.add_parser("feeds", help="manage the feeds Storywire polls")
    fsub = feeds.add_subparsers(dest="feeds_command", required=True, metavar="ACTION")
    p = fsub.add_parser("add", help="register a feed URL")
    p.add_argument("url")
    p.add_argument("--name", help="outlet name shown in digests")
    p.set_defaults(func=cmd_feeds_add)
    fsub.add_parser("list", help="table of feeds with status").set_defaults(func=cmd_feeds_list)
    p = fsub.add_parser("remove", help="remove a feed by id or URL")
    p.add_argument("feed")
    p.set_defaults(func=cmd_feeds_remove)
    p = fsub.add_parser("import", help="import an OPML file or a plain list of URLs")
    p.add_argument("file")
    p.set_defaults(func=cmd_feeds_import)
    p = fsub.add_parser("export", help="export feeds as OPML")
    p.add_argument("-o", "--output", default="-", help="file to write (default stdout)")
    p.set_defaults(func=cmd_feeds_export)

    p = sub.add_parser("poll", help="poll due feeds and match new articles to stories")
    p.add_argument("--once", action="store_true", help="one pass over the due feeds, then exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_poll)

    db = sub.add_parser("db", help="database maintenance")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("upgrade", help="apply schema migrations").set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("cluster", help="assign stories to articles in a JSONL file (offline)")
    p.add_argument("input", help="JSONL with id, title, published[, summary, source, url]")
    p.add_argument("-o", "--output", default="-", help="JSONL to write (default stdout)")
    p.add_argument("--database", help="database URL to keep (default: in memory)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("run", help="run the Telegram bot (needs TELEGRAM_BOT_TOKEN)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="offline demo on bundled feeds: prints the digests it sends")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"storywire: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return int(args.func(settings, args) or 0)
    except (CommandError, SettingsError) as exc:
        print(f"storywire: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
