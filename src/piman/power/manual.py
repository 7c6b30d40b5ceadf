"""Drivers for nodes without a switchable power source: ``ssh-reboot`` and ``manual``.

``ssh-reboot`` restarts a node in one step over SSH (``sudo reboot``) as ``ssh_user`` with
``ssh_key_file``; it can switch a node off (``sudo poweroff``) but never on. ``manual`` does
nothing by itself: every request raises :class:`~piman.power.base.ManualActionRequired`, whose
message tells the operator what to do by hand.
"""

from __future__ import annotations

import asyncio
import logging

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading
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
    """Soft power over SSH: reboot or power off a running node. Cannot switch one on."""

    name = "ssh-reboot"
    has_readback = False
    has_detection = False

    def __init__(
        self,
        switch: SwitchSettings,
        nodes: dict[int, NodeSettings] | None = None,
        *,
        ssh: str = "ssh",
        timeout: float = SSH_TIMEOUT,
    ) -> None:
        self.switch = switch.name
        self._settings = switch
        self._nodes = nodes or {}
        self._ssh = ssh
        self._timeout = timeout

    def argv(self, port: int, command: str) -> list[str]:
        node = self._nodes.get(port)
        if node is None or node.ip is None:
            raise PowerFatalError(
                f"{self.switch}:{port}: ssh-reboot needs a node with an `ip:` on this port"
            )
        argv = [self._ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
        if self._settings.ssh_key_file is not None:
            argv += ["-i", str(self._settings.ssh_key_file)]
        return [*argv, f"{self._settings.ssh_user}@{node.ip}", "sudo", "-n", command]

    async def _run(self, port: int, command: str) -> None:
        argv = self.argv(port, command)
        who = _who(self.switch, port, self._nodes)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise PowerFatalError(f"{who}: cannot run {self._ssh!r}: {err.strerror}") from err
        try:
            async with asyncio.timeout(self._timeout):
                _, stderr = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PowerConnError(f"{who}: ssh did not finish in {self._timeout:g} s") from None
        text = stderr.decode(errors="replace").strip()
        # A reboot often cuts the connection before ssh sees an exit status.
        if proc.returncode == 0 or "closed by remote host" in text:
            return
        why = text.splitlines()[-1] if text else "no message"
        if proc.returncode == 255:
            raise PowerConnError(f"{who}: ssh failed: {why}")
        raise PowerFatalError(f"{who}: `sudo {command}` failed ({proc.returncode}): {why}")

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
