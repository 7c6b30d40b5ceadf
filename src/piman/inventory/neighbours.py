"""The kernel's neighbour table (IPv4 → MAC), and an optional bounded sweep that fills it.

The orchestration seed found its Pis with ``arp -a`` after a ping sweep. Here the sweep needs
no raw socket and no ``ping``: one small UDP datagram to the discard port (9) of every address
of the subnet makes the kernel resolve each address with ARP; the hosts that answer ARP are
then in the table, whether or not anything listens on port 9. The sweep is bounded in size
(:data:`MAX_PREFIX`: a /20 at most, unless forced) and in rate (:data:`DEFAULT_RATE` datagrams
a second: the kernel keeps at most ``gc_thresh3`` (1,024 by default) neighbour entries, and each
unanswered address holds one for about three seconds).

:func:`read_neighbours` reads ``ip -j -4 neigh show``, or ``/proc/net/arp`` when ``ip`` is
missing; entries in the REACHABLE, STALE, DELAY or PROBE state with a MAC count (INCOMPLETE
and FAILED ones are addresses nobody answered for). The parsers are pure.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from piman.config.types import parse_mac
from piman.inventory.discover import Observation, Seen

__all__ = [
    "DEFAULT_RATE",
    "MAX_PREFIX",
    "MAX_RATE",
    "SETTLE",
    "Neighbour",
    "SweepResult",
    "check_scope",
    "observations",
    "parse_ip_json",
    "parse_proc_arp",
    "read_neighbours",
    "sweep",
]

logger = logging.getLogger(__name__)

MAX_PREFIX = 20  # the largest subnet swept without --force: a /20 (4,094 addresses)
DEFAULT_RATE = 200.0  # datagrams a second
MAX_RATE = 2000.0
SETTLE = 1.5  # seconds to wait after the last datagram for the last ARP answers
DISCARD_PORT = 9
_VALID = {"REACHABLE", "STALE", "DELAY", "PROBE"}
_ATF_COM = 0x02  # /proc/net/arp: the entry is complete


@dataclass(frozen=True, slots=True)
class Neighbour:
    ip: str
    mac: str
    dev: str
    state: str


@dataclass(frozen=True, slots=True)
class SweepResult:
    sent: int
    failed: int  # datagrams the kernel refused (no route, table full …)
    seconds: float


def _mac(text: object) -> str | None:
    try:
        mac = parse_mac(text)
    except ValueError:
        return None
    return None if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff") else mac


def parse_ip_json(text: str) -> list[Neighbour]:
    """``ip -j -4 neigh show`` → the entries that hold a MAC (see the module's docstring)."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError:
        return []
    out = []
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict):
            continue
        states = entry.get("state") or []
        state = next((s for s in states if s in _VALID), None) if isinstance(states, list) else None
        mac = _mac(entry.get("lladdr"))
        ip = entry.get("dst")
        if state is None or mac is None or not isinstance(ip, str):
            continue
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        out.append(Neighbour(ip, mac, str(entry.get("dev", "")), state))
    return out


def parse_proc_arp(text: str) -> list[Neighbour]:
    """``/proc/net/arp`` → the complete entries (its flags say complete, not the state)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6:
            continue
        ip, _hw_type, flags, hw, _mask, dev = fields[:6]
        try:
            complete = int(flags, 16) & _ATF_COM
            ipaddress.IPv4Address(ip)
        except ValueError:
            continue
        mac = _mac(hw)
        if complete and mac is not None:
            out.append(Neighbour(ip, mac, dev, "complete"))
    return out


def _read() -> list[Neighbour]:
    ip_tool = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if Path(p).exists()), None
    )
    if ip_tool is not None:
        try:
            done = subprocess.run(
                [ip_tool, "-j", "-4", "neigh", "show"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            logger.debug("ip neigh failed: %s", err)
        else:
            if done.returncode == 0:
                return parse_ip_json(done.stdout)
    try:
        return parse_proc_arp(Path("/proc/net/arp").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return []


async def read_neighbours() -> list[Neighbour]:
    """The neighbour table of this network namespace (entries with a MAC)."""
    return await asyncio.to_thread(_read)


def observations(
    neighbours: Iterable[Neighbour],
    scope: ipaddress.IPv4Network | None,
    when: datetime | None = None,
) -> list[Observation]:
    """Entries inside ``scope`` (all when None) as ``arp`` observations."""
    when = when or datetime.now(UTC)
    out = []
    for n in neighbours:
        if scope is not None and ipaddress.IPv4Address(n.ip) not in scope:
            continue
        out.append(Observation(Seen("arp", n.dev or "?", when), n.mac, ip=n.ip))
    return out


def check_scope(network: ipaddress.IPv4Network, *, force: bool = False) -> ipaddress.IPv4Network:
    """The subnet a sweep may cover: ValueError when it is larger than a /20 (unless
    ``force``)."""
    if network.prefixlen < MAX_PREFIX and not force:
        raise ValueError(
            f"{network} has {network.num_addresses - 2} addresses; a sweep covers a "
            f"/{MAX_PREFIX} ({2 ** (32 - MAX_PREFIX) - 2}) at most without --force"
        )
    return network


def _hosts(network: ipaddress.IPv4Network) -> Iterable[ipaddress.IPv4Address]:
    if network.prefixlen >= 31:
        return iter(network)
    return network.hosts()


async def sweep(
    network: ipaddress.IPv4Network,
    *,
    rate: float = DEFAULT_RATE,
    settle: float = SETTLE,
    skip: Iterable[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
    """One UDP datagram to port 9 of every host address of ``network`` (at most ``rate`` a
    second), then ``settle`` seconds for the last ARP answers. ``progress(sent, total)`` is
    called now and then. The caller checks the scope first (:func:`check_scope`)."""
    rate = min(max(rate, 1.0), MAX_RATE)
    skipped = set(skip)
    targets = [str(a) for a in _hosts(network) if str(a) not in skipped]
    total = len(targets)
    started = time.monotonic()
    sent = failed = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    step = max(1, int(rate // 10))  # a pause every tenth of a second's worth
    if progress is not None:
        progress(0, total)
    try:
        for i, ip in enumerate(targets):
            try:
                sock.sendto(b"piman", (ip, DISCARD_PORT))
                sent += 1
            except OSError as err:  # EHOSTUNREACH, ENETUNREACH, ENOBUFS (table full) …
                failed += 1
                if err.errno not in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOBUFS):
                    logger.debug("sweep: %s: %s", ip, err)
            if (i + 1) % step == 0:
                await asyncio.sleep(max(0.0, started + (i + 1) / rate - time.monotonic()))
                if progress is not None:
                    progress(i + 1, total)
        if progress is not None:
            progress(total, total)
        await asyncio.sleep(settle)
    finally:
        sock.close()
    return SweepResult(sent, failed, time.monotonic() - started)
