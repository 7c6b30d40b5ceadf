"""Environments, deployments and deployment events (tables and their repositories).

One active deployment per node is a database rule (a partial unique index on ``node`` where
``result`` is null), so two managers sharing one PostgreSQL cannot both start one. Work is
shared by leases: ``claim`` takes active deployments whose lease is free or expired, with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from piman.errors import ConflictError, NotFoundError, StoreError
from piman.fleet.records import DeploymentEventRecord, DeploymentRecord, EnvironmentRecord
from piman.store.repositories import SessionFactory, utcnow
from piman.store.tables import Base, UtcDateTime

__all__ = [
    "DeploymentEventRow",
    "DeploymentRepository",
    "DeploymentRow",
    "EnvironmentRepository",
    "EnvironmentRow",
]


class EnvironmentRow(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(255))
    source_sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    image_size: Mapped[int] = mapped_column(BigInteger)
    image_sha256: Mapped[str] = mapped_column(String(64))
    mapped_bytes: Mapped[int] = mapped_column(BigInteger)
    table_kind: Mapped[str] = mapped_column(String(8))
    os_family: Mapped[str] = mapped_column(String(32))
    customisation: Mapped[str] = mapped_column(String(16))
    boot_files: Mapped[str] = mapped_column(Text)  # JSON list
    cmdline: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(128))


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        Index(
            "uq_deployments_active_node",
            "node",
            unique=True,
            sqlite_where=text("result IS NULL"),
            postgresql_where=text("result IS NULL"),
        ),
        Index("ix_deployments_token", "token_digest"),
        Index("ix_deployments_session", "session_digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node: Mapped[str] = mapped_column(String(64))
    environment: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ranges_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    token_digest: Mapped[str | None] = mapped_column(String(64))
    token_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    session_digest: Mapped[str | None] = mapped_column(String(64))
    options: Mapped[str] = mapped_column(Text)  # JSON object
    result: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DeploymentEventRow(Base):
    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_deployment", "deployment_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    state: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)


def _environment(row: EnvironmentRow) -> EnvironmentRecord:
    return EnvironmentRecord(
        name=row.name,
        source=row.source,
        source_sha256=row.source_sha256,
        kind=row.kind,
        image_size=row.image_size,
        image_sha256=row.image_sha256,
        mapped_bytes=row.mapped_bytes,
        table=row.table_kind,
        os_family=row.os_family,
        customisation=row.customisation,
        boot_files=tuple(json.loads(row.boot_files)),
        cmdline=row.cmdline,
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
    )


def _deployment(row: DeploymentRow) -> DeploymentRecord:
    return DeploymentRecord(
        id=row.id,
        node=row.node,
        environment=row.environment,
        state=row.state,
        attempt=row.attempt,
        deadline_at=row.deadline_at,
        ranges_done=row.ranges_done,
        bytes_done=row.bytes_done,
        bytes_total=row.bytes_total,
        token_digest=row.token_digest,
        token_expires_at=row.token_expires_at,
        session_digest=row.session_digest,
        options=json.loads(row.options),
        result=row.result,
        reason=row.reason,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        claimed_by=row.claimed_by,
        lease_until=row.lease_until,
    )


def _event(row: DeploymentEventRow) -> DeploymentEventRecord:
    return DeploymentEventRecord(
        id=row.id,
        deployment=row.deployment_id,
        at=row.at,
        state=row.state,
        kind=row.kind,
        detail=row.detail,
    )


class EnvironmentRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def list(self) -> list[EnvironmentRecord]:
        async with self._session() as s:
            rows = await s.scalars(select(EnvironmentRow).order_by(EnvironmentRow.name))
            return [_environment(r) for r in rows]

    async def get(self, name: str) -> EnvironmentRecord:
        async with self._session() as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            if row is None:
                raise NotFoundError(f"no environment named {name!r}")
            return _environment(row)

    async def add(self, record: EnvironmentRecord) -> None:
        try:
            async with self._session() as s:
                s.add(
                    EnvironmentRow(
                        name=record.name,
                        source=record.source,
                        source_sha256=record.source_sha256,
                        kind=record.kind,
                        image_size=record.image_size,
                        image_sha256=record.image_sha256,
                        mapped_bytes=record.mapped_bytes,
                        table_kind=record.table,
                        os_family=record.os_family,
                        customisation=record.customisation,
                        boot_files=json.dumps(list(record.boot_files)),
                        cmdline=record.cmdline,
                        description=record.description,
                        created_at=record.created_at,
                        created_by=record.created_by,
                    )
                )
        except StoreError as err:
            if isinstance(err.__cause__, IntegrityError):
                raise ConflictError(f"an environment named {record.name!r} exists") from None
            raise

    async def remove(self, name: str) -> None:
        async with self._session() as s:
            row = await s.scalar(select(EnvironmentRow).where(EnvironmentRow.name == name))
            if row is None:
                raise NotFoundError(f"no environment named {name!r}")
            busy = await s.scalar(
                select(DeploymentRow.node).where(
                    DeploymentRow.environment == name, DeploymentRow.result.is_(None)
                )
            )
            if busy is not None:
                raise ConflictError(f"environment {name!r} is being deployed to {busy}")
            await s.delete(row)


_UPDATABLE = frozenset(
    {
        "state",
        "attempt",
        "deadline_at",
        "ranges_done",
        "bytes_done",
        "bytes_total",
        "token_digest",
        "token_expires_at",
        "session_digest",
        "options",
        "result",
        "reason",
        "finished_at",
        "claimed_by",
        "lease_until",
    }
)


class DeploymentRepository:
    def __init__(self, session: SessionFactory, *, postgres: bool = False) -> None:
        self._session = session
        self._postgres = postgres

    async def create(
        self,
        *,
        node: str,
        environment: str,
        state: str,
        options: dict[str, Any],
        created_by: str,
        bytes_total: int,
        deadline_at: datetime | None,
        token_digest: str | None,
        token_expires_at: datetime | None,
    ) -> DeploymentRecord:
        now = utcnow()
        try:
            async with self._session() as s:
                row = DeploymentRow(
                    node=node,
                    environment=environment,
                    state=state,
                    attempt=0,
                    deadline_at=deadline_at,
                    ranges_done=0,
                    bytes_done=0,
                    bytes_total=bytes_total,
                    token_digest=token_digest,
                    token_expires_at=token_expires_at,
                    options=json.dumps(options, sort_keys=True),
                    created_by=created_by,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                await s.flush()
                s.add(
                    DeploymentEventRow(
                        deployment_id=row.id,
                        at=now,
                        state=state,
                        kind="transition",
                        detail=f"created by {created_by}: {environment} to {node}",
                    )
                )
                return _deployment(row)
        except StoreError as err:
            if isinstance(err.__cause__, IntegrityError):
                raise ConflictError(f"node {node} is already being deployed") from None
            raise

    async def get(self, deployment_id: int) -> DeploymentRecord:
        async with self._session() as s:
            row = await s.get(DeploymentRow, deployment_id)
            if row is None:
                raise NotFoundError(f"no deployment {deployment_id}")
            return _deployment(row)

    async def _one(self, column: Any, value: str) -> DeploymentRecord | None:
        async with self._session() as s:
            row = await s.scalar(
                select(DeploymentRow).where(column == value, DeploymentRow.result.is_(None))
            )
            return None if row is None else _deployment(row)

    async def by_token(self, digest: str) -> DeploymentRecord | None:
        return await self._one(DeploymentRow.token_digest, digest)

    async def by_session(self, digest: str) -> DeploymentRecord | None:
        return await self._one(DeploymentRow.session_digest, digest)

    async def update(
        self, deployment_id: int, *, expect_state: str | None = None, **changes: Any
    ) -> DeploymentRecord:
        bad = set(changes) - _UPDATABLE
        if bad:
            raise ValueError(f"not a deployment field: {sorted(bad)}")
        async with self._session() as s:
            query = select(DeploymentRow).where(DeploymentRow.id == deployment_id)
            if self._postgres:
                query = query.with_for_update()
            row = await s.scalar(query)
            if row is None:
                raise NotFoundError(f"no deployment {deployment_id}")
            if expect_state is not None and row.state != expect_state:
                raise ConflictError(
                    f"deployment {deployment_id} is {row.state}, not {expect_state}"
                )
            for key, value in changes.items():
                setattr(row, key, json.dumps(value, sort_keys=True) if key == "options" else value)
            row.updated_at = utcnow()
            return _deployment(row)

    async def claim(
        self, owner: str, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[DeploymentRecord]:
        """Take (or renew) the leases of up to ``limit`` active deployments that are free, lapsed
        or already ``owner``'s. Each row is taken by one conditional UPDATE, so two managers
        never both get it, even on SQLite whose SELECT holds no lock (PostgreSQL also skips the
        rows another manager has locked meanwhile)."""
        free = or_(
            DeploymentRow.claimed_by.is_(None),
            DeploymentRow.claimed_by == owner,
            DeploymentRow.lease_until.is_(None),
            DeploymentRow.lease_until < now,
        )
        async with self._session() as s:
            query = (
                select(DeploymentRow.id)
                .where(DeploymentRow.result.is_(None), free)
                .order_by(DeploymentRow.id)
                .limit(limit)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            taken: list[int] = []
            for ident in list(await s.scalars(query)):
                done = await s.execute(
                    update(DeploymentRow)
                    .where(DeploymentRow.id == ident, DeploymentRow.result.is_(None), free)
                    .values(claimed_by=owner, lease_until=lease_until)
                    .execution_options(synchronize_session=False)
                )
                if getattr(done, "rowcount", 0) == 1:
                    taken.append(ident)
            if not taken:
                return []
            rows = await s.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.id.in_(taken))
                .order_by(DeploymentRow.id)
                .execution_options(populate_existing=True)
            )
            return [_deployment(r) for r in rows]

    async def add_event(
        self, deployment_id: int, state: str, kind: str, detail: str, *, at: datetime | None = None
    ) -> DeploymentEventRecord:
        async with self._session() as s:
            row = DeploymentEventRow(
                deployment_id=deployment_id,
                at=at or utcnow(),
                state=state,
                kind=kind,
                detail=detail[:2000],
            )
            s.add(row)
            await s.flush()
            return _event(row)

    async def events(
        self, deployment_id: int, *, after: int = 0, limit: int = 1000
    ) -> list[DeploymentEventRecord]:
        async with self._session() as s:
            rows = await s.scalars(
                select(DeploymentEventRow)
                .where(
                    DeploymentEventRow.deployment_id == deployment_id,
                    DeploymentEventRow.id > after,
                )
                .order_by(DeploymentEventRow.id)
                .limit(limit)
            )
            return [_event(r) for r in rows]

    async def count_active(self) -> int:
        async with self._session() as s:
            return int(
                await s.scalar(
                    select(func.count())
                    .select_from(DeploymentRow)
                    .where(DeploymentRow.result.is_(None))
                )
                or 0
            )

    async def list(
        self, *, node: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[DeploymentRecord]:
        query = select(DeploymentRow).order_by(DeploymentRow.id.desc()).limit(limit)
        if node is not None:
            query = query.where(DeploymentRow.node == node)
        if active is True:
            query = query.where(DeploymentRow.result.is_(None))
        elif active is False:
            query = query.where(DeploymentRow.result.is_not(None))
        async with self._session() as s:
            return [_deployment(r) for r in await s.scalars(query)]
