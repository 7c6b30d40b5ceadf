"""Reservations and their timers.

Users already have an ``email`` column (since b2c3acc0u0t5): the reservations' warnings go
there, so this revision adds nothing to ``users``.

Revision ID: e5f6res3rv01
Revises: d4e5deadl3t7
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from piman.store.tables import UtcDateTime

revision = "e5f6res3rv01"
down_revision = "d4e5deadl3t7"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reservations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("nodes", sa.Text(), nullable=False),
        sa.Column("start_at", UtcDateTime(), nullable=False),
        sa.Column("end_at", UtcDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("environment", sa.String(64)),
        sa.Column("ssh_keys", sa.Text(), nullable=False),
        sa.Column("extensions", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("used_at", UtcDateTime()),
        sa.Column("ended_at", UtcDateTime()),
        sa.Column("reason", sa.Text()),
        sa.Column("deployments", sa.Text(), nullable=False),
    )
    op.create_index("ix_reservations_owner", "reservations", ["owner"])
    op.create_index("ix_reservations_state", "reservations", ["state", "end_at"])
    op.create_table(
        "reservation_timers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "reservation_id",
            sa.Integer(),
            sa.ForeignKey("reservations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("due_at", UtcDateTime(), nullable=False),
        sa.Column("lead", sa.Float(), nullable=False),
        sa.Column("done_at", UtcDateTime()),
        sa.Column("outcome", sa.Text()),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("lease_until", UtcDateTime()),
    )
    op.create_index(
        "ix_reservation_timers_reservation_id", "reservation_timers", ["reservation_id"]
    )
    op.create_index("ix_reservation_timers_due", "reservation_timers", ["done_at", "due_at"])


def downgrade() -> None:
    op.drop_table("reservation_timers")
    op.drop_table("reservations")
