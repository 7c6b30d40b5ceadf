"""Alembic environment: piman runs migrations itself on a connection it passes in.

``piman.store.db.Store.open()`` calls ``alembic.command.upgrade(cfg, "heads")`` with
``cfg.attributes["connection"]`` set to a sync connection (from ``AsyncConnection.run_sync``),
already in the caller's transaction (on SQLite a ``BEGIN IMMEDIATE`` of ``_upgrade_sqlite``'s
own): Alembic's ``begin_transaction`` below is then a no-op, and the whole upgrade, version
included, commits or rolls back as one.
"""

from __future__ import annotations

from alembic import context

from piman.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only for `alembic` run by hand
    raise RuntimeError("run migrations through piman (piman server / Store.open)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite ALTER TABLE
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
