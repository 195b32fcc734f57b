"""Stories with articles and the outbox they lead to, for the digest tests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import select

from store.articles import NewArticle, insert_articles
from store.chats import upsert_chat
from store.db import session_scope
from store.models import Article, OutboxMessage, Story

USER, GROUP = 7, -100  # a private chat and a group


def with_user_and_group(engine: Engine, at: datetime) -> Engine:
    """The database with the USER and GROUP chats recorded at `at`."""
    with session_scope(engine) as session:
        upsert_chat(USER, session=session, type="private", title=None, username=None, now=at)
        upsert_chat(GROUP, session=session, type="group", title="G", username=None, now=at)
    return engine


def add_articles(
    engine: Engine, story_id: int, n: int, at: datetime, tag: str = "", title_len: int = 0
) -> None:
    """`n` articles of the story published at `at`, from outlets 0..n-1; `title_len` pads the
    titles to that length (and adds a long summary) to make digests split."""
    with session_scope(engine) as session:
        for i in range(n):
            title = f"Storm update {tag}{i}: coast battered by winds"
            if title_len:
                title = (title + " " + "lorem ipsum dolor " * 40)[:title_len]
            [aid] = insert_articles(
                None,
                [
                    NewArticle(
                        f"{story_id}-{tag}{i}-{at.isoformat()}",
                        None,
                        f"https://n.example/{story_id}/{tag}{i}",
                        title,
                        ("summary " * 60) if title_len else "",
                        f"Outlet {i}",
                        "",
                        at,
                    )
                ],
                session=session,
                fetched_at=at,
            )
            session.get(Article, aid).story_id = story_id  # type: ignore[union-attr]
        story = session.get(Story, story_id)
        assert story is not None
        story.article_count += n
        story.source_count = max(story.source_count, n)
        story.last_published_at = at
        story.updated_at = at


def outbox_rows(engine: Engine) -> list[OutboxMessage]:
    with session_scope(engine) as session:
        return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.id)).all())
