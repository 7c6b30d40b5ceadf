"""Sightings: what the DHCP and TFTP servers see on the wire, written onto the nodes.

Theory of operation. A netboot server that identifies a device (a MAC, and what it learnt: the
address it handed out, a serial from the TFTP path or option 97, a model, a vendor class) calls
:meth:`Sightings.note`. What happens next depends on whether the store has a node with that MAC:

- **A node's MAC**: the note is dropped when the same MAC said the same thing less than
  :data:`SIGHTING_INTERVAL` seconds ago (one throttle for both servers); otherwise it is queued,
  and the :meth:`Sightings.serve` loop records it in the store (``nodes.record_sighting``:
  ``last_seen`` and learnt fields) away from the packet path.
- **Any other MAC** goes to the list of *discovered devices*, in memory only: no node, no store
  write, no scrape target. Anyone on the provisioning network can claim to be a Pi (option 97
  "RPi4"), so a device becomes a node only when an operator accepts it (:meth:`accept`, which
  ``piman discover`` builds on). The list holds at most :data:`MAX_DISCOVERED` devices, the least
  recently seen pushed out first, and forgets a device not seen for :data:`DISCOVERED_TTL`
  seconds; how many it holds and how many were pushed out are metrics.

Everything is bounded: the throttle remembers :data:`MAX_TRACKED` MACs (oldest forgotten first),
the queue holds :data:`QUEUE_SIZE` notes (more are dropped and counted), the discovered list as
above. Under a flood nothing blocks a server and memory stays flat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from piman.config.types import check_name, parse_mac
from piman.errors import NotFoundError, PimanError
from piman.fleet.ports import NodeRepository
from piman.fleet.records import DiscoveredDevice, NodeRecord

__all__ = [
    "DISCOVERED_TTL",
    "MAX_DISCOVERED",
    "MAX_TRACKED",
    "QUEUE_SIZE",
    "SIGHTING_INTERVAL",
    "Sighting",
    "Sightings",
]

logger = logging.getLogger(__name__)

SIGHTING_INTERVAL = 30.0  # seconds between two records of the same MAC saying the same thing
MAX_TRACKED = 65_536  # MACs the throttle remembers
QUEUE_SIZE = 4_096  # notes waiting to be written
MAX_DISCOVERED = 1_024  # devices the discovered list holds
DISCOVERED_TTL = 24 * 3600.0  # seconds a discovered device stays listed after it was last seen
_LOG_WINDOW, _LOG_LINES = 60.0, 10  # at most 10 "discovered" INFO lines a minute (DEBUG beyond)


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


@dataclass(slots=True)
class _Found:
    """A discovered device as the list keeps it (``seen``: the clock's time, for expiry)."""

    device: DiscoveredDevice
    seen: float


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
        max_discovered: int = MAX_DISCOVERED,
        discovered_ttl: float = DISCOVERED_TTL,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.nodes = nodes
        self.interval = interval
        self.max_tracked = max_tracked
        self.max_discovered = max_discovered
        self.discovered_ttl = discovered_ttl
        self.clock = clock
        self.dropped = 0
        self._known: set[str] = set()
        self._last: OrderedDict[str, tuple[float, Sighting]] = OrderedDict()
        self._found: OrderedDict[str, _Found] = OrderedDict()  # least recently seen first
        self._queue: asyncio.Queue[Sighting] = asyncio.Queue(queue_size)
        self._loaded = False
        self._log_window = (float("-inf"), 0)  # (start, lines logged in it)
        reg = registry if registry is not None else CollectorRegistry()
        self._listed = Gauge(
            "piman_discovered_devices",
            "Devices seen on the wire that are not nodes (not yet accepted).",
            registry=reg,
        )
        self._listed.set_function(lambda: float(len(self._fresh())))
        self._pushed_out = Counter(
            "piman_discovered_dropped",
            "Discovered devices pushed out of the full list by newer ones.",
            registry=reg,
        )

    async def load(self) -> None:
        """Learn which MACs the store knows (once; :meth:`serve` does it at start)."""
        self._known = {n.mac for n in await self.nodes.list() if n.mac}
        self._loaded = True
        for mac in self._known:
            self._found.pop(mac, None)

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
        """A device was seen. True when this taught something: a node's sighting was queued, or
        a device was discovered or told something new about itself."""
        seen = Sighting(mac, ip, serial, model, vendor_class)
        if mac not in self._known:
            return self._discover(seen)
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

    # --- discovered devices --------------------------------------------------------------------

    def _discover(self, seen: Sighting) -> bool:
        now, wall = self.clock(), datetime.now(UTC)
        found = self._found.get(seen.mac)
        if found is not None and now - found.seen < self.discovered_ttl:
            old = found.device
            device = replace(
                old,
                last_seen=wall,
                sightings=old.sightings + 1,
                ip=seen.ip if seen.ip is not None else old.ip,
                serial=seen.serial if seen.serial is not None else old.serial,
                model=seen.model if seen.model is not None else old.model,
                vendor_class=seen.vendor_class
                if seen.vendor_class is not None
                else old.vendor_class,
            )
            self._found[seen.mac] = _Found(device, now)
            self._found.move_to_end(seen.mac)
            learnt = replace(device, last_seen=old.last_seen, sightings=old.sightings) != old
            return learnt
        self._found.pop(seen.mac, None)
        self._expire(now)
        if len(self._found) >= self.max_discovered:
            self._found.popitem(last=False)
            self._pushed_out.inc()
        device = DiscoveredDevice(
            seen.mac, wall, wall, 1, seen.ip, seen.serial, seen.model, seen.vendor_class
        )
        self._found[seen.mac] = _Found(device, now)
        start, lines = self._log_window
        if now - start >= _LOG_WINDOW:
            start, lines = now, 0
        self._log_window = (start, lines + 1)
        logger.log(
            logging.INFO if lines < _LOG_LINES else logging.DEBUG,
            "[mac=%s] discovered: not a node until it is declared or accepted%s%s",
            seen.mac,
            f", model {seen.model}" if seen.model else "",
            f", serial {seen.serial}" if seen.serial else "",
        )
        return True

    def _expire(self, now: float) -> None:
        while self._found:
            oldest = next(iter(self._found.values()))
            if now - oldest.seen < self.discovered_ttl:
                return
            self._found.popitem(last=False)

    def _fresh(self) -> list[DiscoveredDevice]:
        self._expire(self.clock())
        return [found.device for found in reversed(self._found.values())]

    def discovered(self) -> list[DiscoveredDevice]:
        """Devices seen on the wire that are not nodes, the most recently seen first."""
        return self._fresh()

    async def accept(self, mac: str, name: str | None = None) -> NodeRecord:
        """Make the discovered device with ``mac`` a ``new`` node (named ``name``, default
        ``pi-<mac>``), with what was seen of it. NotFoundError when no such device is listed;
        ConflictError when the name is taken; ValueError for a malformed MAC or name."""
        mac = parse_mac(mac)
        if name is not None:
            check_name(name)
        self._expire(self.clock())
        found = self._found.get(mac)
        if found is None:
            raise NotFoundError(f"no discovered device with MAC {mac}")
        seen = found.device
        node = await self.nodes.record_sighting(
            mac,
            ip=seen.ip,
            serial=seen.serial,
            model=seen.model,
            vendor_class=seen.vendor_class,
            name=name,
        )
        self._found.pop(mac, None)
        self._known.add(mac)
        logger.info("[mac=%s node=%s] accepted: a new node", mac, node.name)
        return node

    # --- the writer ----------------------------------------------------------------------------

    async def _record(self, seen: Sighting) -> None:
        await self.nodes.record_sighting(
            seen.mac,
            ip=seen.ip,
            serial=seen.serial,
            model=seen.model,
            vendor_class=seen.vendor_class,
        )

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
