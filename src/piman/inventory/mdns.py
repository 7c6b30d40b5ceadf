"""mDNS: the names devices announce on the local link (``zeroconf``, IPv4).

Raspberry Pi OS runs avahi, which announces ``_ssh._tcp`` (when SSH is on) and, on many images,
``_workstation._tcp`` whose instance name is ``<host> [<mac>]``: the one announcement that
carries the MAC. :func:`browse` listens for ``seconds``, resolves each instance (its host name
and IPv4 addresses) and returns what it heard; it keeps at most ``max_devices`` instances (the
rest are counted, not kept) and resolves a few at a time, each within a deadline. Pure helpers
read the MAC and the host name out of what was announced; :func:`observations` turns the
result into ``mdns`` observations (a MAC only when the name carried one: the caller can ask the
neighbour table for the others' MACs).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from piman.config.types import parse_mac
from piman.inventory.discover import Observation, Seen

__all__ = [
    "MAX_DEVICES",
    "SERVICE_TYPES",
    "MdnsDevice",
    "MdnsResult",
    "browse",
    "host_of",
    "mac_in_name",
    "observations",
]

logger = logging.getLogger(__name__)

SERVICE_TYPES = ("_ssh._tcp.local.", "_workstation._tcp.local.")
MAX_DEVICES = 512  # service instances kept from one browse
RESOLVE_TIMEOUT = 2.0  # seconds for one instance's SRV and A records
RESOLVE_CONCURRENCY = 16
_MAC_IN_NAME = re.compile(r"\[([0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5})\]")


@dataclass(frozen=True, slots=True)
class MdnsDevice:
    """One announced service instance, resolved."""

    service: str  # e.g. _workstation._tcp.local.
    name: str  # the full instance name
    host: str | None  # the announced host name, without .local.
    addresses: tuple[str, ...]  # IPv4
    mac: str | None  # from a ``[mac]`` in the instance name
    when: datetime


@dataclass(frozen=True, slots=True)
class MdnsResult:
    devices: list[MdnsDevice]
    dropped: int  # instances heard past ``max_devices``
    unresolved: int  # instances whose records did not come in time


def mac_in_name(name: str) -> str | None:
    """The MAC a ``_workstation`` instance name carries (``pi [dc:a6:32:01:02:03]._work…``)."""
    found = _MAC_IN_NAME.search(name)
    if found is None:
        return None
    try:
        return parse_mac(found.group(1))
    except ValueError:
        return None


def host_of(server: str | None, name: str, service: str) -> str | None:
    """The device's host name: the SRV target without ``.local.``, else the instance label
    without its ``[mac]`` (``raspberrypi [dc:…]._workstation._tcp.local.`` → ``raspberrypi``)."""
    if server:
        host = server.rstrip(".")
        host = host.removesuffix(".local")
        if host:
            return host
    label = name.removesuffix(service).rstrip(".")
    label = _MAC_IN_NAME.sub("", label).strip()
    return label or None


def observations(result: MdnsResult | Iterable[MdnsDevice]) -> list[Observation]:
    """One ``mdns`` observation per announced address (one without an address if none)."""
    devices = result.devices if isinstance(result, MdnsResult) else result
    out = []
    for d in devices:
        seen = Seen("mdns", d.service.removesuffix(".local."), d.when)
        for ip in d.addresses or (None,):
            out.append(Observation(seen, d.mac, ip=ip, hostname=d.host))
    return out


async def browse(
    seconds: float,
    *,
    types: Iterable[str] = SERVICE_TYPES,
    max_devices: int = MAX_DEVICES,
    progress: Callable[[float, int], None] | None = None,
) -> MdnsResult:
    """Listen for ``types`` for ``seconds`` (see the module's docstring). ``progress(elapsed,
    heard)`` is called about once a second. OSError when mDNS cannot be listened to here."""
    from zeroconf import IPVersion, ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    kinds = list(types)
    heard: dict[tuple[str, str], None] = {}
    dropped = 0
    devices: list[MdnsDevice] = []
    unresolved = 0
    gate = asyncio.Semaphore(RESOLVE_CONCURRENCY)
    tasks: set[asyncio.Task[None]] = set()

    azc = AsyncZeroconf(ip_version=IPVersion.V4Only)

    async def resolve(service: str, name: str) -> None:
        nonlocal unresolved
        async with gate:
            info = AsyncServiceInfo(service, name)
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT + 0.5):
                    found = await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT * 1000)
            except TimeoutError:
                found = False
        addresses = tuple(
            a
            for a in info.parsed_addresses()
            if isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address)
        )
        if not found and not addresses:
            unresolved += 1
        devices.append(
            MdnsDevice(
                service=service,
                name=name,
                host=host_of(info.server, name, service),
                addresses=addresses,
                mac=mac_in_name(name),
                when=datetime.now(UTC),
            )
        )

    def changed(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        nonlocal dropped
        if state_change is ServiceStateChange.Removed or (service_type, name) in heard:
            return
        if len(heard) >= max_devices:
            dropped += 1
            return
        heard[(service_type, name)] = None
        task = asyncio.get_running_loop().create_task(resolve(service_type, name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, kinds, handlers=[changed])
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (elapsed := loop.time() - start) < seconds:
            if progress is not None:
                progress(elapsed, len(heard))
            await asyncio.sleep(min(1.0, seconds - elapsed))
        if progress is not None:
            progress(seconds, len(heard))
        if tasks:  # instances heard at the last moment get their deadline
            await asyncio.wait(set(tasks), timeout=RESOLVE_TIMEOUT + 1.0)
    finally:
        for task in tasks:
            task.cancel()
        await browser.async_cancel()
        await azc.async_close()
    return MdnsResult(sorted(devices, key=lambda d: d.name), dropped, unresolved)
