"""The power-driver contract: primitives a driver implements, and what they return.

A driver switches one port (or outlet, relay, node) of one power device. It implements only
primitives — :meth:`PowerDriver.set_port` and :meth:`PowerDriver.get_port` (which reports the draw
in watts when the device can) — and raises:

- :class:`~piman.errors.PowerConnError` when the device did not answer (the controller retries);
- :class:`~piman.errors.PowerFatalError` when a retry will not help (credentials, an OID the device
  lacks or cannot write, invalid settings). The message names the switch and what to fix.

Retries, the off-wait-on cycle, read-back and staggering live once, in
:mod:`piman.power.controller`, with the clock injected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from piman.errors import PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading

if TYPE_CHECKING:
    from piman.config.models import NodeSettings
    from piman.config.power import SwitchSettings

__all__ = ["DriverFactory", "ManualActionRequired", "PowerDriver", "Rebooter"]


class ManualActionRequired(PowerFatalError):
    """The driver cannot act by itself; the message tells the operator what to do by hand."""


class PowerDriver(Protocol):
    """One power device (a PoE switch, a relay board, a webhook …) and its ports.

    Implementations are cheap to build (no I/O in ``__init__``) and release what they hold in
    :meth:`close`.
    """

    @property
    def name(self) -> str:
        """The driver kind, e.g. ``snmp-poe``."""

    @property
    def switch(self) -> str:
        """The configured switch name, for messages."""

    @property
    def has_readback(self) -> bool:
        """True when get_port reads the device (False: it echoes the last set)."""

    @property
    def has_detection(self) -> bool:
        """True when get_port reports a PSE detection status."""

    async def set_port(self, port: int, state: PowerState) -> None:
        """Switch a port on or off (``state`` is ON or OFF)."""

    async def get_port(self, port: int) -> PortReading:
        """Read a port's state."""

    async def close(self) -> None:
        """Release sockets, engines, sessions."""


@runtime_checkable
class Rebooter(Protocol):
    """A driver that cannot cut power but can restart a node in one step (``ssh-reboot``)."""

    async def reboot(self, port: int) -> None:
        """Restart what hangs on ``port``."""


class DriverFactory(Protocol):
    """Builds a driver for one configured switch; ``nodes`` maps port → node on it."""

    def __call__(self, switch: SwitchSettings, nodes: dict[int, NodeSettings]) -> PowerDriver: ...
