"""Configuration of reservations: handing nodes to users for a time (``reservations:``).

Example (every field optional; these are the defaults, but for ``users`` and ``notify``)::

    reservations:
      release: power_off          # at the end: power_off | redeploy | none, then the node is ready
      default_environment: null   # what `redeploy` installs (default: deploy.default_environment)
      buffer: 15m                 # free time kept after each reservation on its nodes
      warnings: [1h, 10m]         # the owner is told this long before the end
      unused_after: 1h            # released when nobody used it (no deploy, no login) by then
      limits:                     # for role `user` (operators and admins are not limited)
        max_nodes: 8              # nodes held at once
        max_duration: 7d          # one reservation, as booked
        max_extensions: 3
        max_total: null           # one reservation with its extensions (null: no limit)
        max_ahead: 30d            # how far ahead a reservation may start
      users:                      # per user, what differs from `limits`
        alice: {max_nodes: 16}
      notify: ["mailtos://user:password@smtp.example.org?from=piman@example.org"]

The warnings go by e-mail to the owner's address (``piman`` accounts have an ``email``), through
the first ``mailto://``/``mailtos://`` URL of ``notify``, else of ``monitoring.notify``, and are
delivered by the monitoring notifier's outbox (so monitoring must be on for them to leave).
The section is on unless ``enabled: false``: accounts of role ``user`` act only on the nodes they
hold.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from piman.config.types import Duration

__all__ = [
    "MAIL_SCHEMES",
    "OWNER_MAIL_RECEIVER",
    "LimitSettings",
    "ReservationSettings",
    "owner_mail_url",
]

OWNER_MAIL_RECEIVER = "mail:owner"
"""The outbox's receiver name for mail to a reservation's owner (no secret in it)."""

MAIL_SCHEMES = ("mailto://", "mailtos://")


class LimitSettings(BaseModel):
    """What one user may book. ``null`` lifts a limit."""

    model_config = ConfigDict(extra="forbid")

    max_nodes: int | None = Field(default=8, ge=1)
    max_duration: Duration | None = 7 * 86400.0
    max_extensions: int | None = Field(default=3, ge=0)
    max_total: Duration | None = None
    max_ahead: Duration | None = 30 * 86400.0

    @field_validator("max_duration", "max_total", "max_ahead")
    @classmethod
    def _positive(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0 s (or null for no limit)")
        return value


class ReservationSettings(BaseModel):
    """``reservations:`` — see the module's documentation."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    release: Literal["power_off", "redeploy", "none"] = "power_off"
    default_environment: str | None = None
    buffer: Duration = 15 * 60.0
    warnings: list[Duration] = Field(default_factory=lambda: [3600.0, 600.0])
    unused_after: Duration | None = 3600.0
    limits: LimitSettings = Field(default_factory=LimitSettings)
    users: dict[str, LimitSettings] = Field(default_factory=dict)
    notify: list[str] = Field(default_factory=list)

    @field_validator("warnings")
    @classmethod
    def _warnings(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value):
            raise ValueError("a warning comes more than 0 s before the end")
        return sorted(set(value), reverse=True)

    @field_validator("unused_after")
    @classmethod
    def _unused(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be more than 0 s (or null: never release an unused one)")
        return value

    @field_validator("notify")
    @classmethod
    def _mail(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.lower().startswith(MAIL_SCHEMES):
                scheme = url.split("://", 1)[0] if "://" in url else "?"
                raise ValueError(
                    f"a {scheme}:// URL cannot reach an owner's address "
                    "(expected mailto:// or mailtos://)"
                )
        return value

    def limits_for(self, user: str) -> LimitSettings:
        """``limits`` with what ``users[user]`` sets laid over it."""
        own = self.users.get(user)
        if own is None:
            return self.limits
        return self.limits.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})


def owner_mail_url(reservations: ReservationSettings, monitoring_notify: list[str]) -> str | None:
    """The apprise URL that mails owners: the first mail URL of ``reservations.notify``, else of
    ``monitoring.notify``; None when there is none."""
    for url in (*reservations.notify, *monitoring_notify):
        if url.lower().startswith(MAIL_SCHEMES):
            return url
    return None
