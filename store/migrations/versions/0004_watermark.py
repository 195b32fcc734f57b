"""watermarks: the keyword step resumes from the last article it checked

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    watermark = op.create_table(
        "watermark",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # A database from before had its keyword step run after each pass: start from where the
    # matching is, not from the first article, which would follow every old story again.
    article = sa.table("article", sa.column("id"), sa.column("story_id"))
    matched = sa.select(sa.func.max(article.c.id)).where(article.c.story_id.is_not(None))
    position = op.get_bind().execute(matched).scalar() or 0
    op.bulk_insert(
        watermark,
        [{"name": "topics", "position": position, "updated_at": store.models.utcnow()}],
    )


def downgrade() -> None:
    op.drop_table("watermark")
