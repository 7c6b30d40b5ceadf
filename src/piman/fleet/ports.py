"""Ports: what the capabilities ask of the store, as Protocols (the store implements them).

Capabilities depend on these, never on ``piman.store`` or SQLAlchemy: tests hand them fakes,
the manager hands them :class:`piman.store.Store`. Every method is one transaction and raises
:class:`~piman.errors.StoreError` when the database fails, :class:`~piman.errors.NotFoundError`
for a name that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from piman.fleet.lifecycle import NodeState, PowerState
from piman.fleet.records import (
    AlertGroupRecord,
    AlertHistoryRecord,
    AlertRecord,
    AuditRecord,
    DeploymentEventRecord,
    DeploymentRecord,
    EnvironmentRecord,
    NodeRecord,
    OutboxItem,
    SessionRecord,
    SilenceRecord,
    SwitchRecord,
    TickChanges,
    TokenRecord,
    UserRecord,
)
from piman.fleet.reservations import (
    ReservationDraft,
    ReservationRecord,
    TimerDraft,
    TimerRecord,
)

__all__ = [
    "AlertRepository",
    "AuditRepository",
    "DeploymentRepository",
    "EnvironmentRepository",
    "NodeRepository",
    "Repositories",
    "ReservationRepository",
    "SessionRepository",
    "SwitchRepository",
    "TokenRepository",
    "UserRepository",
]


class SwitchRepository(Protocol):
    async def list(self) -> list[SwitchRecord]: ...


class NodeRepository(Protocol):
    async def list(self) -> list[NodeRecord]:
        """Every node, ordered by switch, port, then name."""

    async def get(self, name: str) -> NodeRecord:
        """One node by name; NotFoundError."""

    async def find(
        self, *, mac: str | None = None, ip: str | None = None, serial: str | None = None
    ) -> NodeRecord | None:
        """The node with this MAC, IP or serial (the first one given decides), or None."""

    async def set_power_state(self, name: str, state: PowerState) -> None: ...

    async def set_state(self, name: str, state: NodeState, *, force: bool = False) -> NodeRecord:
        """Move a node through its lifecycle; IllegalTransition unless ``force``."""

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
        """A node was seen on the wire: update what was learnt, or record a ``new`` node (named
        ``name``, default ``pi-<mac>``; ConflictError when another node has that name)."""


class AuditRepository(Protocol):
    async def add(
        self,
        actor: str,
        action: str,
        target: str,
        result: str,
        detail: str | None = None,
        *,
        at: datetime | None = None,
    ) -> None: ...

    async def add_many(
        self, actor: str, action: str, targets: Sequence[str], result: str, detail: str | None
    ) -> None:
        """One entry per target, written together (one transaction)."""

    async def list(
        self, *, target: str | None = None, action: str | None = None, limit: int = 100
    ) -> list[AuditRecord]:
        """Newest first."""


class AlertRepository(Protocol):
    """Alert states, groups, history, silences and the notification outbox."""

    async def load(
        self,
    ) -> tuple[list[AlertRecord], list[AlertGroupRecord], dict[str, str]]:
        """Everything the evaluator restores at start: alerts, groups, meta values."""

    async def save(self, changes: TickChanges) -> None:
        """One tick's changes, all or nothing."""

    async def history(self, limit: int = 50) -> list[AlertHistoryRecord]:
        """Newest first."""

    async def states(self) -> list[AlertRecord]: ...

    async def silences(self, *, now: float | None = None) -> list[SilenceRecord]:
        """Every silence (newest first), or only those active at ``now``."""

    async def add_silence(self, silence: SilenceRecord) -> None: ...

    async def expire_silence(self, silence_id: str, now: float) -> SilenceRecord:
        """End a silence now (by id or a unique prefix of it); NotFoundError."""

    async def next_pending(self, receiver: str) -> OutboxItem | None:
        """The oldest notification for a receiver that is neither delivered nor dead."""

    async def mark_delivered(self, item_id: int, at: float) -> None: ...

    async def mark_failed(self, item_id: int, error: str, next_at: float) -> None: ...

    async def mark_dead(self, item_id: int, error: str, at: float) -> None:
        """Give up on a notification: it stays in the outbox, ``dead``, and is not retried."""

    async def requeue_dead(self, at: float, ids: Sequence[int] = ()) -> int:
        """Dead notifications (those of ``ids``, or all) pending again from ``at``; how many."""

    async def outbox(
        self, *, pending_only: bool = False, state: str | None = None, limit: int = 100
    ) -> list[OutboxItem]:
        """Newest first; ``pending_only`` or ``state`` (pending, dead, undelivered, delivered)."""

    async def pending_counts(self) -> dict[str, int]: ...

    async def prune(self, before: float) -> None:
        """Drop delivered and dead outbox rows and history older than ``before``."""


class UserRepository(Protocol):
    async def list(self) -> list[UserRecord]: ...

    async def get(self, name: str) -> UserRecord | None: ...

    async def count(self) -> int: ...

    async def add(self, name: str, role: str, password_hash: str) -> UserRecord:
        """A new user; StoreError when the name is taken."""

    async def set_role(self, name: str, role: str) -> UserRecord:
        """NotFoundError for an unknown user."""

    async def set_password(self, name: str, password_hash: str) -> UserRecord:
        """Also ends every session of that user (NotFoundError for an unknown user)."""

    async def set_email(self, name: str, email: str | None) -> UserRecord:
        """Where the user's mail goes (reservation warnings); NotFoundError."""

    async def remove(self, name: str) -> None:
        """Removes the user with their tokens and sessions; NotFoundError."""


class TokenRepository(Protocol):
    async def add(
        self, user: str, name: str, prefix: str, digest: str, expires_at: datetime | None
    ) -> TokenRecord: ...

    async def by_digest(self, digest: str) -> TokenRecord | None: ...

    async def list(self, user: str | None = None) -> list[TokenRecord]:
        """Newest first; every user's when ``user`` is None."""

    async def revoke(self, token_id: int, at: datetime, *, user: str | None = None) -> TokenRecord:
        """Revoke one token (only among ``user``'s when given); NotFoundError."""

    async def touch(self, token_id: int, at: datetime) -> None:
        """Record a use (callers throttle)."""


class SessionRepository(Protocol):
    async def add(self, record: SessionRecord) -> None: ...

    async def get(self, digest: str) -> SessionRecord | None: ...

    async def touch(self, digest: str, at: datetime) -> None: ...

    async def remove(self, digest: str) -> None: ...

    async def prune(self, idle_before: datetime, now: datetime) -> int:
        """Drop sessions idle since before ``idle_before`` or past their absolute expiry."""


class EnvironmentRepository(Protocol):
    async def list(self) -> list[EnvironmentRecord]: ...

    async def get(self, name: str) -> EnvironmentRecord:
        """NotFoundError for an unknown name."""

    async def add(self, record: EnvironmentRecord) -> None:
        """ConflictError when the name is taken."""

    async def remove(self, name: str) -> None:
        """NotFoundError for an unknown name; ConflictError while a deployment uses it."""


class DeploymentRepository(Protocol):
    """Deployments and their events. ``claim`` is how managers share the work (DESIGN.md §7)."""

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
        """A new active deployment; ConflictError when the node already has one."""

    async def get(self, deployment_id: int) -> DeploymentRecord:
        """NotFoundError for an unknown id."""

    async def by_token(self, digest: str) -> DeploymentRecord | None:
        """The active deployment whose one-time token has this SHA-256."""

    async def by_session(self, digest: str) -> DeploymentRecord | None:
        """The active deployment whose installer session has this SHA-256."""

    async def update(
        self, deployment_id: int, *, expect_state: str | None = None, **changes: Any
    ) -> DeploymentRecord:
        """Change fields (``state``, ``attempt``, ``ranges_done``…) in one transaction.

        With ``expect_state``, ConflictError when the deployment moved on meanwhile (another
        writer won): callers re-read and decide again.
        """

    async def claim(
        self, owner: str, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[DeploymentRecord]:
        """Active deployments this owner drives from now on until ``lease_until``: those it
        holds already and those whose lease is free or expired (``FOR UPDATE SKIP LOCKED`` on
        PostgreSQL, so two managers never take the same one)."""

    async def add_event(
        self, deployment_id: int, state: str, kind: str, detail: str, *, at: datetime | None = None
    ) -> DeploymentEventRecord: ...

    async def events(
        self, deployment_id: int, *, after: int = 0, limit: int = 1000
    ) -> list[DeploymentEventRecord]:
        """Oldest first, those with an id above ``after``."""

    async def list(
        self, *, node: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[DeploymentRecord]:
        """Newest first."""


class ReservationRepository(Protocol):
    """Reservations and their timers. Booking locks the nodes it may take, so two managers (or
    two requests) cannot both book one node; timers are claimed like deployments."""

    async def create(
        self,
        lock: Sequence[str],
        decide: Callable[[list[ReservationRecord]], ReservationDraft],
        *,
        now: datetime,
    ) -> ReservationRecord:
        """With the nodes ``lock`` held, ``decide(live reservations)`` (pure, raises to refuse)
        gives the reservation to write, with its timers."""

    async def get(self, reservation_id: int) -> ReservationRecord:
        """NotFoundError for an unknown id."""

    async def live(self) -> list[ReservationRecord]:
        """Scheduled, active and ending ones, soonest first."""

    async def extend(
        self,
        reservation_id: int,
        decide: Callable[
            [ReservationRecord, list[ReservationRecord]], tuple[datetime, Sequence[TimerDraft]]
        ],
        *,
        now: datetime,
    ) -> ReservationRecord:
        """Locked as ``create``: the new end and timers from ``decide``; old warnings and end
        superseded."""

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
        """ConflictError unless it is in ``expect`` (with ``expect_end``); a final state closes
        its open timers."""

    async def mark_used(self, reservation_id: int, at: datetime) -> None: ...

    async def end_now(self, reservation_id: int, at: datetime) -> None:
        """Its open end timer becomes due at ``at``."""

    async def add_timer(self, reservation_id: int, draft: TimerDraft) -> TimerRecord: ...

    async def timers(self, reservation_id: int) -> list[TimerRecord]:
        """In due order."""

    async def claim_timers(
        self, owner: str, *, now: datetime, lease_until: datetime, limit: int
    ) -> list[TimerRecord]:
        """Due open timers, free, lapsed or already ``owner``'s, held until ``lease_until``."""

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
        """Done (or due again at ``again_at``) if ``owner`` holds it, with an outbox row
        (receiver, key, payload) in the same transaction; False when it lost the claim."""

    async def next_due(self, owner: str, now: datetime) -> datetime | None:
        """When the earliest open timer ``owner`` could claim is due."""

    async def owner_activity(
        self, owner: str, nodes: Sequence[str], since: datetime
    ) -> datetime | None:
        """The owner's latest login, session or token use, or deployment to ``nodes``, after
        ``since``."""

    async def list(
        self, *, owner: str | None = None, live: bool | None = None, limit: int = 200
    ) -> list[ReservationRecord]:
        """Newest first."""


class Repositories(Protocol):
    """Everything the store offers, one repository per kind of record."""

    @property
    def nodes(self) -> NodeRepository: ...

    @property
    def switches(self) -> SwitchRepository: ...

    @property
    def audit(self) -> AuditRepository: ...

    @property
    def alerts(self) -> AlertRepository: ...

    @property
    def users(self) -> UserRepository: ...

    @property
    def tokens(self) -> TokenRepository: ...

    @property
    def sessions(self) -> SessionRepository: ...

    @property
    def environments(self) -> EnvironmentRepository: ...

    @property
    def deployments(self) -> DeploymentRepository: ...

    @property
    def reservations(self) -> ReservationRepository: ...
