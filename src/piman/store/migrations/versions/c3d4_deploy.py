"""Environments, deployments and their events.

Revision ID: c3d4dep10y01
Revises: b2c3acc0u0t5
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from piman.store.tables import UtcDateTime

revision = "c3d4dep10y01"
down_revision = "b2c3acc0u0t5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "environments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("image_size", sa.BigInteger(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("mapped_bytes", sa.BigInteger(), nullable=False),
        sa.Column("table_kind", sa.String(8), nullable=False),
        sa.Column("os_family", sa.String(32), nullable=False),
        sa.Column("customisation", sa.String(16), nullable=False),
        sa.Column("boot_files", sa.Text(), nullable=False),
        sa.Column("cmdline", sa.Text()),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("deadline_at", UtcDateTime()),
        sa.Column("ranges_done", sa.Integer(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("token_digest", sa.String(64)),
        sa.Column("token_expires_at", UtcDateTime()),
        sa.Column("session_digest", sa.String(64)),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("result", sa.String(16)),
        sa.Column("reason", sa.Text()),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime()),
        sa.Column("claimed_by", sa.String(128)),
        sa.Column("lease_until", UtcDateTime()),
    )
    op.create_index(
        "uq_deployments_active_node",
        "deployments",
        ["node"],
        unique=True,
        sqlite_where=sa.text("result IS NULL"),
        postgresql_where=sa.text("result IS NULL"),
    )
    op.create_index("ix_deployments_token", "deployments", ["token_digest"])
    op.create_index("ix_deployments_session", "deployments", ["session_digest"])
    op.create_table(
        "deployment_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "deployment_id",
            sa.Integer(),
            sa.ForeignKey("deployments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
    )
    op.create_index("ix_deployment_events_deployment", "deployment_events", ["deployment_id", "id"])


def downgrade() -> None:
    op.drop_table("deployment_events")
    op.drop_table("deployments")
    op.drop_table("environments")
