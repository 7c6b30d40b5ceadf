"""The store: an async SQLAlchemy engine on SQLite (WAL) or PostgreSQL, migrated on open.

:class:`Store` implements :class:`piman.fleet.ports.Repositories`: every repository it hands out
works in its own transaction and raises :class:`~piman.errors.StoreError` when the database
fails (SQLAlchemy's errors never leave the store). Usage::

    store = Store(config.database_url)
    await store.open()          # creates the SQLite file (0600, directory 0700), migrates
    try:
        await reconcile(store, config)      # piman.store.reconcile
        nodes = await store.nodes.list()
    finally:
        await store.close()
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

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
from piman.private_files import make_private
from piman.store.account_tables import SessionRepository, TokenRepository, UserRepository
from piman.store.alert_tables import AlertRepository
from piman.store.deploy_tables import DeploymentRepository, EnvironmentRepository
from piman.store.repositories import AuditRepository, NodeRepository, SwitchRepository
from piman.store.reservation_tables import ReservationRepository

__all__ = ["Store"]

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")  # files SQLite keeps beside a database


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
            try:  # 0600 in a 0700 directory, whatever the umask; SQLite's companions follow
                make_private(path, *SQLITE_COMPANIONS)
            except OSError as err:
                where = err.filename or path
                raise StoreError(f"cannot create {where}: {err.strerror or err}") from err
            connect_args["timeout"] = 30
        self._engine = create_async_engine(self.url, connect_args=connect_args, pool_pre_ping=True)
        if self.is_sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        try:
            async with self._engine.connect() as conn:
                if self.is_sqlite:  # the driver's own BEGIN/COMMIT off: _upgrade_sqlite's
                    auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    await auto.run_sync(_upgrade_sqlite)
                else:  # PostgreSQL: transactional DDL, the whole upgrade in one transaction
                    async with conn.begin():
                        await conn.run_sync(_upgrade)
        except (SQLAlchemyError, OSError, StoreError) as err:
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

    @property
    def reservations(self) -> ReservationRepository:
        return ReservationRepository(self.session, postgres=not self.is_sqlite)

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


def _upgrade(connection: Connection, target: str = "heads") -> None:
    """Alembic's upgrade to ``target`` on ``connection``, inside the caller's transaction."""
    # Alembic only when migrating: importing it costs every CLI command a fifth of a second.
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, target)


def _upgrade_sqlite(connection: Connection) -> None:
    """The whole upgrade in one SQLite transaction: all of it or nothing, even after ``kill -9``.

    Python's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE, so a migration's
    CREATE TABLEs used to commit one by one before its version was written: a manager killed
    mid-upgrade left tables without a version, and the next start failed on "table already
    exists". ``connection`` is in the driver's autocommit mode, so the transaction here is ours:
    ``BEGIN IMMEDIATE`` takes the write lock before Alembic reads the version (a second manager
    starting at the same time waits, then finds the schema up to date). Foreign keys are off
    meanwhile, as SQLite's own procedure for schema changes asks (a table rebuilt by a batch
    migration must not cascade its deletes), and checked before the commit.
    """
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _upgrade(connection)
            _check_foreign_keys(connection)
        except BaseException:
            with contextlib.suppress(SQLAlchemyError):  # SQLite may have rolled back already
                connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


def _check_foreign_keys(connection: Connection) -> None:
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
    if broken is not None:
        raise StoreError(f"the upgrade breaks a foreign key of table {broken[0]}")


def _safe(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return make_url(url).render_as_string(hide_password=True)


def _reason(err: BaseException) -> str:
    if isinstance(err, DBAPIError) and err.orig is not None:
        return str(err.orig).strip().splitlines()[0]
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
