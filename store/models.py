"""SQLModel tables. Unique constraints carry the dedup rules so that a race cannot insert twice.

Times are timezone-aware UTC in Python; `UTCDateTime` stores them portably (naive UTC on SQLite,
`timestamptz` on PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Ids are INTEGER columns: a larger number a user types is no row, and PostgreSQL refuses to even
# compare it with one ("integer out of range").
MAX_ROW_ID = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always round-trips as an aware UTC datetime."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _ts(*, nullable: bool = True, index: bool = False, default: bool = False) -> sa.Column:
    return sa.Column(
        UTCDateTime(),
        nullable=nullable,
        index=index,
        default=utcnow if default else None,
    )


# A feed's validators, as stored; the fetcher keeps none longer (bot.feeds.fetch.usable_validator).
ETAG_MAX_LENGTH = 512
LAST_MODIFIED_MAX_LENGTH = 128


class FeedStatus:
    ACTIVE = "active"
    DISABLED = "disabled"  # too many failures, or 410 Gone; an admin may re-enable
    PAUSED = "paused"  # switched off by an admin


class Feed(SQLModel, table=True):
    __tablename__ = "feed"

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(sa_column=sa.Column(sa.String(2048), nullable=False, unique=True))
    name: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=500)
    site_url: str | None = Field(default=None, max_length=2048)
    status: str = Field(default=FeedStatus.ACTIVE, max_length=16, index=True)
    etag: str | None = Field(default=None, max_length=ETAG_MAX_LENGTH)
    last_modified: str | None = Field(default=None, max_length=LAST_MODIFIED_MAX_LENGTH)
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    last_polled_at: datetime | None = Field(default=None, sa_column=_ts())
    last_success_at: datetime | None = Field(default=None, sa_column=_ts())
    next_poll_at: datetime | None = Field(default=None, sa_column=_ts(index=True))
    consecutive_failures: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    disabled_reason: str | None = Field(default=None, max_length=500)

    @property
    def display_name(self) -> str:
        return self.name or self.title or self.url


class Story(SQLModel, table=True):
    __tablename__ = "story"

    id: int | None = Field(default=None, primary_key=True)
    headline: str = Field(max_length=500)
    article_count: int = 0
    source_count: int = 0
    first_published_at: datetime = Field(sa_column=_ts(nullable=False))
    last_published_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    updated_at: datetime = Field(sa_column=_ts(nullable=False, default=True, index=True))
    # Set when the matcher merged this story into another: its articles and follows moved there,
    # and the id keeps working (old buttons, /story links) by resolving to the survivor.
    merged_into_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.ForeignKey("story.id", name="fk_story_merged_into", ondelete="SET NULL"),
            nullable=True,
        ),
    )


class Article(SQLModel, table=True):
    __tablename__ = "article"
    __table_args__ = (sa.UniqueConstraint("feed_id", "entry_key", name="uq_article_feed_entry"),)

    id: int | None = Field(default=None, primary_key=True)
    feed_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.ForeignKey("feed.id", ondelete="SET NULL"), nullable=True),
    )
    entry_key: str = Field(max_length=1024)
    # NULL when the entry has no link; unique otherwise, so one URL seen in two feeds is one article.
    canonical_url: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(2048), nullable=True, unique=True)
    )
    url: str | None = Field(default=None, max_length=2048)
    title: str = Field(max_length=500)
    summary: str = Field(default="", sa_column=sa.Column(sa.Text, nullable=False, default=""))
    source: str = Field(default="", max_length=200)
    author: str = Field(default="", max_length=200)
    published_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    fetched_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    story_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.ForeignKey("story.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    # The match number (store.articles.match_seq) of the transaction that last set story_id: a
    # step that follows the matches (the keyword step) reads the articles above its watermark,
    # and finds an article matched late, or moved by a merge, whatever its id. 0: never matched,
    # or matched before the keyword step had a watermark of these.
    match_seq: int = Field(
        default=0,
        sa_column=sa.Column(sa.BigInteger, nullable=False, server_default=sa.text("0"), index=True),
    )
    # The match number of the transaction that first put the article in a story: when matching
    # met it, which a merge moving it later does not change. A keyword follow's first digest holds
    # the articles that arrived since the step's last run by this, not the history a merge moved.
    first_match_seq: int = Field(
        default=0,
        sa_column=sa.Column(sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )


class ChatStatus:
    ACTIVE = "active"
    BLOCKED = "blocked"  # the user blocked the bot: deliveries paused until they talk to us again
    LEFT = "left"  # the bot was removed from the group
    MIGRATED = "migrated"  # the group became a supergroup; see migrated_to_chat_id


class Chat(SQLModel, table=True):
    __tablename__ = "chat"

    id: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    type: str = Field(max_length=16)  # private, group, supergroup, channel
    title: str | None = Field(default=None, max_length=256)
    username: str | None = Field(default=None, max_length=64)
    status: str = Field(default=ChatStatus.ACTIVE, max_length=16, index=True)
    timezone: str = Field(default="UTC", max_length=64)
    digest_enabled: bool = False
    digest_time: str | None = Field(default=None, max_length=5)  # local HH:MM
    next_digest_at: datetime | None = Field(default=None, sa_column=_ts(index=True))
    migrated_to_chat_id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    updated_at: datetime = Field(sa_column=_ts(nullable=False, default=True))


class Follow(SQLModel, table=True):
    """A chat following one story. Articles with id > last_digested_article_id are unsent."""

    __tablename__ = "follow"
    __table_args__ = (sa.UniqueConstraint("chat_id", "story_id", name="uq_follow_chat_story"),)

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger,
            sa.ForeignKey("chat.id", ondelete="CASCADE", onupdate="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    story_id: int = Field(
        sa_column=sa.Column(
            sa.ForeignKey("story.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    topic_id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.ForeignKey("topic_follow.id", ondelete="SET NULL"), nullable=True),
    )
    last_digested_article_id: int = 0
    muted_until: datetime | None = Field(default=None, sa_column=_ts())
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))


class FollowBacklog(SQLModel, table=True):
    """An article a follow is owed though its id is not above the follow's watermark: a merge
    brought it into the followed story after the chat was sent later ones. Sent with the next
    digest and then deleted, in the same transaction."""

    __tablename__ = "follow_backlog"

    follow_id: int = Field(
        sa_column=sa.Column(
            sa.ForeignKey("follow.id", ondelete="CASCADE"), primary_key=True, nullable=False
        )
    )
    article_id: int = Field(
        sa_column=sa.Column(
            sa.ForeignKey("article.id", ondelete="CASCADE"), primary_key=True, nullable=False
        )
    )
    # when the follow came to be owed it: the digest's debounce counts from here, not from when
    # the article was fetched (an hour before, say)
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))


class StoryOptOut(SQLModel, table=True):
    """A chat unfollowed this story: its keywords must not follow it again on their own."""

    __tablename__ = "story_opt_out"
    __table_args__ = (sa.UniqueConstraint("chat_id", "story_id", name="uq_opt_out_chat_story"),)

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger,
            sa.ForeignKey("chat.id", ondelete="CASCADE", onupdate="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    story_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("story.id", ondelete="CASCADE"), nullable=False)
    )
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))


class TopicFollow(SQLModel, table=True):
    """A chat following keywords: future stories whose headline matches are followed for it."""

    __tablename__ = "topic_follow"
    __table_args__ = (sa.UniqueConstraint("chat_id", "query_key", name="uq_topic_chat_query"),)

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(
        sa_column=sa.Column(
            sa.BigInteger,
            sa.ForeignKey("chat.id", ondelete="CASCADE", onupdate="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    query: str = Field(max_length=200)
    query_key: str = Field(max_length=200)  # normalised tokens, sorted and joined
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))


class OutboxStatus:
    PENDING = "pending"
    SENT = "sent"
    PARKED = "parked"  # the chat blocked the bot or left; resumes when the chat comes back
    DEAD = "dead"  # Telegram refused it for good (chat gone, message invalid even as plain text)


class OutboxMessage(SQLModel, table=True):
    """One message to send. Written in the same transaction that records it as due.

    `dedup_key` is unique, so the same digest can never be queued twice; a sender claims a row by
    setting `claimed_until` in a conditional UPDATE, so two senders never send the same row.
    """

    __tablename__ = "outbox_message"

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, index=True))
    kind: str = Field(max_length=32)  # story_digest, group_digest, notice
    story_id: int | None = Field(default=None, index=True)
    dedup_key: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, unique=True))
    part: int = 0  # index within a digest split into several messages
    text: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    parse_mode: str | None = Field(default="HTML", max_length=16)
    reply_markup: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = Field(default=None, sa_column=_ts())
    created_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
    sent_at: datetime | None = Field(default=None, sa_column=_ts())
    telegram_message_id: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    last_error: str | None = Field(default=None, max_length=500)

    __table_args__ = (sa.Index("ix_outbox_due", "status", "next_attempt_at"),)


class Lease(SQLModel, table=True):
    """A named lease in the database, so only one poller and one sender run at a time."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=100)
    expires_at: datetime = Field(sa_column=_ts(nullable=False))


class Watermark(SQLModel, table=True):
    """A position in the stream of matches (see store.watermarks): the last match number handed
    out ("matching"), and how far a step that follows the matches has got, so it resumes there
    after a crash (the keyword step, "topics": the stories of articles matched up to `position`
    were checked for topics)."""

    __tablename__ = "watermark"

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(default=0, sa_column=sa.Column(sa.BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=_ts(nullable=False, default=True))
