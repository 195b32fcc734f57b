"""Article queries. Inserts lean on the unique constraints (feed+entry key, canonical URL), so the
same entry polled twice, or the same URL seen in two feeds, is stored once even under a race;
one page that several items of a feed share is not (see `_sharing_a_page`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from store.models import Article
from store.watermarks import MATCHING, advance_watermark

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewArticle:
    entry_key: str
    canonical_url: str | None
    url: str | None
    title: str
    summary: str
    source: str
    author: str
    published_at: datetime


def _insert_ignoring_duplicates(dialect: str):  # type: ignore[no-untyped-def]
    table = Article.__table__
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database dialect {dialect}")


def insert_articles(
    feed_id: int | None,
    articles: Sequence[NewArticle],
    *,
    session: Session,
    fetched_at: datetime,
) -> list[int]:
    """Insert what is new; return the ids of the rows actually inserted, in input order."""
    if not articles:
        return []
    dialect = session.get_bind().dialect.name
    rows = [
        {
            "feed_id": feed_id,
            "entry_key": a.entry_key[:1024],
            "canonical_url": a.canonical_url[:2048] if a.canonical_url else None,
            "url": a.url[:2048] if a.url else None,
            "title": a.title[:500],
            "summary": a.summary,
            "source": a.source[:200],
            "author": a.author[:200],
            "published_at": a.published_at,
            "fetched_at": fetched_at,
        }
        for a in articles
    ]
    table = Article.__table__
    if feed_id is None:
        # The unique constraint cannot catch these: NULL feed ids are all distinct to it.
        rows = _without_known_feedless(rows, session=session)
    inserted: dict[str, int] = {}
    # One row per statement keeps RETURNING unambiguous when a batch holds internal duplicates.
    stmt = _insert_ignoring_duplicates(dialect).returning(table.c.id, table.c.entry_key)

    def insert(row: dict) -> None:
        got = session.execute(stmt, row).first()
        if got is not None:  # else a duplicate, ignored
            inserted[got.entry_key] = got.id

    try:
        with session.begin_nested():
            for row in rows:
                insert(row)
    except (sa.exc.IntegrityError, sa.exc.DataError):
        # The database refused a row (a value it cannot store). Rolled back together, the rows
        # it could store would be lost too, and the same refusal would fail the feed every poll
        # until it is disabled: store them one by one instead, and name the one left out.
        inserted.clear()
        for row in rows:
            try:
                with session.begin_nested():
                    insert(row)
            except (sa.exc.IntegrityError, sa.exc.DataError) as exc:
                log.warning(
                    "feed %s: the database refused entry %r (%s); it is left out",
                    feed_id,
                    row["entry_key"][:200],
                    str(exc.orig).splitlines()[0][:200],
                )
    if feed_id is not None:
        for row in _sharing_a_page(
            feed_id, [r for r in rows if r["entry_key"] not in inserted], session=session
        ):
            with session.begin_nested():
                insert({**row, "canonical_url": None})
    return [inserted[r["entry_key"]] for r in rows if r["entry_key"] in inserted]


def _sharing_a_page(feed_id: int, ignored: list[dict], *, session: Session) -> list[dict]:
    """Rows ignored only because an earlier item of the same feed, with another key and another
    title, has their link: one page that several items share (a show page, one new episode a
    poll). The parser sees such sharing within one poll; this is the same rule across polls.
    The same link in another feed is still the same article."""
    linked = {r["canonical_url"]: r for r in ignored if r["canonical_url"]}
    if not linked:
        return []
    known_keys = set(
        session.exec(
            select(Article.entry_key)
            .where(Article.feed_id == feed_id)
            .where(col(Article.entry_key).in_([r["entry_key"] for r in linked.values()]))
        )
    )
    holders = session.exec(
        select(Article.canonical_url, Article.entry_key, Article.title)
        .where(Article.feed_id == feed_id)
        .where(col(Article.canonical_url).in_(list(linked)))
    ).all()
    shared = []
    for url, key, title in holders:
        row = linked[url]  # type: ignore[index]
        if (
            row["entry_key"] not in known_keys
            and key != row["entry_key"]
            and title.strip().casefold() != row["title"].strip().casefold()
        ):
            shared.append(row)
    return shared


def _without_known_feedless(rows: list[dict], *, session: Session) -> list[dict]:
    """The rows whose entry key no stored feedless article has, each key once."""
    keys = {r["entry_key"] for r in rows}
    known = set(
        session.exec(
            select(Article.entry_key)
            .where(col(Article.feed_id).is_(None))
            .where(col(Article.entry_key).in_(keys))
        )
    )
    fresh = []
    for row in rows:
        if row["entry_key"] not in known:
            known.add(row["entry_key"])
            fresh.append(row)
    return fresh


_MATCH_SEQ = "storywire.match_seq"  # session.info key: (transaction, its match number)


def match_seq(*, session: Session) -> int:
    """The match number of the session's transaction, stamped on every article whose story it
    sets or changes (`Article.match_seq`): taken from the MATCHING watermark on first use, the
    same number after.

    Numbers commit in the order they are handed out (see advance_watermark): a step that reads
    the articles matched after a number it has seen misses none committed late. Taking it locks
    the counter until the transaction ends, which makes two instances matching at once take
    turns; one number per transaction, not per article, costs one round trip per batch."""
    held = session.info.get(_MATCH_SEQ)
    if held is not None and held[0] is session.get_transaction():
        return int(held[1])
    if session.in_nested_transaction():
        # a savepoint rolled back would hand the same number out again, to a later commit
        raise RuntimeError("a match number is taken outside savepoints")
    seq = advance_watermark(MATCHING, session=session)
    session.info[_MATCH_SEQ] = (session.get_transaction(), seq)
    return seq


def assign_article(article_id: int, story_id: int, *, session: Session) -> bool:
    """Put a story-less article in a story; False if it has one already (another instance
    matched it first: the caller's matcher memory is out of date)."""
    table = Article.__table__
    seq = match_seq(session=session)
    # the table, not the ORM entity: a plain UPDATE, without the ORM's per-call bookkeeping
    result = session.connection().execute(
        sa.update(table)
        .where(table.c.id == article_id)
        .where(table.c.story_id.is_(None))
        .values(story_id=story_id, match_seq=seq, first_match_seq=seq)
    )
    return result.rowcount == 1


def unassigned_articles(*, session: Session, limit: int = 500) -> Sequence[Article]:
    """Articles not yet matched to a story, in arrival order."""
    return session.exec(
        select(Article)
        .where(col(Article.story_id).is_(None))
        .order_by(col(Article.id))
        .limit(limit)
    ).all()


def stories_matched_after(seq: int, *, session: Session) -> tuple[list[int], int]:
    """The stories of the articles matched (or moved by a merge) after match number `seq`, and
    the number up to which those run: the highest among them, `seq` if there are none.

    One read, so the stories and the number agree; numbers commit in order (see match_seq), so
    none up to that one is still to come. Grouped here, not by the database: SQLite would answer
    a GROUP BY story_id by scanning the story_id index, the whole table, under the write lock
    the step holds, rather than the match_seq index to the few rows above `seq`."""
    table = Article.__table__
    rows = session.execute(
        sa.select(table.c.story_id, table.c.match_seq).where(table.c.match_seq > seq)
    ).all()
    upto = max((int(number) for _, number in rows), default=seq)
    return sorted({story for story, _ in rows if story is not None}), upto


@dataclass(frozen=True, slots=True)
class StoryNews:
    """A story's articles first matched after a match number, as a follow starting there is owed
    them: those above `mark`, and `below` (matched late under a lower id, by a second writer)."""

    mark: int  # the newest of the story's articles first matched up to the number; 0 if none
    below: tuple[int, ...]  # article ids, ascending


def story_news(story_id: int, seq: int, *, session: Session, limit: int) -> StoryNews:
    """The story's articles first matched after match number `seq`; of those below the mark,
    the newest `limit`. Articles a merge moved in keep their first number: the history of the
    absorbed story is not news to a follow made now, as it is not to one made by id."""
    table = Article.__table__
    in_story = table.c.story_id == story_id
    mark = session.execute(
        sa.select(sa.func.max(table.c.id)).where(in_story, table.c.first_match_seq <= seq)
    ).scalar()
    if mark is None:
        return StoryNews(0, ())
    below = session.execute(
        sa.select(table.c.id)
        .where(in_story, table.c.first_match_seq > seq, table.c.id < mark)
        .order_by(table.c.id.desc())
        .limit(limit)
    ).scalars()
    return StoryNews(int(mark), tuple(sorted(below)))


def articles_since(*, session: Session, since: datetime) -> Sequence[Article]:
    """Every article of the stories with an article published since `since`, in arrival order:
    the stories the matcher holds active, whole, replayed the way the live process built them
    (a story cut at `since` would be rebuilt smaller and then stored with the smaller count)."""
    recent = (
        sa.select(Article.story_id)
        .where(col(Article.story_id).is_not(None))
        .where(col(Article.published_at) >= since)
        .distinct()
    )
    return session.exec(
        select(Article).where(col(Article.story_id).in_(recent)).order_by(col(Article.id))
    ).all()


def summaries_before(*, session: Session, since: datetime, limit: int) -> Sequence[Article]:
    """The newest `limit` matched articles with a summary among the stories that
    articles_since(since) leaves out, in arrival order: what a rebuilt matcher learns feed
    boilerplate from (see StoryMatcher.learn) before it replays the active stories."""
    recent = (
        sa.select(Article.story_id)
        .where(col(Article.story_id).is_not(None))
        .where(col(Article.published_at) >= since)
        .distinct()
    )
    newest = session.exec(
        select(Article)
        .where(col(Article.story_id).is_not(None))
        .where(col(Article.story_id).not_in(recent))
        .where(col(Article.summary) != "")
        .order_by(col(Article.id).desc())
        .limit(limit)
    ).all()
    return newest[::-1]


def owed_articles(story_id: int, ids: Sequence[int], *, session: Session) -> Sequence[Article]:
    """The articles with these ids still in the story, in arrival order."""
    return session.exec(
        select(Article)
        .where(col(Article.id).in_(list(ids)))
        .where(Article.story_id == story_id)
        .order_by(col(Article.id))
    ).all()


def story_articles(
    story_id: int, *, session: Session, after_id: int = 0, limit: int | None = None
) -> Sequence[Article]:
    """A story's articles with id > after_id, oldest first."""
    stmt = (
        select(Article)
        .where(Article.story_id == story_id)
        .where(col(Article.id) > after_id)
        .order_by(col(Article.id))
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return session.exec(stmt).all()


def latest_story_articles(story_id: int, *, session: Session, limit: int = 10) -> Sequence[Article]:
    return session.exec(
        select(Article)
        .where(Article.story_id == story_id)
        .order_by(col(Article.published_at).desc(), col(Article.id).desc())
        .limit(limit)
    ).all()


def count_articles(*, session: Session) -> int:
    return int(session.execute(sa.select(sa.func.count()).select_from(Article)).scalar_one())
