"""What the chat commands do, as plain functions over the store (handlers only parse and reply).

Each function opens its own transaction and returns plain data, so handlers can run it in a thread.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from rapidfuzz import fuzz, process
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from bot.digests.queue import MAX_ARTICLES_PER_DIGEST
from bot.digests.schedule import (
    digest_day,
    next_digest_at,
    parse_hhmm,
    parse_timezone,
    stored_timezone,
)
from store.articles import latest_story_articles, stories_matched_after, story_news
from store.chats import lock_chat, set_digest, set_timezone, upsert_chat
from store.db import session_scope
from store.follows import (
    active_topics,
    add_topic,
    chat_follows,
    chat_topics,
    clear_opt_out,
    find_topic,
    follow_story,
    get_follow,
    opt_out,
    opted_out_chats,
    owe_articles,
    remove_topic,
    set_follow_topic,
    topic_story_follows,
    unfollow_story,
)
from store.models import MAX_ROW_ID, Article, Chat, Story, TopicFollow
from store.outbox import cancel_story_digests, unpark_chat
from store.stories import lock_story, merged_story_ids, resolve_story, top_story_coverage
from store.watermarks import MATCHING, TOPICS, hold_watermark, move_watermark

TOPIC_MATCH = 90  # token_set_ratio of topic words against a headline: all words, minor spelling
MAX_QUERY = 200
MAX_STORY_ID_DIGITS = 12  # a longer number is no story id, and /follow takes it as topic words
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "this",
        "that",
        "it",
        "its",
        "into",
        "over",
        "after",
        "before",
        "new",
        "news",
    ]
)


@dataclass(frozen=True, slots=True)
class StoryCard:
    id: int
    headline: str
    article_count: int
    source_count: int
    last_published_at: datetime
    # for /top: the coverage it is ranked by, in the last 24 hours
    day_articles: int | None = None
    day_sources: int | None = None


@dataclass(frozen=True, slots=True)
class ArticleLink:
    title: str
    url: str | None
    source: str
    published_at: datetime


@dataclass(frozen=True, slots=True)
class StoryDetail:
    card: StoryCard
    latest: tuple[ArticleLink, ...]
    following: bool


def _card(story: Story) -> StoryCard:
    return StoryCard(
        story.id,  # type: ignore[arg-type]
        story.headline,
        story.article_count,
        story.source_count,
        story.last_published_at,
    )


def topic_key(text: str) -> str:
    """Normalised topic words, sorted: 'Nara  Summit!' and 'summit nara' are one topic."""
    words = [
        w for w in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()) if w not in _STOP
    ]
    return " ".join(sorted(dict.fromkeys(words)))[:MAX_QUERY]


def topic_matches(key: str, headline: str) -> bool:
    if not key:
        return False
    return fuzz.token_set_ratio(key, topic_key(headline)) >= TOPIC_MATCH


def record_chat(
    engine: Engine,
    chat_id: int,
    *,
    type: str,
    title: str | None,
    username: str | None,
    now: datetime,
    default_timezone: str,
) -> None:
    """First contact creates the chat; a chat that had blocked us and talks again resumes."""
    with session_scope(engine) as session:
        before = lock_chat(chat_id, session=session)  # the sender may be pausing it right now
        was_paused = before is not None and before.status != "active"
        upsert_chat(
            chat_id,
            session=session,
            type=type,
            title=title,
            username=username,
            now=now,
            default_timezone=default_timezone,
        )
        if was_paused:
            unpark_chat(chat_id, session=session, now=now)


def top(engine: Engine, *, now: datetime, limit: int) -> list[StoryCard]:
    """The last 24 hours' top stories, with the coverage they are ranked by."""
    with session_scope(engine) as session:
        top = top_story_coverage(session=session, since=now - timedelta(hours=24), limit=limit)
        return [
            dataclasses.replace(_card(c.story), day_articles=c.articles, day_sources=c.sources)
            for c in top
        ]


def story_detail(
    engine: Engine, story_id: int, *, chat_id: int, limit: int = 8
) -> StoryDetail | None:
    with session_scope(engine) as session:
        story = resolve_story(story_id, session=session)
        if story is None:
            return None
        story_id = story.id  # type: ignore[assignment]
        latest = tuple(
            ArticleLink(a.title, a.url, a.source, a.published_at)
            for a in latest_story_articles(story_id, session=session, limit=limit)
        )
        following = get_follow(chat_id, story_id, session=session) is not None
        return StoryDetail(_card(story), latest, following)


def search(
    engine: Engine, words: str, *, now: datetime, limit: int = 8, days: int = 7
) -> list[StoryCard]:
    """Stories of the last `days` whose headline matches the words, best first."""
    key = topic_key(words)
    if not key:
        return []
    with session_scope(engine) as session:
        stories = session.exec(
            select(Story)
            .where(col(Story.last_published_at) >= now - timedelta(days=days))
            .where(col(Story.merged_into_id).is_(None))
            .order_by(col(Story.last_published_at).desc())
            .limit(20000)
        ).all()
        choices = {s.id: topic_key(s.headline) for s in stories}
        ranked = process.extract(
            key, choices, scorer=fuzz.token_set_ratio, limit=limit * 3, score_cutoff=60
        )
        by_id = {s.id: s for s in stories}
        ordered = sorted(
            ranked,
            key=lambda r: (
                -r[1],
                -by_id[r[2]].source_count,
                -by_id[r[2]].last_published_at.timestamp(),
            ),
        )
        return [_card(by_id[r[2]]) for r in ordered[:limit]]


@dataclass(frozen=True, slots=True)
class FollowResult:
    story: StoryCard | None
    created: bool
    topic: str | None = None
    matched_now: tuple[StoryCard, ...] = ()
    ended: bool = False  # the story is past the matching window: no article can join it now


def follow_story_id(
    engine: Engine,
    chat_id: int,
    story_id: int,
    *,
    now: datetime,
    window: timedelta | None = None,
) -> FollowResult:
    """Follow a story from now on: articles already there are not sent again.

    A story with no article in the matching `window` is not followed (`ended`): the matcher
    only adds articles to active stories, so the promised digest could never come."""
    with session_scope(engine) as session:
        story = lock_story(story_id, session=session)  # a merge meanwhile would strand the follow
        if story is None:
            return FollowResult(None, False)
        if window is not None and story.last_published_at < now - window:
            return FollowResult(_card(story), False, ended=True)
        story_id = story.id  # type: ignore[assignment]
        newest = session.execute(
            sa.select(sa.func.max(Article.id)).where(col(Article.story_id) == story_id)
        ).scalar_one_or_none()
        follow, created = follow_story(
            chat_id, story_id, session=session, now=now, from_article_id=newest or 0
        )
        # asked for by name: wanted again, and for itself, so unfollowing a topic that followed
        # it first leaves it
        clear_opt_out(chat_id, story_id, session=session)
        if follow.topic_id is not None:
            set_follow_topic(follow, None, session=session)
        return FollowResult(_card(story), created)


def follow_topic(
    engine: Engine, chat_id: int, words: str, *, now: datetime, days: int = 2
) -> FollowResult:
    """Follow keywords: current matching stories are listed, future ones followed automatically."""
    key = topic_key(words)
    if not key:
        return FollowResult(None, False)
    with session_scope(engine) as session:
        _, created = add_topic(chat_id, words.strip()[:MAX_QUERY], key, session=session, now=now)
    matches = tuple(
        c
        for c in search(engine, words, now=now, limit=5, days=days)
        if topic_matches(key, c.headline)
    )
    return FollowResult(None, created, topic=words.strip()[:MAX_QUERY], matched_now=matches)


@dataclass(frozen=True, slots=True)
class Unfollowed:
    """What /unfollow stopped: a story (its headline) or a topic (its words as typed)."""

    name: str
    topic: bool = False
    stories: int = 0  # of a topic: the stories it had followed that the chat no longer follows


def unfollow(engine: Engine, chat_id: int, target: str, *, now: datetime) -> Unfollowed | None:
    """Unfollow a story id or a topic; returns what was unfollowed, or None."""
    with session_scope(engine) as session:
        # a longer number is no story id (nor fits the column): it can only be a topic's words
        if target.isdecimal() and len(target) <= MAX_STORY_ID_DIGITS:
            story = lock_story(int(target), session=session)
            story_id = story.id if story is not None else int(target)
            if not 0 < story_id <= MAX_ROW_ID:  # type: ignore[operator]
                return None
            if _stop_following(chat_id, story_id, session=session):  # type: ignore[arg-type]
                # so that keywords the chat follows do not follow it again on their own
                opt_out(chat_id, story_id, session=session, now=now)  # type: ignore[arg-type]
                return Unfollowed(story.headline if story else f"story {story_id}")
            return None
        key = topic_key(target)
        topic = find_topic(chat_id, key, session=session) if key else None
        if topic is None:
            return None
        stopped = _end_topic_follows(topic, session=session)
        remove_topic(chat_id, key, session=session)
        return Unfollowed(target.strip(), topic=True, stories=stopped)


def _end_topic_follows(topic: TopicFollow, *, session: Session) -> int:
    """End the story follows the topic made; returns how many ended.

    A story another of the chat's topics matches stays followed, for that topic now. No opt-out
    is recorded: the chat gave up the words, not the story, and following the words again (or
    other words that match it) should follow it again. Its digests still queued are dropped, as
    for a story unfollowed by id.
    """
    chat_id = topic.chat_id
    others = [t for t in chat_topics(chat_id, session=session) if t.id != topic.id]
    ended = 0
    for follow, story in topic_story_follows(topic.id, session=session):  # type: ignore[arg-type]
        keeper = next((t for t in others if topic_matches(t.query_key, story.headline)), None)
        if keeper is not None:
            set_follow_topic(follow, keeper.id, session=session)
            continue
        _stop_following(chat_id, follow.story_id, session=session)
        ended += 1
    return ended


def _stop_following(chat_id: int, story_id: int, *, session: Session) -> bool:
    """End the chat's follow of the story and drop its digests still queued (of stories merged
    into it, too); False if the chat did not follow it."""
    if not unfollow_story(chat_id, story_id, session=session):
        return False
    ids = [story_id, *merged_story_ids(story_id, session=session)]
    cancel_story_digests(chat_id, ids, session=session)
    return True


@dataclass(frozen=True, slots=True)
class Following:
    stories: tuple[StoryCard, ...]
    topics: tuple[str, ...]


def following(engine: Engine, chat_id: int) -> Following:
    with session_scope(engine) as session:
        stories = tuple(_card(s) for _, s in chat_follows(chat_id, session=session))
        topics = tuple(t.query for t in chat_topics(chat_id, session=session))
    return Following(stories, topics)


@dataclass(frozen=True, slots=True)
class DigestSetting:
    enabled: bool
    time: str | None
    timezone: str
    next_at: datetime | None


def digest_setting(engine: Engine, chat_id: int) -> DigestSetting | None:
    with session_scope(engine) as session:
        chat = session.get(Chat, chat_id)
        if chat is None:
            return None
        return DigestSetting(
            chat.digest_enabled, chat.digest_time, chat.timezone, chat.next_digest_at
        )


def _rescheduled(chat: Chat, at: time, zone: ZoneInfo, *, now: datetime) -> datetime:
    """When the group's next digest is due under a new time or zone.

    Normally the next time the local clock shows `at`. But when a running digest's new time has
    already passed today (08:00 moved to 06:00 at 07:00, Berlin to Helsinki at 07:55, New York
    to Tokyo in the evening, where it is tomorrow already), today's digest is due now: otherwise
    the change would skip a day. Only if today's digest is still owed, though: one set up in
    the afternoon ("/digest 08:00", then "/timezone") is due tomorrow, as the old schedule had it.
    If today's (that date's) digest went out already, its per-day dedup key drops the second one
    and the schedule just moves on.
    """
    upcoming = next_digest_at(at, zone, after=now)
    if not chat.digest_enabled or chat.next_digest_at is None:
        return upcoming
    today = now.astimezone(zone).date()
    owed = chat.next_digest_at.astimezone(_zone_or_utc(chat.timezone)).date() <= today
    passed_today = digest_day(at, zone, until=now) == today
    return now if owed and passed_today else upcoming


def _zone_or_utc(name: str) -> ZoneInfo:
    try:
        return stored_timezone(name)
    except ValueError:
        return parse_timezone("UTC")


def change_digest(
    engine: Engine, chat_id: int, *, enabled: bool, time_text: str | None, now: datetime
) -> DigestSetting:
    """Turn the daily digest on/off or set its local time (ValueError on a bad time)."""
    at = parse_hhmm(time_text) if time_text is not None else None
    with session_scope(engine) as session:
        chat = session.get(Chat, chat_id)
        if chat is None:
            raise LookupError(chat_id)
        hhmm = at.strftime("%H:%M") if at else (chat.digest_time or "08:00")
        next_at = (
            _rescheduled(chat, parse_hhmm(hhmm), _zone_or_utc(chat.timezone), now=now)
            if enabled
            else None
        )
        set_digest(chat, session=session, enabled=enabled, time_hhmm=hhmm, next_at=next_at, now=now)
        return DigestSetting(
            chat.digest_enabled, chat.digest_time, chat.timezone, chat.next_digest_at
        )


def change_timezone(engine: Engine, chat_id: int, name: str, *, now: datetime) -> DigestSetting:
    """Set the chat's time zone (ValueError on an unknown one); the next digest moves with it."""
    zone = parse_timezone(name)
    with session_scope(engine) as session:
        chat = session.get(Chat, chat_id)
        if chat is None:
            raise LookupError(chat_id)
        next_at = (
            _rescheduled(chat, parse_hhmm(chat.digest_time or "08:00"), zone, now=now)
            if chat.digest_enabled
            else None
        )
        set_timezone(chat, zone.key, session=session, next_at=next_at, now=now)
        return DigestSetting(
            chat.digest_enabled, chat.digest_time, chat.timezone, chat.next_digest_at
        )


TopicFollowed = Callable[[Session, int, StoryCard, str], None]


def follow_matching_topics(
    engine: Engine,
    story_ids: Sequence[int] = (),
    *,
    now: datetime,
    on_follow: TopicFollowed | None = None,
) -> list[tuple[int, StoryCard, str]]:
    """Follow, for every topic that matches a story matching changed, that story. Returns
    (chat_id, story, topic) for each follow created, so the chat can be told.

    The stories are those of the articles matched, or moved by a merge (a lone article's second
    look among them), since the last run: found from the "topics" watermark, over the match
    numbers that matching stamps on the articles it places, which this same transaction moves
    on. A crash between matching and this step, or matching by `storywire poll --once`, leaves
    them to the next run, not unchecked; so does a second writer committing late, as match
    numbers commit in order whatever the articles' ids. `story_ids` adds stories changed
    otherwise (without an article placed or moved).

    The follow's first digest holds the story's articles first matched since the last run, as a
    follow by id holds those after it: not the older articles a merge moved into the story. A
    chat that unfollowed the story, or a story merged into it, is not made to follow it again.
    Two processes running this at once take turns on the watermark.

    `on_follow(session, chat_id, story, topic)` runs for each follow created, in the same
    transaction: a notice queued there lands with its follow or not at all."""
    with session_scope(engine) as session:
        since = hold_watermark(TOPICS, session=session)
        # Then the match counter, before any story: matching takes it before its stories too,
        # so a second writer matching meanwhile (a lapsed lease, `cluster --database`) waits
        # here instead of locking stories in another order (a deadlock).
        hold_watermark(MATCHING, session=session)
        matched, upto = stories_matched_after(since, session=session)
        created = _follow_matching(
            sorted({*matched, *story_ids}),
            session=session,
            now=now,
            since=since,
            on_follow=on_follow,
        )
        move_watermark(TOPICS, upto, session=session, now=now)
    return created


def _follow_matching(
    story_ids: Sequence[int],
    *,
    session: Session,
    now: datetime,
    since: int,
    on_follow: TopicFollowed | None,
) -> list[tuple[int, StoryCard, str]]:
    if not story_ids:
        return []
    created: list[tuple[int, StoryCard, str]] = []
    topics = active_topics(session=session)
    if not topics:
        return []
    ids = list(story_ids)
    stories = [  # in slices: a long backlog must not pass the databases' limit on parameters
        story
        for at in range(0, len(ids), 1000)
        for story in session.exec(select(Story).where(col(Story.id).in_(ids[at : at + 1000])))
    ]
    # a story touched earlier in the batch may have been merged since: follow where it went
    live: dict[int, Story] = {}
    for story in stories:
        resolved = resolve_story(story.id, session=session) if story.merged_into_id else story
        if resolved is not None and resolved.merged_into_id is None:
            live[resolved.id] = resolved
    for candidate in sorted(live.values(), key=lambda s: s.id):
        matching = [t for t in topics if topic_matches(t.query_key, candidate.headline)]
        if not matching:
            continue
        # locked only now, when there is a follow to make: a merge meanwhile would strand it
        story = lock_story(candidate.id, session=session)  # type: ignore[arg-type]
        if story is None:
            continue
        stopped = opted_out_chats(
            [story.id, *merged_story_ids(story.id, session=session)],  # type: ignore[list-item]
            session=session,
        )
        news = story_news(
            story.id,  # type: ignore[arg-type]
            since,
            session=session,
            limit=MAX_ARTICLES_PER_DIGEST,
        )
        for topic in matching:
            if topic.chat_id in stopped:
                continue
            follow, new = follow_story(
                topic.chat_id,
                story.id,  # type: ignore[arg-type]
                session=session,
                now=now,
                topic_id=topic.id,
                from_article_id=news.mark,
            )
            if new:
                owe_articles(
                    [(follow.id, article) for article in news.below],  # type: ignore[misc]
                    session=session,
                    now=now,
                )
                created.append((topic.chat_id, _card(story), topic.query))
                if on_follow is not None:
                    on_follow(session, topic.chat_id, created[-1][1], topic.query)
    return created
