"""Alert states, groups, history, silences, notification outbox and alert meta.

Revision ID: a1e7c0de0005
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from piman.store.tables import UtcDateTime

revision = "a1e7c0de0005"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("fingerprint", sa.String(32), primary_key=True),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("annotations", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_at", UtcDateTime(), nullable=False),
        sa.Column("fired_at", UtcDateTime()),
        sa.Column("resolved_at", UtcDateTime()),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "alert_groups",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("next_flush_at", UtcDateTime(), nullable=False),
        sa.Column("last_flush_at", UtcDateTime()),
        sa.Column("sent", sa.Text(), nullable=False),
    )
    op.create_table(
        "alert_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_alert_history_at", "alert_history", ["at"])
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("matchers", sa.Text(), nullable=False),
        sa.Column("starts_at", UtcDateTime(), nullable=False),
        sa.Column("ends_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
    )
    op.create_index("ix_alert_silences_ends_at", "alert_silences", ["ends_at"])
    op.create_table(
        "alert_outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("receiver", sa.String(1024), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("delivered_at", UtcDateTime()),
        sa.Column("last_error", sa.Text()),
        sa.UniqueConstraint("receiver", "key", name="uq_alert_outbox_receiver_key"),
    )
    op.create_index("ix_alert_outbox_pending", "alert_outbox", ["receiver", "delivered_at", "id"])
    op.create_table(
        "alert_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_meta")
    op.drop_table("alert_outbox")
    op.drop_table("alert_silences")
    op.drop_table("alert_history")
    op.drop_table("alert_groups")
    op.drop_table("alert_states")
