"""Repositories of the inventory (nodes, switches, audit log): the ports of ``piman.fleet.ports``.

Each repository takes a session factory (``Store.session``); every method is one transaction and
returns plain frozen records (``piman.fleet.records``), never ORM objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from piman.errors import ConflictError, NotFoundError
from piman.fleet.lifecycle import NodeState, PowerState, check_transition
from piman.fleet.records import AuditRecord, NodeRecord, SwitchRecord
from piman.store.tables import AuditEntry, NodeRow, SwitchRow

__all__ = ["AuditRepository", "NodeRepository", "SessionFactory", "SwitchRepository", "utcnow"]

SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _node_record(row: NodeRow, switch: str | None) -> NodeRecord:
    return NodeRecord(
        name=row.name,
        mac=row.mac,
        ip=row.ip,
        serial=row.serial,
        model=row.model,
        hostname=row.hostname,
        agent_url=row.agent_url,
        switch=switch,
        port=row.port,
        state=row.state,
        power_state=row.power_state,
        vendor_class=row.vendor_class,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        declared=row.declared,
    )


class SwitchRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def list(self) -> list[SwitchRecord]:
        async with self._session() as s:
            rows = (await s.scalars(select(SwitchRow).order_by(SwitchRow.name))).all()
            return [SwitchRecord(r.name, r.address, r.driver, r.profile, r.declared) for r in rows]


class NodeRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    def _select(self) -> Select[NodeRow, str]:
        sw = aliased(SwitchRow)
        return select(NodeRow, sw.name).outerjoin(sw, NodeRow.switch_id == sw.id)

    async def list(self) -> list[NodeRecord]:
        """Every node, ordered by switch, port, then name."""
        async with self._session() as s:
            rows = (await s.execute(self._select())).all()
        records = [_node_record(row, switch) for row, switch in rows]
        return sorted(records, key=lambda n: (n.switch or "~", n.port or 0, n.name))

    async def get(self, name: str) -> NodeRecord:
        """One node by name; raises NotFoundError."""
        async with self._session() as s:
            found = (await s.execute(self._select().where(NodeRow.name == name))).first()
        if found is None:
            raise NotFoundError(f"no node named {name!r}")
        return _node_record(found[0], found[1])

    async def find(
        self, *, mac: str | None = None, ip: str | None = None, serial: str | None = None
    ) -> NodeRecord | None:
        """The node with this MAC, IP or serial (first given wins), or None."""
        query = self._select()
        if mac is not None:
            query = query.where(NodeRow.mac == mac)
        elif ip is not None:
            query = query.where(NodeRow.ip == ip)
        elif serial is not None:
            query = query.where(NodeRow.serial == serial)
        else:
            return None
        async with self._session() as s:
            found = (await s.execute(query)).first()
        return None if found is None else _node_record(found[0], found[1])

    async def set_power_state(self, name: str, state: PowerState) -> None:
        async with self._session() as s:
            row = await _node_row(s, name)
            row.power_state = state.value
            row.updated_at = utcnow()

    async def set_state(self, name: str, state: NodeState, *, force: bool = False) -> NodeRecord:
        """Move a node through its lifecycle; raises IllegalTransition unless ``force``."""
        async with self._session() as s:
            row = await _node_row(s, name)
            if not force and row.state != state.value:
                check_transition(NodeState(row.state), state)
            row.state = state.value
            row.updated_at = utcnow()
        return await self.get(name)

    async def record_sighting(
        self,
        mac: str,
        *,
        ip: str | None = None,
        serial: str | None = None,
        model: str | None = None,
        vendor_class: str | None = None,
        now: datetime | None = None,
        name: str | None = None,
    ) -> NodeRecord:
        """A node was seen on the wire: update what is learnt, or record a ``new`` node (named
        ``name``, default ``pi-<mac>``; ConflictError when another node has that name).

        Never overwrites a serial or model the configuration declared.
        """
        now = now or utcnow()
        async with self._session() as s:
            row = (await s.scalars(select(NodeRow).where(NodeRow.mac == mac))).first()
            if row is None:
                name = name or "pi-" + mac.replace(":", "")
                taken = (await s.scalars(select(NodeRow).where(NodeRow.name == name))).first()
                if taken is not None:
                    raise ConflictError(f"a node named {name!r} exists already")
                row = NodeRow(
                    name=name,
                    mac=mac,
                    state=NodeState.NEW.value,
                    power_state=PowerState.UNKNOWN.value,
                    declared=False,
                    created_at=now,
                    updated_at=now,
                    first_seen=now,
                )
                s.add(row)
            row.first_seen = row.first_seen or now
            row.last_seen = now
            if ip is not None and not row.declared:
                row.ip = ip
            if serial is not None and (row.serial is None or not row.declared):
                row.serial = serial
            if model is not None and (row.model is None or not row.declared):
                row.model = model
            if vendor_class is not None:
                row.vendor_class = vendor_class
            row.updated_at = now
            name = row.name
        return await self.get(name)


async def _node_row(session: AsyncSession, name: str) -> NodeRow:
    row = (await session.scalars(select(NodeRow).where(NodeRow.name == name))).first()
    if row is None:
        raise NotFoundError(f"no node named {name!r}")
    return row


class AuditRepository:
    def __init__(self, session: SessionFactory) -> None:
        self._session = session

    async def add(
        self,
        actor: str,
        action: str,
        target: str,
        result: str,
        detail: str | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        async with self._session() as s:
            s.add(
                AuditEntry(
                    at=at or utcnow(),
                    actor=actor,
                    action=action,
                    target=target,
                    result=result,
                    detail=detail,
                )
            )

    async def add_many(
        self, actor: str, action: str, targets: Sequence[str], result: str, detail: str | None
    ) -> None:
        at = utcnow()
        async with self._session() as s:
            s.add_all(
                AuditEntry(
                    at=at, actor=actor, action=action, target=t, result=result, detail=detail
                )
                for t in targets
            )

    async def list(
        self, *, target: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Newest first."""
        query = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        if target is not None:
            query = query.where(AuditEntry.target == target)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        async with self._session() as s:
            rows = (await s.scalars(query.limit(limit))).all()
        return [AuditRecord(r.at, r.actor, r.action, r.target, r.result, r.detail) for r in rows]
