"""Which driver serves which ``driver:`` name: a registry instance filled from a literal list.

Tests build their own :class:`DriverRegistry` (with fakes); the manager and the CLI use
:func:`default_registry`.
"""

from __future__ import annotations

from collections.abc import Iterable

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.context import SshHandle
from piman.errors import PowerFatalError
from piman.power.base import DriverFactory, PowerDriver

__all__ = ["DriverRegistry", "default_registry"]


class DriverRegistry:
    """Driver factories by name. Raises ValueError on a duplicate name."""

    def __init__(self, entries: Iterable[tuple[str, DriverFactory]]) -> None:
        self._factories: dict[str, DriverFactory] = {}
        for name, factory in entries:
            if name in self._factories:
                raise ValueError(f"power driver {name!r} is registered twice")
            self._factories[name] = factory

    @property
    def names(self) -> list[str]:
        return sorted(self._factories)

    def build(self, switch: SwitchSettings, nodes: dict[int, NodeSettings]) -> PowerDriver:
        """A driver for one switch; raises PowerFatalError for an unknown or bad driver."""
        factory = self._factories.get(switch.driver)
        if factory is None:
            raise PowerFatalError(
                f"switch {switch.name!r}: driver {switch.driver!r} cannot switch power "
                f"(known: {', '.join(self.names)})"
            )
        return factory(switch, nodes)


def default_registry(ssh: SshHandle | None = None) -> DriverRegistry:
    """The drivers piman ships; ``ssh`` is the SSH client the ``ssh-reboot`` driver logs in
    with (the manager's ``ctx.ssh``; without one that driver refuses every request)."""
    from piman.power.command import CommandDriver
    from piman.power.manual import ManualDriver, SshRebootDriver
    from piman.power.poe import SnmpPoeDriver
    from piman.power.webhook import WebhookDriver

    return DriverRegistry(
        [
            ("snmp-poe", SnmpPoeDriver),
            ("command", CommandDriver),
            ("webhook", WebhookDriver),
            ("ssh-reboot", lambda switch, nodes: SshRebootDriver(switch, nodes, ssh=ssh)),
            ("manual", ManualDriver),
        ]
    )
