"""Errors of piman, grouped by meaning.

Every error piman raises on purpose derives from :class:`PimanError`. The CLI turns them into one
clear line and an exit code (2 for bad input, 1 for a failed operation); services log them.

::

    PimanError
    ├── AccessError                 a request was not allowed
    │   ├── AuthError               no valid credentials: wrong password, unknown token (HTTP 401)
    │   ├── Forbidden               the principal's role does not allow it (HTTP 403)
    │   ├── Gone                    what the request is about has ended (HTTP 410)
    │   └── RateLimited             too many failed logins; ``retry_after`` seconds (HTTP 429)
    ├── ConfigError                 bad configuration: file, field path, what was expected (exit 2)
    ├── RuleError                   an alert expression or matcher does not parse (a ValueError too)
    ├── StoreError                  the database could not be opened, migrated or written
    ├── NotFoundError               a named node, switch or object does not exist
    ├── ConflictError               the request clashes with what is: taken name, busy node (409)
    │   └── ReservationConflict     a node is reserved then: who holds it, the next free slot
    ├── LimitExceeded               a reservation beyond the configured limits (HTTP 422)
    ├── ProtocolError               a peer broke a wire protocol
    │   └── MalformedPacket         (per codec; subclasses ValueError too) bytes that do not decode
    ├── PowerError                  a power operation failed (see piman.power.base)
    │   ├── PowerConnError          unreachable / timed out: worth retrying
    │   └── PowerFatalError         bad credentials, unknown/read-only OID, bad settings: no retry
    ├── NotifyError                 a notification could not be delivered (retried from the outbox)
    │   └── NotifyRejected          the receiver refused this one notification (HTTP 4xx): no retry
    ├── QueryTooLarge               a metrics query would read or return too much (HTTP 422;
    │                               piman.monitor.collector.query)
    ├── ImageError                  a disk image or block map is corrupt or truncated (exit 2;
    │                               piman.deploy.errors)
    ├── InstallerBuildError         the installer could not be built (piman.deploy.installer)
    └── SshFailure                  one host over SSH: unreachable, login or host key refused,
                                    out of time; the message is the line users see
                                    (piman.inventory.ssh)

Codecs define their own ``MalformedPacket`` subclasses next to the packet types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "AccessError",
    "AuthError",
    "ConfigError",
    "ConfigProblem",
    "ConflictError",
    "Forbidden",
    "Gone",
    "LimitExceeded",
    "NotFoundError",
    "NotifyError",
    "NotifyRejected",
    "PimanError",
    "PowerConnError",
    "PowerError",
    "PowerFatalError",
    "ProtocolError",
    "RateLimited",
    "ReservationConflict",
    "RuleError",
    "StoreError",
]


class PimanError(Exception):
    """Base of every error piman raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration: where, and what was expected."""

    source: str  # file name as the user gave it
    path: str  # field path such as ``switches[1].address``; empty for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return f"{where}: {self.message}"


class ConfigError(PimanError):
    """A configuration (YAML file, hosts.csv, command-line value) is not valid.

    Holds every problem found, so a user can fix them all in one go.
    """

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RuleError(PimanError, ValueError):
    """An alert rule, selector or matcher does not parse; the message says what was expected."""


class AccessError(PimanError):
    """A request was not allowed (the subclass says why)."""


class AuthError(AccessError):
    """No valid credentials. The message never says which part was wrong."""


class Forbidden(AccessError):
    """The principal is known but its role does not allow this."""


class Gone(AccessError):
    """What the request is about has ended (a cancelled or finished deployment)."""


class RateLimited(AccessError):
    """Too many failed attempts; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(PimanError):
    """The database could not be opened, migrated, read or written."""


class NotFoundError(PimanError):
    """A named object (node, switch, alert, environment) does not exist."""


class ConflictError(PimanError):
    """The request clashes with the current state: a name taken, a node already deploying."""


class ReservationConflict(ConflictError):
    """A node asked for is reserved at that time. The message names the holder; ``holder``,
    ``reservation`` (its id) and ``next_free`` (when the same request would fit, or None) say
    it to programs."""

    def __init__(
        self,
        message: str,
        *,
        holder: str | None = None,
        reservation: int | None = None,
        next_free: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.holder = holder
        self.reservation = reservation
        self.next_free = next_free


class LimitExceeded(PimanError):
    """A reservation asks for more than the configured limits allow (nodes, time, extensions)."""


class ProtocolError(PimanError):
    """A peer broke a wire protocol."""


class PowerError(PimanError):
    """A power operation failed on a switch or another power driver."""


class PowerConnError(PowerError):
    """The power device could not be reached or did not answer in time: worth retrying."""


class PowerFatalError(PowerError):
    """The power device refused the operation for a reason a retry will not fix.

    Wrong credentials, an OID the device does not have, a read-only OID, invalid settings.
    """


class NotifyError(PimanError):
    """A notification could not be delivered; the outbox retries it."""


class NotifyRejected(NotifyError):
    """The receiver answered and refused this notification (HTTP 4xx): a retry will not help.

    The outbox gives up on it at once (dead letter) and goes on with the next one.
    """
