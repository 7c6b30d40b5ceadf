"""Store: SQLAlchemy tables, repositories and Alembic migrations (SQLite or PostgreSQL)."""

from piman.store.db import Store
from piman.store.reconcile import ReconcileReport, reconcile
from piman.store.repositories import (
    AuditRecord,
    AuditRepository,
    NodeRecord,
    NodeRepository,
    SwitchRecord,
    SwitchRepository,
)

__all__ = [
    "AuditRecord",
    "AuditRepository",
    "NodeRecord",
    "NodeRepository",
    "ReconcileReport",
    "Store",
    "SwitchRecord",
    "SwitchRepository",
    "reconcile",
]
