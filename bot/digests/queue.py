"""Turns what is due into outbox rows, in the same transaction that records it as sent-to-queue.

Follower digests: a follow whose story has unsent articles, once the debounce says so, gets one
digest of exactly those articles, and its `last_digested_article_id` advances in the same commit.
Group digests: a chat whose `next_digest_at` has come gets the top stories of the last 24 hours,
and its next time moves on in the same commit. Running a tick twice queues nothing twice: the
follow advance is conditional and every row has a unique dedup key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from bot.digests.compose import (
    DigestArticle,
    StoryDigest,
    StoryUpdate,
    compose_group_digest,
    compose_story_digest,
)
from bot.digests.render import render_group_digest, render_story_digest, story_buttons
from bot.digests.schedule import (
    Debounce,
    digest_day,
    next_digest_at,
    parse_hhmm,
    parse_timezone,
    stored_timezone,
)
from store.articles import latest_story_articles, owed_articles, story_articles
from store.chats import chats_due_for_group_digest
from store.db import lock_rows, session_scope
from store.follows import PendingFollow, advance_follow, pending_follows
from store.models import Article, Chat, Story
from store.outbox import OutgoingPart, enqueue
from store.stories import get_story, top_story_coverage

log = logging.getLogger(__name__)

MAX_ARTICLES_PER_DIGEST = 50


@dataclass(frozen=True, slots=True)
class DigestPolicy:
    debounce: Debounce = field(default_factory=Debounce)
    group_size: int = 5


def keyboard_json(rows: Sequence[Sequence[tuple[str, str]]]) -> str:
    """Plain (label, callback_data) rows as Telegram's InlineKeyboardMarkup JSON."""
    return json.dumps(
        {"inline_keyboard": [[{"text": t, "callback_data": d} for t, d in row] for row in rows]}
    )


def digest_article(article: Article) -> DigestArticle:
    return DigestArticle(
        article_id=article.id,  # type: ignore[arg-type]
        title=article.title,
        summary=article.summary or "",
        url=article.url or "",
        source=article.source or "",
        published=article.published_at,
    )


def story_update(
    story: Story, articles: Sequence[Article], *, new_count: int = 0, outlet_count: int = 0
) -> StoryUpdate:
    return StoryUpdate(
        story_id=story.id,  # type: ignore[arg-type]
        headline=story.headline,
        total_articles=story.article_count,
        new_articles=tuple(digest_article(a) for a in articles),
        new_count=new_count,
        outlet_count=outlet_count,
    )


def story_digest_parts(
    story: Story, articles: Sequence[Article], *, new_count: int = 0, outlet_count: int = 0
) -> list[OutgoingPart]:
    """Rendered message parts for one story update; the buttons ride on the last part.
    `new_count` and `outlet_count` count the new articles and their outlets when more arrived
    than `articles` carries."""
    update = story_update(story, articles, new_count=new_count, outlet_count=outlet_count)
    chunks = render_story_digest(compose_story_digest(update))
    markup = keyboard_json(story_buttons(story.id, following=True))  # type: ignore[arg-type]
    return [
        OutgoingPart(text, reply_markup=markup if i == len(chunks) - 1 else None)
        for i, text in enumerate(chunks)
    ]


def queue_story_digests(engine: Engine, *, now: datetime, policy: DigestPolicy) -> int:
    """Queue a digest for every follow whose debounce has run out. Returns digests queued."""
    with session_scope(engine) as session:
        due = [
            p
            for p in pending_follows(session=session, now=now)
            if policy.debounce.due(
                first_unsent_at=p.first_unsent_at, last_unsent_at=p.last_unsent_at, now=now
            )
        ]
    by_update: dict[tuple[int, int, int, tuple[int, ...]], list[PendingFollow]] = defaultdict(list)
    for p in due:
        by_update[(p.story_id, p.last_digested_article_id, p.newest_article_id, p.owed)].append(p)
    queued = 0
    for (story_id, after_id, newest_id, owed), follows in by_update.items():
        with session_scope(engine) as session:
            queued += _queue_one_update(session, story_id, after_id, newest_id, owed, follows, now)
    return queued


def _queue_one_update(
    session: Session,
    story_id: int,
    after_id: int,
    newest_id: int,
    owed: tuple[int, ...],
    follows: Sequence[PendingFollow],
    now: datetime,
) -> int:
    # A merge locks both its stories' rows before it moves articles and follows (merge_stories):
    # locked here first, the merge either committed before the read below, and its articles are
    # in it, or waits, and then puts those below the watermark written here on the backlog.
    # Unlocked, a merge committing between this read and the advance moved articles into the
    # range this digest marks sent without their being in it.
    lock_rows(session, Story.__table__, [story_id])  # type: ignore[arg-type]
    story = get_story(story_id, session=session)
    if story is None or story.merged_into_id is not None:
        return 0  # merged away: the follow is pending on the survivor now
    unsent = [
        a for a in story_articles(story_id, session=session, after_id=after_id) if a.id <= newest_id
    ]
    if owed:  # a merge brought these in below the watermark (see merge_stories)
        unsent = sorted([*owed_articles(story_id, owed, session=session), *unsent], key=_by_id)
    articles = unsent[-MAX_ARTICLES_PER_DIGEST:]
    if not articles:
        return 0  # merged away since the read: the follow is pending on the survivor now
    parts = story_digest_parts(story, articles, new_count=len(unsent))
    # the count too: a merge can bring older articles into the same range of ids
    key = f"{story_id}:{after_id}-{newest_id}:{len(unsent)}"
    if owed:
        key += ":" + hashlib.sha256(",".join(map(str, owed)).encode()).hexdigest()[:16]
    queued = 0
    for follow in follows:
        if not advance_follow(
            follow.follow_id, after_id, newest_id, story_id=story_id, session=session, owed=owed
        ):
            continue  # another tick, or a merge, got there first
        enqueue(
            follow.chat_id,
            parts,
            session=session,
            kind="story_digest",
            story_id=story_id,
            dedup_key=f"story:{follow.chat_id}:{key}",
            now=now,
        )
        queued += 1
    return queued


def _by_id(article: Article) -> int:
    return article.id  # type: ignore[return-value]


def _days_articles(story: Story, *, since: datetime, session: Session) -> list[Article]:
    """The story's latest articles published since `since`, oldest first: a long-running story's
    older articles would otherwise outvote the day's news in its one sentence."""
    latest = latest_story_articles(story.id, session=session, limit=10)  # type: ignore[arg-type]
    recent = [a for a in latest if a.published_at >= since]
    return list(reversed(recent or latest[:1]))


@dataclass(frozen=True, slots=True)
class GroupDigestContent:
    """The day's top stories, composed: the same for every group due in one tick."""

    story_ids: tuple[int, ...]
    digests: tuple[StoryDigest, ...]


def group_digest_content(session: Session, *, now: datetime, size: int) -> GroupDigestContent:
    since = now - timedelta(hours=24)
    top = top_story_coverage(session=session, since=since, limit=size)
    updates = [
        story_update(
            c.story,
            _days_articles(c.story, since=since, session=session),
            new_count=c.articles,
            outlet_count=c.sources,
        )
        for c in top
    ]
    return GroupDigestContent(
        tuple(c.story.id for c in top),  # type: ignore[misc]
        compose_group_digest(updates),
    )


def group_digest_parts(content: GroupDigestContent, *, title: str) -> list[OutgoingPart]:
    """The group digest's message parts, under the group's own title (its local date)."""
    if not content.story_ids:
        return []
    chunks = render_group_digest(content.digests, title=title)
    markup = keyboard_json([[(f"Follow #{i}", f"fol:{i}")] for i in content.story_ids])
    return [
        OutgoingPart(text, reply_markup=markup if i == len(chunks) - 1 else None)
        for i, text in enumerate(chunks)
    ]


def queue_group_digests(engine: Engine, *, now: datetime, policy: DigestPolicy) -> int:
    """Queue the daily digest of every group whose local digest time has come."""
    queued = 0
    with session_scope(engine) as session:
        chat_ids = [c.id for c in chats_due_for_group_digest(session=session, now=now)]
    # Composed once for all of them: many groups share the default time.
    composed: list[GroupDigestContent] = []
    for chat_id in chat_ids:
        try:
            with session_scope(engine) as session:
                queued += _queue_group(session, chat_id, now=now, policy=policy, composed=composed)
        except _SettingsChanged:
            # rolled back, digest and all: the next tick decides under the new settings
            log.info("chat %s changed its digest settings meanwhile; deciding next tick", chat_id)
    return queued


class _SettingsChanged(Exception):
    pass


def _queue_group(
    session: Session,
    chat_id: int,
    *,
    now: datetime,
    policy: DigestPolicy,
    composed: list[GroupDigestContent],
) -> int:
    chat = session.get(Chat, chat_id)
    if chat is None or not chat.digest_enabled or chat.next_digest_at is None:
        return 0
    if chat.next_digest_at > now:
        return 0  # another tick already moved it on
    try:
        zone = stored_timezone(chat.timezone)
        at = parse_hhmm(chat.digest_time or "08:00")
    except ValueError:
        log.warning(
            "chat %s has a bad digest setting (%s %s); using UTC 08:00",
            chat_id,
            chat.timezone,
            chat.digest_time,
        )
        zone, at = parse_timezone("UTC"), parse_hhmm("08:00")
    # The day whose digest time was the latest to pass: after downtime that is today, not the
    # day the digest was first due (one digest catches up, under the date it covers).
    day = digest_day(at, zone, until=now)
    title = f"Top stories — {day.strftime('%a %d %b %Y')}"
    if not composed:
        composed.append(group_digest_content(session, now=now, size=policy.group_size))
    parts = group_digest_parts(composed[0], title=title)
    queued = 0
    if parts:
        queued = enqueue(
            chat_id,
            parts,
            session=session,
            kind="group_digest",
            dedup_key=f"group:{chat_id}:{day.isoformat()}",
            now=now,
        )
        queued = 1 if queued else 0
    # Compare-and-set on the settings this was decided under: an admin's change committed since
    # (a new time, zone, or off) must not be overwritten with a schedule made for the old ones.
    table = Chat.__table__
    moved = session.connection().execute(
        sa.update(table)
        .where(table.c.id == chat_id)
        .where(table.c.next_digest_at == chat.next_digest_at)
        .where(table.c.digest_enabled.is_(True))
        .where(table.c.digest_time.is_not_distinct_from(chat.digest_time))
        .where(table.c.timezone == chat.timezone)
        .values(next_digest_at=next_digest_at(at, zone, after=now))
    )
    if moved.rowcount != 1:
        raise _SettingsChanged(chat_id)
    return queued
