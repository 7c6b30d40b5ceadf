"""The typed context: what the manager gives each capability, and the handle each one gives back.

Theory of operation. The manager (``piman.manager``) opens the store and builds one
:class:`AppContext`. It then calls each capability's ``build(ctx)`` in turn (inventory, power,
netboot, monitor, access); a capability that the configuration turns off returns None, the
others return a :class:`Built`: their **handle** and their long-running **services**. The
manager sets the handle on the context (``ctx.power = built.handle`` …), so a later capability
and the entry points (the web, the CLI's server) find it there, and runs the services.

A handle is the whole of what the web and the CLI may call on a capability. Each is a
:class:`~typing.Protocol` here, with values from ``piman.fleet`` in its signatures, so this
module depends on no capability, and no capability on the web, the CLI or the manager. The
arrows of the package (held by the import-linter contract in ``.importlinter``)::

    cli, sim → web → manager → access | inventory | power | netboot | monitor
             → context → store → fleet → config → errors
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.fleet.metrics import NodeSnapshot, Series
from piman.fleet.ports import Repositories
from piman.fleet.power import PowerAction, PowerResult, PowerTarget
from piman.fleet.records import (
    AlertHistoryRecord,
    AlertRecord,
    DeploymentEventRecord,
    DeploymentRecord,
    DiscoveredDevice,
    EnvironmentRecord,
    NodeRecord,
    OutboxItem,
    SilenceRecord,
    TokenRecord,
    UserRecord,
)
from piman.fleet.reservations import (
    FreeSlot,
    NodeAvailability,
    NodeSelection,
    ReservationRecord,
    ReservationRequest,
    TimerRecord,
)
from piman.fleet.ssh import SshResult, SshTarget

__all__ = [
    "AccessHandle",
    "AlertingHandle",
    "AppContext",
    "Built",
    "DeployHandle",
    "DeployOptions",
    "InventoryHandle",
    "MonitorHandle",
    "NetbootHandle",
    "PowerHandle",
    "Principal",
    "ReservationsHandle",
    "Service",
    "SshHandle",
]

H = TypeVar("H", covariant=True)


class Service(Protocol):
    """A long-running part of the manager, run under a supervisor in one TaskGroup."""

    @property
    def name(self) -> str: ...

    async def serve(self) -> None:
        """Run until cancelled. Raising means failure: the supervisor restarts it."""


@dataclass(frozen=True, slots=True)
class Built(Generic[H]):
    """What a capability's ``build(ctx)`` returns: its handle, the services to run, and what the
    manager awaits before any service starts (``startup``, in order)."""

    handle: H
    services: tuple[Service, ...] = ()
    startup: tuple[Callable[[], Awaitable[None]], ...] = ()


# Inventory ---------------------------------------------------------------------------------------


class InventoryHandle(Protocol):
    """Sightings: what the netboot servers saw on the wire, recorded on the nodes.

    A MAC the store has no node for is not made a node: it goes to the discovered list (in
    memory, bounded, each device forgotten a day after it was last seen), which
    :meth:`discovered` reads and :meth:`accept` turns into nodes, one at a time, by an
    operator's decision (``piman discover`` builds on these two).
    """

    async def load(self) -> None:
        """Learn which MACs the store knows (a server calls it when it starts)."""

    def is_known(self, mac: str) -> bool:
        """True when the store has a node with this MAC."""

    def note(
        self,
        mac: str,
        *,
        ip: str | None = None,
        serial: str | None = None,
        model: str | None = None,
        vendor_class: str | None = None,
    ) -> bool:
        """A device was seen: a node's sighting is recorded in the background, another device
        is listed as discovered. False when it taught nothing new (throttled)."""

    def discovered(self) -> list[DiscoveredDevice]:
        """Devices seen on the wire that are not nodes, the most recently seen first."""

    async def accept(self, mac: str, name: str | None = None) -> NodeRecord:
        """Make the discovered device ``mac`` a ``new`` node named ``name`` (default
        ``pi-<mac without colons>``) with what was seen of it, and stop listing it.

        NotFoundError when no such device is listed, ConflictError when the name is taken,
        ValueError for a malformed MAC or name.
        """


class SshHandle(Protocol):
    """Commands on nodes over SSH (``piman.inventory.ssh``): the fleet key, the known host keys
    (learnt at deploy or on first contact, checked every time after), bounded concurrency and a
    connect and a command deadline per host. The ``ssh-reboot`` power driver, agentless
    monitoring, self-healing and the ``/api/v1/ssh`` routes all go through it."""

    async def targets(self, nodes: Sequence[str]) -> list[SshTarget]:
        """Node names → where to log in (the node's address and SSH user); NotFoundError for an
        unknown name, ValueError for a node with no known address."""

    def stream(
        self,
        targets: Sequence[SshTarget],
        command: str,
        *,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        concurrency: int | None = None,
    ) -> AsyncIterator[SshResult]:
        """Run ``command`` on every target; each result as soon as its host is done."""

    async def run(
        self,
        targets: Sequence[SshTarget],
        command: str,
        *,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        concurrency: int | None = None,
    ) -> list[SshResult]:
        """Run ``command`` on every target; the results in the targets' order."""

    async def learn_host_key(self, target: SshTarget) -> str:
        """Replace what is known of ``target``'s host key by the key it offers now, whatever
        ``ssh.host_keys`` says: for a node the manager itself has just reinstalled (the deploy
        engine calls it when a deployment ends well). The key's ``SHA256:…`` fingerprint;
        SshFailure when the node does not answer."""


# Power -------------------------------------------------------------------------------------------


class PowerHandle(Protocol):
    """Switch ports through the configured power drivers (retries, read-back, staggering)."""

    def resolve(self, specs: Sequence[str]) -> list[PowerTarget]:
        """Node names, ``switch:port`` and ``all`` → targets; NotFoundError says which is wrong."""

    async def run(
        self, action: PowerAction, targets: Sequence[PowerTarget], *, actor: str
    ) -> list[PowerResult]:
        """One command on every target, in the order given; ``actor`` goes to the audit log."""


# Netboot -----------------------------------------------------------------------------------------


class NetbootHandle(Protocol):
    """The netboot servers that run."""

    def addresses(self) -> dict[str, tuple[str, int]]:
        """``{"dhcp": (host, port), "tftp": …}`` for the servers that are listening."""


# Monitoring --------------------------------------------------------------------------------------


class AlertingHandle(Protocol):
    """Alerts that fire or are pending, their history, and silences."""

    @property
    def rule_count(self) -> int: ...

    @property
    def last_evaluated(self) -> float | None: ...

    async def wait_restored(self, within: float) -> bool:
        """True once the evaluator restored its state and caught up after a start."""

    def active(self) -> list[AlertRecord]:
        """Pending and firing alerts, firing and oldest first."""

    def recent(self) -> list[AlertHistoryRecord]:
        """The last few transitions to firing or resolved, newest first (kept in memory)."""

    async def history(self, limit: int) -> list[AlertHistoryRecord]:
        """Transitions from the store, newest first."""

    def silenced_by(
        self, labels: Mapping[str, str], silences: Sequence[SilenceRecord], now: float
    ) -> list[str]:
        """Ids of the silences that mute an alert with these labels at ``now``."""

    async def silences(self, *, active_at: float | None = None) -> list[SilenceRecord]:
        """Every silence, newest first (only those active at ``active_at`` when given)."""

    async def add_silence(
        self,
        matchers: str | Sequence[str],
        *,
        duration: float,
        created_by: str,
        comment: str = "",
        now: float | None = None,
    ) -> SilenceRecord:
        """A new silence; RuleError for bad matchers, ValueError for a bad duration."""

    async def expire_silence(self, silence_id: str, *, now: float | None = None) -> SilenceRecord:
        """End a silence now (id or a unique prefix); NotFoundError."""

    async def outbox(self, *, state: str | None = None, limit: int = 100) -> list[OutboxItem]:
        """Notifications of the outbox, newest first, all or those in ``state``: ``pending``,
        ``dead``, ``undelivered`` (pending or dead), ``delivered``; ValueError for another."""

    async def requeue_dead(self, ids: Sequence[int] = ()) -> int:
        """Dead notifications (those of ``ids``, or all) pending again now; how many."""


class MonitorHandle(Protocol):
    """The metrics store and the per-node snapshot the collector keeps; alerting when on."""

    async def query_range(
        self,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> list[Series]:
        """Series of one metric in ``[start, end]`` (raw, or one point per ``step``)."""

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        """The newest ``/events`` JSON the collector got from a node's agent."""

    def snapshot(self, node: str) -> NodeSnapshot | None:
        """The node's latest values and short histories (None before its first scrape)."""

    @property
    def alerting(self) -> AlertingHandle | None: ...


# Deploy ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeployOptions:
    """What one deployment overrides of ``deploy.customise`` (None: the configured value)."""

    hostname: str | None = None  # a name, or a pattern with {node}
    ssh_keys: tuple[str, ...] = ()  # added to the configured keys
    user: str | None = None
    password_hash: str | None = None
    customisation: str | None = None  # firstrun | cloudinit | none (else the environment's)


class DeployHandle(Protocol):
    """Environments and deployments; the node-facing ``/boot/v1`` conversation."""

    async def environments(self) -> list[EnvironmentRecord]: ...

    async def environment(self, name: str) -> EnvironmentRecord:
        """NotFoundError for an unknown name."""

    async def start(
        self,
        nodes: Sequence[str],
        environment: str | None,
        *,
        actor: str,
        options: DeployOptions | None = None,
    ) -> list[DeploymentRecord]:
        """Deploy to each node (all or none): NotFoundError (node, environment), ConflictError
        (a node already deploying), ValueError (a node that cannot be powered or deployed)."""

    async def deployment(self, deployment_id: int) -> DeploymentRecord: ...

    async def deployments(
        self, *, node: str | None = None, active: bool | None = None, limit: int = 100
    ) -> list[DeploymentRecord]: ...

    async def events(
        self, deployment_id: int, *, after: int = 0
    ) -> list[DeploymentEventRecord]: ...

    async def wait_change(self, within: float) -> None:
        """Return when any deployment changed here, or after ``within`` seconds (for SSE)."""

    async def cancel(self, deployment_id: int, *, actor: str) -> DeploymentRecord: ...

    # The installer (``/boot/v1``): every call checks the secret and the node's address.

    async def hello(self, token: str, client: str, report: Mapping[str, Any]) -> str:
        """The plan for the deployment that holds this one-time token; Forbidden why not."""

    async def progress(
        self, deployment_id: int, session: str, client: str, report: Mapping[str, Any]
    ) -> None:
        """Forbidden (bad session), Gone (the deployment ended: the installer stops)."""

    async def result(
        self, deployment_id: int, session: str, client: str, report: Mapping[str, Any]
    ) -> None: ...

    async def files(self, deployment_id: int, session: str, client: str) -> bytes:
        """The customisation tar for the boot partition."""

    # The boot tree asks these (fast: no database on the TFTP path).

    def boot_choice(self, node: str) -> str | None:
        """``installer``, ``local`` or None (no active deployment: the node's usual tree)."""

    def installer_args(self, node: str) -> dict[str, str] | None:
        """The installer's kernel parameters for this node (token, URL, disk), or None."""

    def boot_cmdline(self, node: str) -> str | None:
        """The cmdline.txt the node's own tree serves (with first-boot words), or None."""

    def local_boot_seen(self, node: str, name: str) -> None:
        """The node fetched ``name`` from its own boot files (``config.txt`` or ``boot.ipxe``
        start a boot: the first-boot words of ``cmdline.txt`` are for the first one only)."""


# Access ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who makes a request: an authenticated user (by password/session or by API token)."""

    user: str
    role: str
    via: str  # "session", "token", "metrics-token", "local"
    token_prefix: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this principal (never a name the client sent)."""
        if self.via == "token" and self.token_prefix:
            return f"{self.user} (token {self.token_prefix})"
        return self.user


class AccessHandle(Protocol):
    """Accounts, API tokens, browser sessions and who may do what."""

    async def check_password(self, name: str, password: str, *, client: str) -> UserRecord:
        """The user whose password this is; AuthError, RateLimited (as :meth:`login`)."""

    async def login(self, name: str, password: str, *, client: str) -> tuple[Principal, str]:
        """Check a password; a new session. Returns the principal and the session cookie value.

        AuthError (generic message) for a wrong name or password, RateLimited when the name or
        the client failed too often.
        """

    async def logout(self, cookie: str) -> None: ...

    async def from_session(self, cookie: str) -> Principal | None:
        """The principal of a session cookie, or None (unknown, forged, idle or expired)."""

    async def from_token(self, token: str) -> Principal | None:
        """The principal of an API token, or None (unknown, revoked or expired)."""

    def from_local(self, secret: str, user: str) -> Principal | None:
        """Root's CLI on the manager machine (``data_dir/local.key``), or None."""

    async def users(self) -> list[UserRecord]: ...

    async def add_user(self, name: str, role: str, password: str) -> UserRecord: ...

    async def remove_user(self, name: str) -> None: ...

    async def set_role(self, name: str, role: str) -> UserRecord: ...

    async def set_password(self, name: str, password: str) -> UserRecord: ...

    async def set_email(self, name: str, email: str | None) -> UserRecord:
        """Where the user's mail goes (None clears it); ValueError, NotFoundError."""

    async def tokens(self, user: str | None) -> list[TokenRecord]: ...

    async def create_token(
        self, user: str, name: str, expires_at: datetime | None
    ) -> tuple[TokenRecord, str]:
        """A new token for ``user``; returns its record and the token itself (shown once)."""

    async def revoke_token(self, token_id: int, *, user: str | None) -> TokenRecord:
        """Revoke (only among ``user``'s tokens when given); NotFoundError."""


class ReservationsHandle(Protocol):
    """Nodes handed to users for a time (:mod:`piman.access.reservations_service`).

    Who may do what is decided here, from the principal: role ``user`` books for themselves
    within the configured limits and sees, extends and releases their own reservations;
    operators and admins book for anyone, unlimited, and see, extend and end any; viewers see.
    Errors: Forbidden, NotFoundError, ValueError (a bad request), LimitExceeded,
    ReservationConflict (who holds the nodes, the next free slot), ConflictError (it is over).
    """

    async def reserve(
        self, request: ReservationRequest, *, principal: Principal
    ) -> ReservationRecord:
        """Book nodes; one that starts now is started before this returns (nodes allocated,
        the environment's deployment started)."""

    async def reservations(
        self, *, principal: Principal, owner: str | None = None, live: bool | None = None
    ) -> list[ReservationRecord]:
        """Newest first: a ``user``'s own, everyone's for the others (``owner`` filters)."""

    async def reservation(self, reservation_id: int, *, principal: Principal) -> ReservationRecord:
        """One reservation its owner, or a reader, may see."""

    async def timers(self, reservation_id: int) -> list[TimerRecord]:
        """What is planned for it (and what was done), in due order."""

    async def extend(
        self, reservation_id: int, by: float, *, principal: Principal
    ) -> ReservationRecord: ...

    async def release(self, reservation_id: int, *, principal: Principal) -> ReservationRecord:
        """End it now: a scheduled one is cancelled, an active one released (power off,
        redeploy or nothing, as configured); ConflictError when it is over already."""

    async def availability(self) -> list[NodeAvailability]:
        """Every node, with its live reservations (for anyone who may reserve)."""

    async def next_free(
        self, selection: NodeSelection, duration: float, *, after: datetime | None = None
    ) -> FreeSlot | None:
        """When a request would fit first (None: never, too few nodes match)."""

    async def holds(self, user: str, node: str) -> bool:
        """Whether ``user`` holds ``node`` now (an active reservation of theirs)."""


# The context -------------------------------------------------------------------------------------


@dataclass
class AppContext:
    """What the manager's parts share. Built once by the manager; passed down explicitly."""

    config: Config
    store: Repositories
    metrics: CollectorRegistry
    started_at: float = field(default_factory=time.time)
    inventory: InventoryHandle | None = None
    ssh: SshHandle | None = None
    power: PowerHandle | None = None
    netboot: NetbootHandle | None = None
    monitor: MonitorHandle | None = None
    deploy: DeployHandle | None = None
    access: AccessHandle | None = None
    reservations: ReservationsHandle | None = None
