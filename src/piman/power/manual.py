"""Drivers for nodes without a switchable power source: ``ssh-reboot`` and ``manual``.

``ssh-reboot`` restarts a node in one step over SSH (``reboot``, with ``sudo -n`` unless it logs
in as root) through the fleet's SSH client (``piman.context.SshHandle``: the fleet key and known
host keys; the switch's ``ssh_key_file`` is not used); it can switch a node off (``poweroff``)
but never on. ``manual`` does
nothing by itself: every request raises :class:`~piman.power.base.ManualActionRequired`, whose
message tells the operator what to do by hand.
"""

from __future__ import annotations

import dataclasses
import logging

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.context import SshHandle
from piman.errors import NotFoundError, PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading
from piman.fleet.ssh import SshTarget
from piman.power.base import ManualActionRequired

__all__ = ["ManualDriver", "SshRebootDriver"]

logger = logging.getLogger(__name__)

SSH_TIMEOUT = 30.0


def _who(switch: str, port: int, nodes: dict[int, NodeSettings]) -> str:
    node = nodes.get(port)
    return f"node {node.name} ({switch}:{port})" if node else f"{switch}:{port}"


class ManualDriver:
    """Tells the operator what to do; never switches anything."""

    name = "manual"
    has_readback = False
    has_detection = False

    def __init__(self, switch: SwitchSettings, nodes: dict[int, NodeSettings] | None = None):
        self.switch = switch.name
        self._nodes = nodes or {}

    async def set_port(self, port: int, state: PowerState) -> None:
        raise ManualActionRequired(
            f"{_who(self.switch, port, self._nodes)} has manual power: switch it {state.value} "
            "by hand (unplug/plug its power), then check with `piman nodes`"
        )

    async def get_port(self, port: int) -> PortReading:
        return PortReading(admin=PowerState.UNKNOWN)

    async def close(self) -> None:
        return None


class SshRebootDriver:
    """Soft power over SSH: reboot or power off a running node. Cannot switch one on.

    Logs in through the manager's SSH client (``ctx.ssh``: the fleet key, the known host keys,
    its deadlines) as the node's SSH user (``ssh_user:`` on the switch, when set, wins) and runs
    ``reboot``/``poweroff``, through ``sudo -n`` unless it logged in as root. A reboot that cuts
    the connection before the exit status arrives counts as done.
    """

    name = "ssh-reboot"
    has_readback = False
    has_detection = False

    def __init__(
        self,
        switch: SwitchSettings,
        nodes: dict[int, NodeSettings] | None = None,
        *,
        ssh: SshHandle | None = None,
        timeout: float = SSH_TIMEOUT,
    ) -> None:
        self.switch = switch.name
        self._settings = switch
        self._nodes = nodes or {}
        self._ssh = ssh
        self._timeout = timeout

    @staticmethod
    def script(command: str) -> str:
        """The remote command line: ``command`` as root, through ``sudo -n`` otherwise."""
        return f'if [ "$(id -u)" = 0 ]; then {command}; else sudo -n {command}; fi'

    async def _target(self, port: int) -> tuple[SshHandle, SshTarget]:
        node = self._nodes.get(port)
        if node is None or node.ip is None:
            raise PowerFatalError(
                f"{self.switch}:{port}: ssh-reboot needs a node with an `ip:` on this port"
            )
        who = _who(self.switch, port, self._nodes)
        if self._ssh is None:
            raise PowerFatalError(f"{who}: ssh-reboot has no SSH client here")
        try:
            [target] = await self._ssh.targets([node.name])
        except (NotFoundError, ValueError) as err:
            raise PowerFatalError(f"{who}: {err}") from err
        if "ssh_user" in self._settings.model_fields_set:
            target = dataclasses.replace(target, user=self._settings.ssh_user)
        return self._ssh, target

    async def _run(self, port: int, command: str) -> None:
        ssh, target = await self._target(port)
        who = _who(self.switch, port, self._nodes)
        [result] = await ssh.run([target], self.script(command), command_timeout=self._timeout)
        if result.ok:
            return
        if result.exit_status is None:
            # A reboot often cuts the connection before the exit status is sent.
            if result.error is not None and result.error.startswith("connection lost"):
                return
            raise PowerConnError(f"{who}: ssh failed: {result.error}")
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        why = lines[-1] if lines else "no message"
        raise PowerFatalError(f"{who}: `{command}` failed ({result.exit_status}): {why}")

    async def reboot(self, port: int) -> None:
        await self._run(port, "reboot")

    async def set_port(self, port: int, state: PowerState) -> None:
        if state is PowerState.OFF:
            await self._run(port, "poweroff")
            return
        raise ManualActionRequired(
            f"{_who(self.switch, port, self._nodes)}: ssh-reboot cannot switch a node on; "
            "power it on by hand"
        )

    async def get_port(self, port: int) -> PortReading:
        return PortReading(admin=PowerState.UNKNOWN)

    async def close(self) -> None:
        return None
