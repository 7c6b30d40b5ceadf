"""The store: an async SQLAlchemy engine on SQLite (WAL) or PostgreSQL, migrated on open.

:class:`Store` implements :class:`piman.fleet.ports.Repositories`: every repository it hands out
works in its own transaction and raises :class:`~piman.errors.StoreError` when the database
fails (SQLAlchemy's errors never leave the store). Usage::

    store = Store(config.database_url)
    await store.open()          # creates the SQLite directory, runs Alembic migrations
    try:
        await reconcile(store, config)      # piman.store.reconcile
        nodes = await store.nodes.list()
    finally:
        await store.close()
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from piman.errors import StoreError
from piman.store.account_tables import SessionRepository, TokenRepository, UserRepository
from piman.store.alert_tables import AlertRepository
from piman.store.deploy_tables import DeploymentRepository, EnvironmentRepository
from piman.store.repositories import AuditRepository, NodeRepository, SwitchRepository

__all__ = ["Store"]

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class Store:
    """The manager's database. One instance per process; cheap to open and close."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    async def open(self) -> None:
        """Connect, and bring the schema to the newest revision."""
        url = make_url(self.url)
        connect_args: dict[str, Any] = {}
        if self.is_sqlite and url.database and url.database != ":memory:":
            path = Path(url.database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"cannot create {path.parent}: {err.strerror}") from err
            connect_args["timeout"] = 30
        self._engine = create_async_engine(self.url, connect_args=connect_args, pool_pre_ping=True)
        if self.is_sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except (SQLAlchemyError, OSError) as err:
            await self.close()
            raise StoreError(f"cannot open the database {_safe(self.url)}: {_reason(err)}") from err
        logger.info("store open: %s", _safe(self.url))

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = None
        self._sessions = None

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed on success, rolled back on error.

        A database failure (inside the block or at commit) becomes a StoreError whose cause is
        the SQLAlchemy error; other errors pass through unchanged.
        """
        if self._sessions is None:
            raise StoreError("the store is not open")
        try:
            async with self._sessions() as session, session.begin():
                yield session
        except (SQLAlchemyError, OSError) as err:
            raise StoreError(f"database error: {_reason(err)}") from err

    @property
    def nodes(self) -> NodeRepository:
        return NodeRepository(self.session)

    @property
    def switches(self) -> SwitchRepository:
        return SwitchRepository(self.session)

    @property
    def audit(self) -> AuditRepository:
        return AuditRepository(self.session)

    @property
    def alerts(self) -> AlertRepository:
        return AlertRepository(self.session)

    @property
    def users(self) -> UserRepository:
        return UserRepository(self.session)

    @property
    def tokens(self) -> TokenRepository:
        return TokenRepository(self.session)

    @property
    def sessions(self) -> SessionRepository:
        return SessionRepository(self.session)

    @property
    def environments(self) -> EnvironmentRepository:
        return EnvironmentRepository(self.session)

    @property
    def deployments(self) -> DeploymentRepository:
        return DeploymentRepository(self.session, postgres=not self.is_sqlite)

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _upgrade(connection: Connection) -> None:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "heads")


def _safe(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


def _reason(err: BaseException) -> str:
    if isinstance(err, DBAPIError) and err.orig is not None:
        return str(err.orig).strip().splitlines()[0]
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
