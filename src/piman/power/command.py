"""The ``command`` driver: run a program to switch a port (relay boards, smart plugs).

``command:`` in the switch's settings is an argv template — a list, never a shell string — whose
items may hold ``{port}``, ``{state}`` (``on``/``off``), ``{switch}``, ``{address}`` and ``{node}``.
Exit 0 is success; exit 75 (EX_TEMPFAIL) means "try again"; anything else is fatal and its
stderr's last line goes into the message. The driver cannot read a port back.
"""

from __future__ import annotations

import asyncio
import logging

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading

__all__ = ["CommandDriver"]

logger = logging.getLogger(__name__)

EX_TEMPFAIL = 75
COMMAND_TIMEOUT = 30.0


class CommandDriver:
    """Switches ports by running an argv template (no shell)."""

    name = "command"
    has_readback = False
    has_detection = False

    def __init__(
        self,
        switch: SwitchSettings,
        nodes: dict[int, NodeSettings] | None = None,
        *,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        if not switch.command:
            raise PowerFatalError(
                f"switch {switch.name!r}: driver command needs `command:`, an argv list such as "
                '["relayctl", "--port", "{port}", "{state}"]'
            )
        self.switch = switch.name
        self._settings = switch
        self._nodes = nodes or {}
        self._timeout = timeout
        self._last: dict[int, PowerState] = {}

    def argv(self, port: int, state: PowerState) -> list[str]:
        node = self._nodes.get(port)
        fields = {
            "port": str(port),
            "state": state.value,
            "switch": self.switch,
            "address": str(self._settings.address or ""),
            "node": node.name if node is not None else "",
        }
        assert self._settings.command is not None
        try:
            return [part.format(**fields) for part in self._settings.command]
        except (KeyError, IndexError, ValueError) as err:
            raise PowerFatalError(
                f"switch {self.switch!r}: bad placeholder in `command:` ({err}); use {{port}}, "
                "{state}, {switch}, {address} or {node}"
            ) from err

    async def set_port(self, port: int, state: PowerState) -> None:
        argv = self.argv(port, state)
        logger.info("[switch=%s port=%d] running %s", self.switch, port, argv[0])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise PowerFatalError(
                f"switch {self.switch!r}: cannot run {argv[0]!r}: {err.strerror}"
            ) from err
        try:
            async with asyncio.timeout(self._timeout):
                _, stderr = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise PowerConnError(
                f"switch {self.switch!r}: {argv[0]} did not finish in {self._timeout:g} s"
            ) from None
        if proc.returncode == 0:
            self._last[port] = state
            return
        lines = stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else "no message"
        message = f"switch {self.switch!r}: {argv[0]} exited {proc.returncode}: {why}"
        if proc.returncode == EX_TEMPFAIL:
            raise PowerConnError(message)
        raise PowerFatalError(message)

    async def get_port(self, port: int) -> PortReading:
        return PortReading(admin=self._last.get(port, PowerState.UNKNOWN))

    async def close(self) -> None:
        return None
