"""Reservations as values: what the store keeps and what the rules and the API pass around.

The rules that move them (booking, limits, the states' transition table, timers) are in
:mod:`piman.access.reservations`; this module holds only the vocabulary, so that the store, the
context and the web can name a reservation without depending on the access capability.
Times are aware UTC ``datetime``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "LIVE",
    "Booking",
    "FreeSlot",
    "NodeAvailability",
    "NodeSelection",
    "ReservationDraft",
    "ReservationRecord",
    "ReservationRequest",
    "ReservationState",
    "TimerDraft",
    "TimerKind",
    "TimerRecord",
]


class ReservationState(StrEnum):
    SCHEDULED = "scheduled"  # booked, not started yet
    ACTIVE = "active"  # the owner holds the nodes
    ENDING = "ending"  # being released: power off or redeploy, then the nodes are ready
    RELEASED = "released"  # over
    CANCELLED = "cancelled"  # ended before it started


LIVE = frozenset({ReservationState.SCHEDULED, ReservationState.ACTIVE, ReservationState.ENDING})
"""States in which a reservation holds (or will hold) its nodes: they block other bookings."""


class TimerKind(StrEnum):
    START = "start"  # the nodes go to the owner (and the environment is deployed)
    WARN = "warn"  # the owner is told the end is near (``lead`` seconds before it)
    UNUSED = "unused"  # nobody used it since the start: release it
    END = "end"  # release: power off, redeploy or nothing, then ready
    FINISH = "finish"  # a redeploying release checks whether its deployments are over


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    """One reservation, as stored."""

    id: int
    owner: str
    nodes: tuple[str, ...]
    start_at: datetime
    end_at: datetime
    state: str  # a ReservationState value
    environment: str | None  # deployed at the start, when asked
    ssh_keys: tuple[str, ...]  # the owner's public keys for that deployment
    extensions: int  # how many times the end was moved later
    created_by: str  # the principal who booked it (an operator may book for a user)
    created_at: datetime
    started_at: datetime | None = None
    used_at: datetime | None = None  # the owner acted on it (seen by the service)
    ended_at: datetime | None = None
    reason: str | None = None  # why it ended: end, released by …, unused, missed
    deployments: tuple[int, ...] = ()  # deployments the reservation started (start or release)

    @property
    def live(self) -> bool:
        return self.state in LIVE

    @property
    def duration(self) -> float:
        return (self.end_at - self.start_at).total_seconds()


@dataclass(frozen=True, slots=True)
class TimerDraft:
    """A timer to store with a reservation."""

    kind: TimerKind
    due_at: datetime
    lead: float = 0.0  # seconds before the end, for warnings


@dataclass(frozen=True, slots=True)
class TimerRecord:
    """A stored timer. It is done once (``done_at``); a manager claims it before acting."""

    id: int
    reservation: int
    kind: str  # a TimerKind value
    due_at: datetime
    lead: float
    done_at: datetime | None
    outcome: str | None
    claimed_by: str | None
    lease_until: datetime | None


@dataclass(frozen=True, slots=True)
class ReservationDraft:
    """A reservation decided by the rules, for the store to write with its timers."""

    owner: str
    nodes: tuple[str, ...]
    start_at: datetime
    end_at: datetime
    environment: str | None
    ssh_keys: tuple[str, ...]
    created_by: str
    timers: tuple[TimerDraft, ...]


@dataclass(frozen=True, slots=True)
class NodeSelection:
    """Which nodes a reservation asks for: by name, or ``count`` nodes that match a filter."""

    names: tuple[str, ...] = ()
    count: int | None = None
    model: str | None = None
    switch: str | None = None
    tags: tuple[str, ...] = ()

    def describe(self) -> str:
        """``rack1-01, rack1-02`` or ``2 nodes (model pi4, tags gpio)``."""
        if self.names:
            return ", ".join(self.names)
        count = self.count or 1
        parts = [f"model {self.model}"] if self.model else []
        if self.switch:
            parts.append(f"switch {self.switch}")
        if self.tags:
            parts.append(f"tags {','.join(self.tags)}")
        noun = "node" if count == 1 else "nodes"
        return f"{count} {noun}" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    """What a user asks: nodes, for how long, from when (None: now), with what."""

    selection: NodeSelection
    duration: float  # seconds
    start: datetime | None = None
    environment: str | None = None
    ssh_keys: tuple[str, ...] = ()
    owner: str | None = None  # book for another user (operators and admins)


@dataclass(frozen=True, slots=True)
class FreeSlot:
    """The earliest time a request fits, and the nodes it would get then."""

    start: datetime
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Booking:
    """A live reservation as the availability of one node shows it."""

    reservation: int
    owner: str
    start_at: datetime
    end_at: datetime
    state: str


@dataclass(frozen=True, slots=True)
class NodeAvailability:
    """One node of the fleet for someone who wants to reserve: who holds it, when it is free."""

    name: str
    model: str | None
    switch: str | None
    port: int | None
    tags: tuple[str, ...]
    state: str
    reservable: bool  # not new, broken or lost
    bookings: tuple[Booking, ...]  # live reservations of the node, soonest first

    def holder(self, at: datetime) -> Booking | None:
        """The booking that holds the node at ``at``: one that runs (active, or ending: being
        released), else one whose time covers ``at``; None when the node is free then."""
        running = (ReservationState.ACTIVE, ReservationState.ENDING)
        return next((b for b in self.bookings if b.state in running), None) or next(
            (b for b in self.bookings if b.start_at <= at < b.end_at), None
        )
