"""`storywire cluster`: assign stories to a JSONL file of articles, offline.

It runs the same StoryService as the live poller, over an in-memory database unless one is given,
so what the quality benchmark measures is what users get.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa
from tqdm import tqdm

from bot.stories.service import StoryService
from store.articles import NewArticle, insert_articles
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import Article

CHUNK = 500
KEY_PREFIX = "cluster:"
MAX_ID_CHARS = 1024 - len(KEY_PREFIX)  # the entry key column's length
# Later than this after the run started is a wrong date: it would expire every story before it.
FUTURE_SLACK = timedelta(days=1)
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # JSON escapes can make these; UTF-8 cannot store them
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # PostgreSQL refuses NUL


@dataclass(frozen=True, slots=True)
class InputArticle:
    id: str | int | float  # as given, echoed in the output
    article: NewArticle


def parse_line(line: str, *, now: datetime | None = None) -> InputArticle:
    """One JSONL record; raises ValueError with a short reason.

    `now`, when given, is the clock past which a publish time is refused as wrong."""
    if _SURROGATE.search(line):
        raise ValueError("not valid UTF-8")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    raw_id, title, published = obj.get("id"), obj.get("title"), obj.get("published")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, float)) or raw_id == "":
        raise ValueError("missing id (a string or a number)")
    if isinstance(raw_id, float) and not math.isfinite(raw_id):
        raise ValueError(f"id is not a finite number: {raw_id}")
    if len(str(raw_id)) > MAX_ID_CHARS:
        raise ValueError(f"id longer than {MAX_ID_CHARS} characters")
    if any(
        isinstance(v, str) and _SURROGATE.search(v)
        for v in (raw_id, title, obj.get("summary"), obj.get("source"), obj.get("url"))
    ):
        raise ValueError("text with a lone surrogate (not valid Unicode)")
    if isinstance(raw_id, str) and _CONTROL.search(raw_id):
        raise ValueError("id with control characters")
    title = " ".join(_CONTROL.sub(" ", title).split()) if isinstance(title, str) else ""
    if not title:
        raise ValueError("missing title")
    if not isinstance(published, str):
        raise ValueError("missing published")
    try:
        when = datetime.fromisoformat(published.strip())
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except ValueError:
        raise ValueError(f"published is not ISO 8601: {published[:40]!r}") from None
    except OverflowError:
        raise ValueError(f"published is out of range: {published[:40]!r}") from None
    if now is not None and when > now + FUTURE_SLACK:
        raise ValueError(f"published in the future: {published[:40]!r}")

    def text(key: str) -> str:
        value = obj.get(key)
        return _CONTROL.sub(" ", value).strip() if isinstance(value, str) else ""

    url = text("url") or None
    return InputArticle(
        raw_id,
        NewArticle(
            entry_key=f"{KEY_PREFIX}{raw_id}",
            canonical_url=None,  # input lines are articles already; two may share a URL
            url=url,
            title=title,
            summary=text("summary"),
            source=text("source"),
            author="",
            published_at=when,
        ),
    )


def run_cluster(
    input_path: Path,
    *,
    output: str = "-",
    database_url: str | None = None,
    window_hours: int = 48,
    progress: bool = True,
) -> int:
    """Cluster `input_path` ("-": stdin) and write `{"id", "story"}` lines in input order to
    `output` ("-": stdout). Returns the exit status."""
    try:
        source = _open_input(input_path)
    except OSError as exc:
        print(f"storywire: cannot read {input_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        # opened before the work, so a wrong path fails at once rather than after the whole run,
        # and emptied only once the input is read (it may be the input file itself)
        out: TextIO = sys.stdout if output == "-" else open(output, "a", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        _close_input(source)
        print(f"storywire: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return _cluster(source, out, database_url, window_hours, progress)
    finally:
        _close_input(source)
        if out is not sys.stdout:
            out.close()


def _open_input(path: Path) -> io.TextIOWrapper:
    binary = sys.stdin.buffer if str(path) == "-" else path.open("rb")
    # utf-8-sig drops a BOM at the start; bytes that are not UTF-8 become lone surrogates, which
    # parse_line reports as a bad line instead of the decoder ending the run
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape")


def _close_input(source: io.TextIOWrapper) -> None:
    if source.buffer is sys.stdin.buffer:
        source.detach()  # leave stdin itself open
    else:
        source.close()


def _cluster(
    source: TextIO, out: TextIO, database_url: str | None, window_hours: int, progress: bool
) -> int:
    now = datetime.now(UTC)
    try:
        engine = make_engine(database_url or "sqlite://")
        upgrade(engine)
    except (sa.exc.ArgumentError, sa.exc.OperationalError) as exc:
        print(f"storywire: cannot open the database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    service = StoryService.open(engine, window_hours=window_hours)
    order: list[str] = []
    key_to_id: dict[str, str | int | float] = {}
    skipped = 0
    pending: list[InputArticle] = []

    def flush() -> None:
        with session_scope(engine) as session:
            insert_articles(
                None,
                [p.article for p in pending],
                session=session,
                fetched_at=datetime.now(UTC),
            )
        service.assign_pending()
        bar.update(len(pending))
        pending.clear()

    with tqdm(unit="article", file=sys.stderr, disable=not progress) as bar:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                item = parse_line(line, now=now)
            except ValueError as exc:
                print(f"line {number}: skipped: {exc}", file=sys.stderr)
                skipped += 1
                continue
            if item.article.entry_key in key_to_id:
                print(f"line {number}: skipped: duplicate id {item.id!r}", file=sys.stderr)
                skipped += 1
                continue
            key_to_id[item.article.entry_key] = item.id
            order.append(item.article.entry_key)
            pending.append(item)
            if len(pending) >= CHUNK:
                flush()
        if pending:
            flush()

    with session_scope(engine) as session:
        stories = dict(
            session.execute(
                Article.__table__.select()
                .with_only_columns(Article.__table__.c.entry_key, Article.__table__.c.story_id)
                .where(Article.__table__.c.feed_id.is_(None))
            ).all()
        )
    if out is not sys.stdout:
        out.truncate(0)
    for key in order:
        out.write(json.dumps({"id": key_to_id[key], "story": stories.get(key)}) + "\n")
    if skipped:
        print(f"{skipped} lines skipped", file=sys.stderr)
    return 0
