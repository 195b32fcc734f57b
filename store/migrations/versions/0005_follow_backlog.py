"""follow backlog: articles a merge brought in below a follow's watermark are still sent

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "follow_backlog",
        sa.Column("follow_id", sa.Integer(), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=False),
        sa.Column("created_at", store.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["article_id"], ["article.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["follow_id"], ["follow.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("follow_id", "article_id"),
    )


def downgrade() -> None:
    op.drop_table("follow_backlog")
