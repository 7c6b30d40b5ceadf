"""Power operations as values: what a command acts on, what a port reads, how a target ended.

These are what the power capability hands to the web and the CLI (see ``piman.context``), so
they live in the domain, below every capability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from piman.config.power import SwitchSettings
from piman.fleet.lifecycle import PowerState

__all__ = [
    "DELIVERING_POWER",
    "POWER_ACTIONS",
    "PortReading",
    "PowerAction",
    "PowerResult",
    "PowerTarget",
]

DELIVERING_POWER = "deliveringPower"

PowerAction = Literal["on", "off", "cycle", "status"]
POWER_ACTIONS: tuple[PowerAction, ...] = ("on", "off", "cycle", "status")


@dataclass(frozen=True, slots=True)
class PortReading:
    """What a device says about one port.

    ``admin`` is what the port is set to; ``detection`` is the PSE's detection status name
    (RFC 3621: ``disabled``, ``searching``, ``deliveringPower``, ``fault``, ``test``,
    ``otherFault``) or None when the device has no such reading; ``watts`` likewise.
    """

    admin: PowerState
    detection: str | None = None
    watts: float | None = None

    @property
    def delivering(self) -> bool | None:
        """True/False when the device reports detection, None when it cannot tell."""
        if self.detection is None:
            return None
        return self.detection == DELIVERING_POWER


@dataclass(frozen=True, slots=True)
class PowerTarget:
    """One port of one switch, and the node on it when declared."""

    switch: SwitchSettings
    port: int
    node: str | None = None

    @property
    def where(self) -> str:
        return f"{self.switch.name}:{self.port}"

    @property
    def label(self) -> str:
        return self.node or self.where

    @property
    def is_uplink(self) -> bool:
        return self.switch.uplink_port is not None and self.port == self.switch.uplink_port


@dataclass(frozen=True, slots=True)
class PowerResult:
    """How one target of a power command ended."""

    target: PowerTarget
    action: PowerAction
    ok: bool
    reading: PortReading | None = None
    error: str | None = None

    @property
    def state(self) -> PowerState:
        return self.reading.admin if self.reading is not None else PowerState.UNKNOWN
