"""match numbers: the keyword step follows the order matches commit in, not the articles' ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_article = sa.table(
    "article",
    sa.column("id"),
    sa.column("story_id"),
    sa.column("match_seq"),
    sa.column("first_match_seq"),
)
_watermark = sa.table(
    "watermark",
    sa.column("name"),
    sa.column("position"),
    sa.column("updated_at", store.models.UTCDateTime(timezone=True)),
)


def _position(name: str) -> int | None:
    query = sa.select(_watermark.c.position).where(_watermark.c.name == name)
    return op.get_bind().execute(query).scalar()


def _set_position(name: str, position: int) -> None:
    op.execute(
        _watermark.update()
        .where(_watermark.c.name == name)
        .values(position=position, updated_at=store.models.utcnow())
    )


def upgrade() -> None:
    op.add_column(
        "article",
        sa.Column("match_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "article",
        sa.Column("first_match_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index("ix_article_match_seq", "article", ["match_seq"], unique=False)
    # The keyword step had checked the stories of the articles up to its watermark, an article
    # id: those keep number 0, so no old story is followed again. The articles matched above it
    # (a crash before the step) take number 1, and the step starts from 0, so it checks them.
    checked = _position("topics")
    if checked is not None:
        op.execute(
            _article.update()
            .where(_article.c.story_id.is_not(None), _article.c.id > checked)
            .values(match_seq=1, first_match_seq=1)
        )
        _set_position("topics", 0)
    op.bulk_insert(
        _watermark, [{"name": "matching", "position": 1, "updated_at": store.models.utcnow()}]
    )


def downgrade() -> None:
    # Back to an article id: just below the first article matched after the step's number, or
    # not matched yet, so that none is left unchecked (some checked twice, which follows nothing
    # twice). Upgrading again counts every matched article above that id as news to a follow the
    # step then makes, older ones a merge moved among them too: article ids cannot tell them
    # apart.
    checked = _position("topics") or 0
    bind = op.get_bind()
    ahead = sa.select(sa.func.min(_article.c.id)).where(
        sa.or_(_article.c.story_id.is_(None), _article.c.match_seq > checked)
    )
    first = bind.execute(ahead).scalar()
    if first is None:
        first = (bind.execute(sa.select(sa.func.max(_article.c.id))).scalar() or 0) + 1
    _set_position("topics", first - 1)
    op.execute(_watermark.delete().where(_watermark.c.name == "matching"))
    with op.batch_alter_table("article", schema=None) as batch_op:
        batch_op.drop_index("ix_article_match_seq")
        batch_op.drop_column("match_seq")
        batch_op.drop_column("first_match_seq")
