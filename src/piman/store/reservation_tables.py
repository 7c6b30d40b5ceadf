"""Reservations and their timers (tables and the repository over them).

- ``reservations``: one row per reservation; its nodes, keys and deployments are JSON lists.
- ``reservation_timers``: what the reservations service must do, when (start, warnings, the
  unused check, end, the redeploy check), each done once. A manager **claims** due timers with a
  lease (a conditional UPDATE per row, as deployments are claimed: two managers never both get
  one, even on SQLite whose SELECT holds no lock); a manager that dies holding one loses it when
  the lease lapses, and the same manager restarted takes it back at once.

Booking is serialised per node: :meth:`ReservationRepository.create` and ``extend`` first lock
the node rows a request may get (``SELECT … FOR UPDATE`` in name order on PostgreSQL; on SQLite
a write to them, which takes the database's write lock), then read the live reservations and
ask the caller's pure ``decide`` to choose, so two requests for the same nodes cannot both pass.

A warning's timer is marked done in the same transaction that queues its mail in the alert
outbox (``finish_timer(…, outbox=…)``): a crash either loses neither or keeps both, and the
notifier delivers the row once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from piman.errors import ConflictError, NotFoundError
from piman.fleet.reservations import (
    LIVE,
    ReservationDraft,
    ReservationRecord,
    ReservationState,
    TimerDraft,
    TimerKind,
    TimerRecord,
)
from piman.store.account_tables import SessionRow, TokenRow, UserRow
from piman.store.alert_tables import OutboxRow
from piman.store.deploy_tables import DeploymentRow
from piman.store.repositories import SessionFactory
from piman.store.tables import Base, NodeRow, UtcDateTime

__all__ = ["ReservationRepository", "ReservationRow", "ReservationTimerRow"]

_LIVE = sorted(s.value for s in LIVE)
_FINAL = (ReservationState.RELEASED.value, ReservationState.CANCELLED.value)


class ReservationRow(Base):
    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_state", "state", "end_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    nodes: Mapped[str] = mapped_column(Text)  # JSON list
    start_at: Mapped[datetime] = mapped_column(UtcDateTime())
    end_at: Mapped[datetime] = mapped_column(UtcDateTime())
    state: Mapped[str] = mapped_column(String(16))
    environment: Mapped[str | None] = mapped_column(String(64))
    ssh_keys: Mapped[str] = mapped_column(Text)  # JSON list
    extensions: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    reason: Mapped[str | None] = mapped_column(Text)
    deployments: Mapped[str] = mapped_column(Text)  # JSON list of deployment ids


class ReservationTimerRow(Base):
    __tablename__ = "reservation_timers"
    __table_args__ = (Index("ix_reservation_timers_due", "done_at", "due_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reservation_id: Mapped[int] = mapped_column(
        ForeignKey("reservations.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    due_at: Mapped[datetime] = mapped_column(UtcDateTime())
    lead: Mapped[float] = mapped_column(Float, default=0.0)
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    outcome: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


def _record(row: ReservationRow) -> ReservationRecord:
    return ReservationRecord(
        id=row.id,
        owner=row.owner,
        nodes=tuple(json.loads(row.nodes)),
        start_at=row.start_at,
        end_at=row.end_at,
        state=row.state,
        environment=row.environment,
        ssh_keys=tuple(json.loads(row.ssh_keys)),
        extensions=row.extensions,
        created_by=row.created_by,
        created_at=row.created_at,
        started_at=row.started_at,
        used_at=row.used_at,
        ended_at=row.ended_at,
        reason=row.reason,
        deployments=tuple(json.loads(row.deployments)),
    )


def _timer(row: ReservationTimerRow) -> TimerRecord:
    return TimerRecord(
        id=row.id,
        reservation=row.reservation_id,
        kind=row.kind,
        due_at=row.due_at,
        lead=row.lead,
        done_at=row.done_at,
        outcome=row.outcome,
        claimed_by=row.claimed_by,
        lease_until=row.lease_until,
    )


def _timer_row(reservation_id: int, draft: TimerDraft) -> ReservationTimerRow:
    return ReservationTimerRow(
        reservation_id=reservation_id, kind=draft.kind.value, due_at=draft.due_at, lead=draft.lead
    )


class ReservationRepository:
    """Reservations and timers. Every method is one transaction."""

    def __init__(self, session: SessionFactory, *, postgres: bool = False) -> None:
        self._session = session
        self._postgres = postgres

    async def _lock(self, s: AsyncSession, nodes: Sequence[str]) -> None:
        """Serialise bookings of these nodes (module doc)."""
        names = sorted(set(nodes))
        if self._postgres:
            query = select(NodeRow.id).where(NodeRow.name.in_(names)).order_by(NodeRow.name)
            await s.execute(query.with_for_update())
        else:  # any write takes SQLite's one write lock until the commit
            await s.execute(
                update(NodeRow)
                .where(NodeRow.name.in_(names or [""]))
                .values(updated_at=NodeRow.updated_at)
                .execution_options(synchronize_session=False)
            )

    async def _sqlite_write_lock(self, s: AsyncSession, reservation_id: int) -> None:
        """On SQLite, write first: a transaction that reads, then writes, fails (busy) when
        another one wrote meanwhile; one that starts with a write waits its turn instead."""
        if not self._postgres:
            await s.execute(
                update(ReservationRow)
                .where(ReservationRow.id == reservation_id)
                .values(extensions=ReservationRow.extensions)
                .execution_options(synchronize_session=False)
            )

    async def _live(self, s: AsyncSession) -> list[ReservationRecord]:
        rows = await s.scalars(
            select(ReservationRow)
            .where(ReservationRow.state.in_(_LIVE))
            .order_by(ReservationRow.start_at, ReservationRow.id)
        )
        return [_record(r) for r in rows]

    async def create(
        self,
        lock: Sequence[str],
        decide: Callable[[list[ReservationRecord]], ReservationDraft],
        *,
        now: datetime,
    ) -> ReservationRecord:
        """Lock the nodes ``lock`` (every node the request may get), give ``decide`` the live
        reservations, write what it returns with its timers. ``decide`` refuses by raising."""
        async with self._session() as s:
            await self._lock(s, lock)
            draft = decide(await self._live(s))
            row = ReservationRow(
                owner=draft.owner,
                nodes=json.dumps(list(draft.nodes)),
                start_at=draft.start_at,
                end_at=draft.end_at,
                state=ReservationState.SCHEDULED.value,
                environment=draft.environment,
                ssh_keys=json.dumps(list(draft.ssh_keys)),
                extensions=0,
                created_by=draft.created_by,
                created_at=now,
                deployments="[]",
            )
            s.add(row)
            await s.flush()
            s.add_all(_timer_row(row.id, t) for t in draft.timers)
            return _record(row)

    async def get(self, reservation_id: int) -> ReservationRecord:
        async with self._session() as s:
            row = await s.get(ReservationRow, reservation_id)
            if row is None:
                raise NotFoundError(f"no reservation {reservation_id}")
            return _record(row)

    async def live(self) -> list[ReservationRecord]:
        """Scheduled, active and ending reservations, soonest first."""
        async with self._session() as s:
            return await self._live(s)

    async def extend(
        self,
        reservation_id: int,
        decide: Callable[
            [ReservationRecord, list[ReservationRecord]], tuple[datetime, Sequence[TimerDraft]]
        ],
        *,
        now: datetime,
    ) -> ReservationRecord:
        """Locked as :meth:`create`: ``decide(reservation, live)`` gives the new end and its
        timers; the open warning and end timers are closed (superseded), the new ones added."""
        async with self._session() as s:
            await self._sqlite_write_lock(s, reservation_id)
            row = await s.get(ReservationRow, reservation_id)
            if row is None:
                raise NotFoundError(f"no reservation {reservation_id}")
            if self._postgres:
                await self._lock(s, json.loads(row.nodes))
            new_end, timers = decide(_record(row), await self._live(s))
            await s.execute(
                update(ReservationTimerRow)
                .where(
                    ReservationTimerRow.reservation_id == reservation_id,
                    ReservationTimerRow.done_at.is_(None),
                    ReservationTimerRow.kind.in_((TimerKind.WARN.value, TimerKind.END.value)),
                )
                .values(done_at=now, outcome="superseded: extended")
                .execution_options(synchronize_session=False)
            )
            row.end_at = new_end
            row.extensions += 1
            s.add_all(_timer_row(reservation_id, t) for t in timers)
            return _record(row)

    async def transition(
        self,
        reservation_id: int,
        expect: str,
        state: str,
        *,
        at: datetime,
        reason: str | None = None,
        expect_end: datetime | None = None,
        deployments: Sequence[int] = (),
    ) -> ReservationRecord:
        """Move a reservation from ``expect`` (and ``expect_end``, when given) to ``state``;
        ConflictError when it is elsewhere (another writer won: re-read and decide again).
        ``active`` sets ``started_at``; a final state sets ``ended_at`` and closes the open
        timers nobody claimed (a claimer finishes its own). ``deployments`` are added to its
        list."""
        async with self._session() as s:
            await self._sqlite_write_lock(s, reservation_id)
            query = select(ReservationRow).where(ReservationRow.id == reservation_id)
            if self._postgres:
                query = query.with_for_update()
            row = await s.scalar(query)
            if row is None:
                raise NotFoundError(f"no reservation {reservation_id}")
            if row.state != expect or (expect_end is not None and row.end_at != expect_end):
                raise ConflictError(f"reservation {reservation_id} is {row.state} now")
            row.state = state
            if state == ReservationState.ACTIVE.value:
                row.started_at = at
            if reason is not None:
                row.reason = reason
            if deployments:
                row.deployments = json.dumps([*json.loads(row.deployments), *deployments])
            if state in _FINAL:
                row.ended_at = at
                await s.execute(
                    update(ReservationTimerRow)
                    .where(
                        ReservationTimerRow.reservation_id == reservation_id,
                        ReservationTimerRow.done_at.is_(None),
                        ReservationTimerRow.claimed_by.is_(None),  # a claimer finishes its own
                    )
                    .values(done_at=at, outcome=f"closed: {state}")
                    .execution_options(synchronize_session=False)
                )
            return _record(row)

    async def mark_used(self, reservation_id: int, at: datetime) -> None:
        """The owner used it (the first time counts)."""
        async with self._session() as s:
            await s.execute(
                update(ReservationRow)
                .where(ReservationRow.id == reservation_id, ReservationRow.used_at.is_(None))
                .values(used_at=at)
            )

    async def end_now(self, reservation_id: int, at: datetime) -> None:
        """Its open end timer is due at ``at`` (a release asked for before the end)."""
        async with self._session() as s:
            await s.execute(
                update(ReservationTimerRow)
                .where(
                    ReservationTimerRow.reservation_id == reservation_id,
                    ReservationTimerRow.kind == TimerKind.END.value,
                    ReservationTimerRow.done_at.is_(None),
                )
                .values(due_at=at)
            )

    async def add_timer(self, reservation_id: int, draft: TimerDraft) -> TimerRecord:
        async with self._session() as s:
            row = _timer_row(reservation_id, draft)
            s.add(row)
            await s.flush()
            return _timer(row)

    async def timers(self, reservation_id: int) -> list[TimerRecord]:
        """Its timers, in due order."""
        async with self._session() as s:
            rows = await s.scalars(
                select(ReservationTimerRow)
                .where(ReservationTimerRow.reservation_id == reservation_id)
                .order_by(ReservationTimerRow.due_at, ReservationTimerRow.id)
            )
            return [_timer(r) for r in rows]

    async def claim_timers(
        self, owner: str, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[TimerRecord]:
        """Due open timers that are free, lapsed or already ``owner``'s, taken until
        ``lease_until``, in due order (module doc)."""
        free = or_(
            ReservationTimerRow.claimed_by.is_(None),
            ReservationTimerRow.claimed_by == owner,
            ReservationTimerRow.lease_until.is_(None),
            ReservationTimerRow.lease_until < now,
        )
        due = (ReservationTimerRow.done_at.is_(None), ReservationTimerRow.due_at <= now)
        async with self._session() as s:
            query = (
                select(ReservationTimerRow.id)
                .where(*due, free)
                .order_by(ReservationTimerRow.due_at, ReservationTimerRow.id)
                .limit(limit)
            )
            if self._postgres:
                query = query.with_for_update(skip_locked=True)
            taken: list[int] = []
            for ident in list(await s.scalars(query)):
                done = await s.execute(
                    update(ReservationTimerRow)
                    .where(ReservationTimerRow.id == ident, *due, free)
                    .values(claimed_by=owner, lease_until=lease_until)
                    .execution_options(synchronize_session=False)
                )
                if getattr(done, "rowcount", 0) == 1:
                    taken.append(ident)
            if not taken:
                return []
            rows = await s.scalars(
                select(ReservationTimerRow)
                .where(ReservationTimerRow.id.in_(taken))
                .order_by(ReservationTimerRow.due_at, ReservationTimerRow.id)
                .execution_options(populate_existing=True)
            )
            return [_timer(r) for r in rows]

    async def finish_timer(
        self,
        timer_id: int,
        owner: str,
        *,
        at: datetime,
        outcome: str,
        again_at: datetime | None = None,
        outbox: tuple[str, str, dict[str, Any]] | None = None,
    ) -> bool:
        """Done with ``outcome`` (or due again at ``again_at``, unclaimed) if ``owner`` still
        holds it, with ``outbox`` (receiver, idempotency key, payload) queued in the same
        transaction; False when another manager took it meanwhile (nothing written)."""
        async with self._session() as s:
            held = (
                ReservationTimerRow.id == timer_id,
                ReservationTimerRow.claimed_by == owner,
                ReservationTimerRow.done_at.is_(None),
            )
            values: dict[str, Any] = {"outcome": outcome[:2000]}
            if again_at is None:
                values["done_at"] = at
            else:
                values.update(due_at=again_at, claimed_by=None, lease_until=None)
            done = await s.execute(
                update(ReservationTimerRow)
                .where(*held)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if getattr(done, "rowcount", 0) != 1:
                return False
            if outbox is not None:
                receiver, key, payload = outbox
                known = await s.scalar(
                    select(OutboxRow.id).where(OutboxRow.receiver == receiver, OutboxRow.key == key)
                )
                if known is None:
                    s.add(
                        OutboxRow(
                            receiver=receiver,
                            key=key,
                            payload=json.dumps(payload, sort_keys=True),
                            created_at=at,
                            next_attempt_at=at,
                            attempts=0,
                        )
                    )
            return True

    async def next_due(self, owner: str, now: datetime) -> datetime | None:
        """When the earliest open timer ``owner`` could claim is due (those another manager
        holds count from the end of its lease)."""
        async with self._session() as s:
            rows = await s.execute(
                select(ReservationTimerRow.due_at, ReservationTimerRow.claimed_by,
                       ReservationTimerRow.lease_until)
                .where(ReservationTimerRow.done_at.is_(None))
                .order_by(ReservationTimerRow.due_at)
                .limit(1000)
            )  # fmt: skip
            times = [
                due if by in (None, owner) or lease is None or lease < now else max(due, lease)
                for due, by, lease in rows.all()
            ]
        return min(times, default=None)

    async def owner_activity(
        self, owner: str, nodes: Sequence[str], since: datetime
    ) -> datetime | None:
        """The latest sign of use after ``since``: the owner's login or session use, an API
        call with one of their tokens (both recorded at most once a minute), a deployment to
        one of ``nodes``; None when none."""
        async with self._session() as s:
            user_id = await s.scalar(select(UserRow.id).where(UserRow.name == owner))
            seen: list[datetime | None] = []
            if user_id is not None:
                seen.append(
                    await s.scalar(
                        select(func.max(SessionRow.last_seen_at)).where(
                            SessionRow.user_id == user_id
                        )
                    )
                )
                seen.append(
                    await s.scalar(
                        select(func.max(TokenRow.last_used_at)).where(TokenRow.user_id == user_id)
                    )
                )
            if nodes:
                seen.append(
                    await s.scalar(
                        select(func.max(DeploymentRow.created_at)).where(
                            DeploymentRow.node.in_(list(nodes)), DeploymentRow.created_at >= since
                        )
                    )
                )
        found = [t for t in seen if t is not None and t > since]
        return max(found, default=None)

    async def list(
        self, *, owner: str | None = None, live: bool | None = None, limit: int = 200
    ) -> list[ReservationRecord]:
        """Newest first; ``live`` True for scheduled, active and ending ones, False for the
        others."""
        query = select(ReservationRow).order_by(ReservationRow.id.desc()).limit(limit)
        if owner is not None:
            query = query.where(ReservationRow.owner == owner)
        if live is True:
            query = query.where(ReservationRow.state.in_(_LIVE))
        elif live is False:
            query = query.where(ReservationRow.state.not_in(_LIVE))
        async with self._session() as s:
            return [_record(r) for r in await s.scalars(query)]
