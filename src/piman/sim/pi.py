"""A virtual Raspberry Pi: identity (model, MAC, serial, board revision) and power.

Later capabilities give it behaviour: when powered it netboots through piman's DHCP and TFTP
servers and runs a real agent; when its PoE port goes off it stops answering.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from piman.fleet.models import PiModel

__all__ = ["MODELS", "VirtualPi", "make_pi"]

# (model, OUI, board revision code) of the Pis the demo mixes.
MODELS: tuple[tuple[PiModel, str, int], ...] = (
    (PiModel.PI3BPLUS, "b8:27:eb", 0xA020D3),
    (PiModel.PI4, "dc:a6:32", 0xC03114),
    (PiModel.PI5, "2c:cf:67", 0xD04170),
)


@dataclass
class VirtualPi:
    """One simulated Pi. ``powered`` is set while its PoE port delivers power."""

    name: str
    model: PiModel
    mac: str
    serial: str
    revision: int
    switch: str
    port: int
    ip: str
    agent_port: int = 0
    powered: asyncio.Event = field(default_factory=asyncio.Event)
    boots: int = 0  # power-ons so far: a new one restarts whatever the Pi was doing
    installing: bool = False  # running the netboot installer (its agent is down meanwhile)
    _watchers: list[asyncio.Event] = field(default_factory=list)

    def set_power(self, on: bool) -> None:
        if on and not self.powered.is_set():
            self.boots += 1
        if on:
            self.powered.set()
        else:
            self.powered.clear()
        for watcher in self._watchers:
            watcher.set()

    async def power_changed(self, within: float | None = None) -> bool:
        """Wait until the power goes off or on (True), or ``within`` seconds pass (False)."""
        event = asyncio.Event()
        self._watchers.append(event)
        try:
            async with asyncio.timeout(within):
                await event.wait()
        except TimeoutError:
            return False
        else:
            return True
        finally:
            self._watchers.remove(event)

    @property
    def mac_bytes(self) -> bytes:
        return bytes.fromhex(self.mac.replace(":", ""))


def make_pi(index: int, switch: str, port: int, ip: str) -> VirtualPi:
    """The index-th Pi of the demo: models rotate 3B+, 4, 5; MACs and serials are unique."""
    model, oui, revision = MODELS[index % len(MODELS)]
    low = 0x100 + index
    mac = f"{oui}:{(low >> 16) & 0xFF:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"
    if model.family == 3:
        serial = "00" + mac.replace(":", "")[-6:]  # Pi 3: serial low 24 bits = MAC low 24 bits
    else:
        serial = f"{0x10000000 + index * 7919:08x}"
    name = f"{switch}-pi{port:02d}"
    return VirtualPi(name, model, mac, serial, revision, switch, port, ip)
