"""`storywire cluster`: assign stories to a JSONL file of articles, offline.

It runs the same StoryService as the live poller, over an in-memory database unless one is given,
so what the quality benchmark measures is what users get.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from bot.stories.service import StoryService
from store.articles import NewArticle, insert_articles
from store.db import make_engine, session_scope
from store.migrate import upgrade
from store.models import Article

CHUNK = 500


@dataclass(frozen=True, slots=True)
class InputArticle:
    id: str
    article: NewArticle


def parse_line(line: str) -> InputArticle:
    """One JSONL record; raises ValueError with a short reason."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    raw_id, title, published = obj.get("id"), obj.get("title"), obj.get("published")
    if raw_id is None or isinstance(raw_id, (dict, list)) or str(raw_id) == "":
        raise ValueError("missing id")
    if not isinstance(title, str) or not title.strip():
        raise ValueError("missing title")
    if not isinstance(published, str):
        raise ValueError("missing published")
    try:
        when = datetime.fromisoformat(published.strip())
    except ValueError:
        raise ValueError(f"published is not ISO 8601: {published[:40]!r}") from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)

    def text(key: str) -> str:
        value = obj.get(key)
        return value.strip() if isinstance(value, str) else ""

    url = text("url") or None
    return InputArticle(
        str(raw_id),
        NewArticle(
            entry_key=f"cluster:{raw_id}",
            canonical_url=None,  # input lines are articles already; two may share a URL
            url=url,
            title=" ".join(title.split()),
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
    """Cluster `input_path` and write `{"id", "story"}` lines in input order. Returns exit status."""
    try:
        source = input_path.open(encoding="utf-8")
    except OSError as exc:
        print(f"storywire: cannot read {input_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    engine = make_engine(database_url or "sqlite://")
    upgrade(engine)
    service = StoryService.open(engine, window_hours=window_hours)
    order: list[str] = []
    key_to_id: dict[str, str] = {}
    skipped = 0
    pending: list[InputArticle] = []

    def flush() -> None:
        with session_scope(engine) as session:
            inserted = insert_articles(
                None,
                [p.article for p in pending],
                session=session,
                fetched_at=datetime.now(UTC),
            )
        service.assign_pending()
        bar.update(len(inserted))
        pending.clear()

    with source, tqdm(unit="article", file=sys.stderr, disable=not progress) as bar:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                item = parse_line(line)
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
    out: TextIO = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    try:
        for key in order:
            out.write(json.dumps({"id": key_to_id[key], "story": stories.get(key)}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if skipped:
        print(f"{skipped} lines skipped", file=sys.stderr)
    return 0
