"""Configuration of self-healing (``healing:``): what the manager does about nodes that stay down.

Off unless the section is present. Example (the policy fields shown are the defaults)::

    healing:
      max_concurrent: 2          # nodes cycled or reinstalled at once, over every policy
      max_fraction: 0.5          # more than this share of a group (or of one switch in it) down
                                 # at once: a switch or uplink failure; nothing is healed there,
                                 # an alert (HealingHeld) says so instead
      interval: 5s               # how often the policy looks at the fleet
      alerts: [NodeDown]         # firing alerts (by their `node` label) that mean "down"
      policies:
        - name: racks
          nodes: [all]           # node names, switch:port, all, switch names or tags
          down_for: 5m           # down this long before anything is done
          cycles: 2              # power cycles to try
          cycle_wait: 3m         # how long each cycle has to bring the node back
          reinstall: true        # then reinstall with the node's environment
          reinstall_reserved: false  # also when a user's active reservation holds the node
          reinstall_wait: 30m    # how long the reinstall has
        # still down after all that: the node is `broken` (out of reservations and scrapes),
        # and the NodeQuarantined alert fires until an operator makes it ready again.

A node matched by several policies follows the first. Nodes that are powered off on purpose
(power state ``off``), deploying for someone else, or already ``broken`` are left alone.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from piman.config.types import Duration, Name

__all__ = ["HealingPolicy", "HealingSettings"]


class HealingPolicy(BaseModel):
    """One group of nodes and the ladder it climbs: power cycles, a reinstall, quarantine."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    nodes: list[str] = Field(default_factory=lambda: ["all"], min_length=1, max_length=1000)
    down_for: Duration = 300.0
    cycles: int = Field(default=2, ge=0, le=10)
    cycle_wait: Duration = 180.0
    reinstall: bool = True
    reinstall_reserved: bool = False
    reinstall_wait: Duration = 1800.0

    @model_validator(mode="after")
    def _waits(self) -> HealingPolicy:
        for field in ("down_for", "cycle_wait", "reinstall_wait"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be more than 0 s")
        return self


class HealingSettings(BaseModel):
    """``healing:`` (module doc). Present means on, unless ``enabled: false``."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_concurrent: int = Field(default=2, ge=1, le=1000)
    max_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    interval: Duration = 5.0
    alerts: list[str] = Field(default_factory=lambda: ["NodeDown"], min_length=1)
    policies: list[HealingPolicy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> HealingSettings:
        seen: set[str] = set()
        for policy in self.policies:
            if policy.name in seen:
                raise ValueError(f"two healing policies are named {policy.name!r}")
            seen.add(policy.name)
        if self.interval <= 0:
            raise ValueError("interval must be more than 0 s")
        return self
