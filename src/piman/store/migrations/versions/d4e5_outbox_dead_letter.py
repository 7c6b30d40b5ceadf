"""Notification outbox: dead letters (``dead_at``) and receivers named without their secrets.

Until this revision an outbox row named its receiver by its whole URL (``webhook:https://
user:password@host/path?token=…``, ``apprise:slack://TokenA/TokenB/TokenC``), so every token and
password of every notification channel sat in the database, in clear, once per notification.
Rows now name a receiver by what is safe to show, as ``build_receivers`` does: ``webhook:`` and
scheme://host[:port] for webhooks, ``apprise:`` and the scheme for apprise URLs, with ``#2``,
``#3`` … for the second and later receivers of the same name (numbered in the order their rows
were first queued, which is the configuration's order). Downgrading keeps the safe names: the
secrets are in the configuration, not here.

Revision ID: d4e5deadl3t7
Revises: c3d4dep10y01
Create Date: 2026-12-05
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

from piman.store.tables import UtcDateTime

revision = "d4e5deadl3t7"
down_revision = "c3d4dep10y01"
branch_labels = None
depends_on = None

# A copy, frozen with this revision, of piman.monitor.alerting.notify.receiver_name.
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _safe_name(receiver: str) -> str:
    kind, _, url = receiver.partition(":")
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return f"{kind}:<url>"
    if kind != "webhook":
        return f"{kind}:{scheme.lower()}"
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    return f"webhook:{scheme.lower()}://{host.lower() if _HOST.fullmatch(host) else '…'}"


def upgrade() -> None:
    with op.batch_alter_table("alert_outbox") as batch:
        batch.add_column(sa.Column("dead_at", UtcDateTime()))
    bind = op.get_bind()
    outbox = sa.table("alert_outbox", sa.column("id", sa.Integer), sa.column("receiver", sa.String))
    rows = bind.execute(
        sa.select(outbox.c.receiver, sa.func.min(outbox.c.id))
        .group_by(outbox.c.receiver)
        .order_by(sa.func.min(outbox.c.id))
    ).all()
    taken: dict[str, int] = {}
    renames: list[tuple[str, str]] = []
    for old, _first in rows:
        base = _safe_name(old)
        taken[base] = taken.get(base, 0) + 1
        new = base if taken[base] == 1 else f"{base}#{taken[base]}"
        if new != old:
            renames.append((old, new))
    # Through temporary names, so that no new name meets an old one that is still there.
    for i, (old, _new) in enumerate(renames):
        bind.execute(sa.update(outbox).where(outbox.c.receiver == old).values(receiver=f"~{i}"))
    for i, (_old, new) in enumerate(renames):
        bind.execute(sa.update(outbox).where(outbox.c.receiver == f"~{i}").values(receiver=new))


def downgrade() -> None:
    with op.batch_alter_table("alert_outbox") as batch:
        batch.drop_column("dead_at")
