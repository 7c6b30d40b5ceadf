"""Initial schema: switches, nodes, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from piman.store.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "switches",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("address", sa.String(64)),
        sa.Column("driver", sa.String(32), nullable=False),
        sa.Column("profile", sa.String(32)),
        sa.Column("declared", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("mac", sa.String(17), unique=True),
        sa.Column("ip", sa.String(64)),
        sa.Column("serial", sa.String(16)),
        sa.Column("model", sa.String(32)),
        sa.Column("hostname", sa.String(255)),
        sa.Column("agent_url", sa.String(512)),
        sa.Column("switch_id", sa.Integer(), sa.ForeignKey("switches.id", ondelete="SET NULL")),
        sa.Column("port", sa.Integer()),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("power_state", sa.String(16), nullable=False),
        sa.Column("vendor_class", sa.String(255)),
        sa.Column("first_seen", UtcDateTime()),
        sa.Column("last_seen", UtcDateTime()),
        sa.Column("declared", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("switch_id", "port", name="uq_nodes_switch_port"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("result", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_target", "audit_log", ["target"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("nodes")
    op.drop_table("switches")
