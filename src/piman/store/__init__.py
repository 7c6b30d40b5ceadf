"""Store: SQLAlchemy tables, the repositories of ``piman.fleet.ports``, Alembic migrations
(SQLite or PostgreSQL). Only this package imports SQLAlchemy."""

from piman.store.db import Store
from piman.store.reconcile import ReconcileReport, reconcile

__all__ = ["ReconcileReport", "Store", "reconcile"]
