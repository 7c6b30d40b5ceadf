"""What the store hands out and takes in: plain, frozen records (no ORM objects leave the store).

Times of the inventory (nodes, switches, audit, accounts) are aware UTC ``datetime``s; times of
the alert book are UNIX seconds (``float``), as the evaluator computes with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "AlertGroupRecord",
    "AlertHistoryRecord",
    "AlertRecord",
    "AuditRecord",
    "DeploymentEventRecord",
    "DeploymentRecord",
    "DiscoveredDevice",
    "EnvironmentRecord",
    "NodeRecord",
    "OutboxItem",
    "SessionRecord",
    "SilenceRecord",
    "SwitchRecord",
    "TickChanges",
    "TokenRecord",
    "UserRecord",
]


@dataclass(frozen=True, slots=True)
class SwitchRecord:
    name: str
    address: str | None
    driver: str
    profile: str | None
    declared: bool


@dataclass(frozen=True, slots=True)
class NodeRecord:
    name: str
    mac: str | None
    ip: str | None
    serial: str | None
    model: str | None
    hostname: str | None
    agent_url: str | None
    switch: str | None
    port: int | None
    state: str
    power_state: str
    vendor_class: str | None
    first_seen: datetime | None
    last_seen: datetime | None
    declared: bool

    @property
    def switch_port(self) -> str:
        """``rack1:2``, or ``-`` for a node not on a switch."""
        if self.switch is None:
            return "-"
        return f"{self.switch}:{self.port}" if self.port is not None else self.switch


@dataclass(frozen=True, slots=True)
class DiscoveredDevice:
    """A device the netboot servers saw that is not a node: kept in memory (bounded, expiring)
    until an operator accepts it (``InventoryHandle.accept``). ``sightings`` counts the packets
    that named it; the other fields are the latest the wire said (None: never said)."""

    mac: str
    first_seen: datetime
    last_seen: datetime
    sightings: int
    ip: str | None = None
    serial: str | None = None
    model: str | None = None
    vendor_class: str | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    target: str
    result: str
    detail: str | None


# Alerts ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert of the book (pending, firing, or resolved and not yet notified)."""

    fingerprint: str
    rule: str
    labels: dict[str, str]
    annotations: dict[str, str]
    state: str  # pending | firing | resolved
    active_at: float  # when the condition became true (start of pending)
    fired_at: float | None  # startsAt
    resolved_at: float | None  # endsAt
    value: float
    late: bool


@dataclass(frozen=True, slots=True)
class AlertGroupRecord:
    """An Alertmanager-style notification group: its timers and what it last sent."""

    key: str
    labels: dict[str, str]
    created_at: float
    next_flush_at: float
    last_flush_at: float | None
    sent: frozenset[tuple[str, str, float]]


@dataclass(frozen=True, slots=True)
class AlertHistoryRecord:
    """An alert went firing or resolved."""

    at: float
    fingerprint: str
    rule: str
    labels: dict[str, str]
    state: str  # firing | resolved
    value: float
    late: bool

    @property
    def node(self) -> str:
        return self.labels.get("node", "")


@dataclass(frozen=True, slots=True)
class SilenceRecord:
    id: str
    matchers: str  # as the user wrote them, normalised: a="x",b=~"y"
    starts_at: float
    ends_at: float
    created_by: str
    comment: str

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def status(self, now: float) -> str:
        """``active``, ``pending`` (starts later) or ``expired``."""
        if self.active(now):
            return "active"
        return "pending" if self.starts_at > now else "expired"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    receiver: str
    key: str
    payload: dict[str, Any]
    created_at: float
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    last_error: str | None
    dead_at: float | None = None  # given up on (attempts exhausted or refused): not retried

    @property
    def state(self) -> str:
        """``pending``, ``delivered`` or ``dead``."""
        if self.delivered_at is not None:
            return "delivered"
        return "dead" if self.dead_at is not None else "pending"


@dataclass(slots=True)
class TickChanges:
    """What one evaluation tick changed, saved in one transaction."""

    alerts: list[AlertRecord] = field(default_factory=list)
    deleted_alerts: list[str] = field(default_factory=list)
    groups: list[AlertGroupRecord] = field(default_factory=list)
    deleted_groups: list[str] = field(default_factory=list)
    history: list[AlertHistoryRecord] = field(default_factory=list)
    # (receiver, idempotency key, payload, queued at)
    outbox: list[tuple[str, str, dict[str, Any], float]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)


# Accounts ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserRecord:
    """An account. ``password_hash`` is an Argon2id PHC string, never a password."""

    name: str
    role: str
    password_hash: str
    created_at: datetime
    updated_at: datetime
    email: str | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token: only its SHA-256 is stored; ``prefix`` identifies it to people."""

    id: int
    user: str
    name: str
    prefix: str
    digest: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A browser session: only the SHA-256 of its id is stored."""

    digest: str
    user: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime  # absolute expiry
    address: str | None = None


# Reinstalls --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnvironmentRecord:
    """An OS image the manager can deploy, as imported (``piman env add``)."""

    name: str
    source: str  # the file it was imported from (name only)
    source_sha256: str
    kind: str  # img, xz, gz, zst, piseduce, rootfs
    image_size: int
    image_sha256: str
    mapped_bytes: int
    table: str  # mbr | gpt
    os_family: str
    customisation: str  # firstrun | cloudinit | none
    boot_files: tuple[str, ...]
    cmdline: str | None
    description: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """One deployment of an environment to one node, where it stands (see deploy.machine)."""

    id: int
    node: str
    environment: str
    state: str  # a deploy.machine.State value
    attempt: int  # power cycles spent in the current step
    deadline_at: datetime | None  # when the current step times out
    ranges_done: int  # plan ranges written and synced on the node
    bytes_done: int
    bytes_total: int
    token_digest: str | None  # the one-time token for the installer's hello (SHA-256)
    token_expires_at: datetime | None
    session_digest: str | None  # the installer's session after hello (SHA-256)
    options: dict[str, Any]  # hostname, ssh keys, user … for this deployment
    result: str | None  # ok | failed | cancelled, once finished
    reason: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    claimed_by: str | None  # the manager driving it
    lease_until: datetime | None

    @property
    def active(self) -> bool:
        return self.result is None


@dataclass(frozen=True, slots=True)
class DeploymentEventRecord:
    """Something that happened to a deployment (a transition, a progress report, a log line)."""

    id: int
    deployment: int
    at: datetime
    state: str
    kind: str  # transition | progress | power | log
    detail: str
