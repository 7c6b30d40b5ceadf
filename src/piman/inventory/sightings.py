"""Sightings: what the DHCP and TFTP servers see on the wire, written onto the nodes.

Theory of operation. A netboot server that identifies a device (a MAC, and what it learnt: the
address it handed out, a serial from the TFTP path or option 97, a model, a vendor class) calls
:meth:`Sightings.note`. The note is dropped when the same MAC said the same thing less than
:data:`SIGHTING_INTERVAL` seconds ago (one throttle for both servers); otherwise it is queued,
and the :meth:`Sightings.serve` loop records it in the store (``nodes.record_sighting``:
``last_seen``, learnt fields, or a ``new`` node for an unknown Pi) away from the packet path.
The queue and the throttle's memory are bounded: under a flood the oldest MACs are forgotten
first and notes beyond the queue are dropped (counted), never blocking a server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from piman.errors import PimanError
from piman.fleet.ports import NodeRepository

__all__ = ["MAX_TRACKED", "QUEUE_SIZE", "SIGHTING_INTERVAL", "Sighting", "Sightings"]

logger = logging.getLogger(__name__)

SIGHTING_INTERVAL = 30.0  # seconds between two records of the same MAC saying the same thing
MAX_TRACKED = 65_536  # MACs the throttle remembers
QUEUE_SIZE = 4_096  # notes waiting to be written


@dataclass(frozen=True, slots=True)
class Sighting:
    """What one packet taught about a MAC (None: not learnt from this packet)."""

    mac: str
    ip: str | None = None
    serial: str | None = None
    model: str | None = None
    vendor_class: str | None = None

    def merged(self, older: Sighting | None) -> Sighting:
        """This sighting with what ``older`` knew and this one does not say."""
        if older is None:
            return self
        return Sighting(
            self.mac,
            self.ip if self.ip is not None else older.ip,
            self.serial if self.serial is not None else older.serial,
            self.model if self.model is not None else older.model,
            self.vendor_class if self.vendor_class is not None else older.vendor_class,
        )


class Sightings:
    """The one throttle and writer of sightings (the :class:`~piman.context.InventoryHandle`)."""

    name = "sightings"

    def __init__(
        self,
        nodes: NodeRepository,
        *,
        interval: float = SIGHTING_INTERVAL,
        max_tracked: int = MAX_TRACKED,
        queue_size: int = QUEUE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nodes = nodes
        self.interval = interval
        self.max_tracked = max_tracked
        self.clock = clock
        self.dropped = 0
        self._known: set[str] = set()
        self._last: OrderedDict[str, tuple[float, Sighting]] = OrderedDict()
        self._queue: asyncio.Queue[Sighting] = asyncio.Queue(queue_size)
        self._loaded = False

    async def load(self) -> None:
        """Learn which MACs the store knows (once; :meth:`serve` does it at start)."""
        self._known = {n.mac for n in await self.nodes.list() if n.mac}
        self._loaded = True

    def is_known(self, mac: str) -> bool:
        return mac in self._known

    def note(
        self,
        mac: str,
        *,
        ip: str | None = None,
        serial: str | None = None,
        model: str | None = None,
        vendor_class: str | None = None,
    ) -> bool:
        """Queue a sighting unless it repeats the last one of this MAC within the interval."""
        seen = Sighting(mac, ip, serial, model, vendor_class)
        now = self.clock()
        last = self._last.get(mac)
        if last is not None:
            self._last.move_to_end(mac)
            if now - last[0] < self.interval and seen.merged(last[1]) == last[1]:
                return False
        elif len(self._last) >= self.max_tracked:
            self._last.popitem(last=False)
        self._last[mac] = (now, seen.merged(last[1] if last else None))
        try:
            self._queue.put_nowait(seen)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                logger.warning("sightings: queue full, %d sighting(s) dropped", self.dropped)
            return False
        return True

    async def _record(self, seen: Sighting) -> None:
        await self.nodes.record_sighting(
            seen.mac,
            ip=seen.ip,
            serial=seen.serial,
            model=seen.model,
            vendor_class=seen.vendor_class,
        )
        self._known.add(seen.mac)

    async def serve(self) -> None:
        if not self._loaded:
            await self.load()
        while True:
            seen = await self._queue.get()
            try:
                await self._record(seen)
            except PimanError as err:  # the store may be briefly unavailable; netboot goes on
                logger.warning("[mac=%s] sighting not recorded: %s", seen.mac, err)

    async def drain(self) -> None:
        """Record everything queued now (tests, and a clean stop)."""
        while not self._queue.empty():
            await self._record(self._queue.get_nowait())
