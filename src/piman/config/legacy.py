"""The original piman's configuration: its YAML format and its hosts.csv.

Seed YAML::

    private_number: 4
    server_address: 172.30.4.1
    subnet_mask: 255.255.255.0
    interface: ens4
    switch_count: 2
    switches:
      - swtich_0_address: 172.30.4.254     # sic; switch_0_address is accepted too
        pi_addresses: [172.30.4.13, 172.30.4.14]

Pi N of a switch is the N-th entry of ``pi_addresses`` and hangs on port N. Switches are named
``switch0``, ``switch1`` …, and Pi N of switch S is ``switchS-piNN``. :func:`convert_legacy` returns
the equivalent new-form mapping plus a map from new field paths back to the seed's own paths, so
errors name what the user actually wrote.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from piman.config.types import parse_mac
from piman.errors import ConfigProblem

__all__ = ["LEGACY_KEYS", "convert_legacy", "is_legacy", "parse_hosts_csv"]

LEGACY_KEYS = frozenset(
    {"private_number", "server_address", "subnet_mask", "interface", "switch_count", "switches"}
)
_SWITCH_KEY_RE = re.compile(r"^(?:swtich|switch)_(\d+)_address$")


def is_legacy(data: Mapping[str, Any]) -> bool:
    """True when a YAML mapping is in the seed format rather than piman's."""
    return "manager" not in data and ("server_address" in data or "switch_count" in data)


def convert_legacy(
    data: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], dict[str, str], list[ConfigProblem]]:
    """Seed mapping → (new-form mapping, new path → seed path, problems found on the way)."""
    problems: list[ConfigProblem] = []
    paths: dict[str, str] = {"manager.address": "server_address", "manager.interface": "interface"}

    def problem(path: str, message: str) -> None:
        problems.append(ConfigProblem(source, path, message))

    for key in data:
        if key not in LEGACY_KEYS:
            problem(str(key), f"unknown key; the seed format has {', '.join(sorted(LEGACY_KEYS))}")

    manager: dict[str, Any] = {"address": data.get("server_address")}
    if "interface" in data:
        manager["interface"] = data["interface"]
    mask = data.get("subnet_mask", "255.255.255.0")
    try:
        server = IPv4Address(str(data.get("server_address")))
        manager["network"] = str(IPv4Network(f"{server}/{mask}", strict=False))
        paths["manager.network"] = "subnet_mask"
    except ValueError:
        if "server_address" not in data:
            problem("server_address", "missing; expected the manager's IPv4 address")
        elif not _is_ipv4(data.get("server_address")):
            problem(
                "server_address",
                f"{data.get('server_address')!r} is not an IPv4 address",
            )
        else:
            problem("subnet_mask", f"{mask!r} is not a subnet mask (expected e.g. 255.255.255.0)")
        manager.pop("network", None)

    switches_in = data.get("switches") or []
    if not isinstance(switches_in, list):
        problem("switches", f"expected a list of switches, got {type(switches_in).__name__}")
        switches_in = []
    count = data.get("switch_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
        problem("switch_count", f"{count!r} is not a whole number")
    elif count is not None and count != len(switches_in):
        problem(
            "switch_count",
            f"says {count} but the switches list has {len(switches_in)} entries",
        )

    switches: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for i, entry in enumerate(switches_in):
        where = f"switches[{i}]"
        if not isinstance(entry, Mapping):
            problem(where, f"expected a mapping with switch_{i}_address and pi_addresses")
            continue
        address_keys = [k for k in entry if _SWITCH_KEY_RE.match(str(k))]
        other = [k for k in entry if k not in address_keys and k != "pi_addresses"]
        for key in other:
            problem(f"{where}.{key}", f"unknown key; expected switch_{i}_address and pi_addresses")
        if len(address_keys) != 1:
            problem(where, f"expected exactly one switch_{i}_address (or swtich_{i}_address)")
            continue
        key = str(address_keys[0])
        number = int(_SWITCH_KEY_RE.match(key).group(1))  # type: ignore[union-attr]
        if number != i:
            problem(f"{where}.{key}", f"is entry {i} of the list; expected switch_{i}_address")
        name = f"switch{i}"
        switches.append({"name": name, "address": entry[key]})
        paths[f"switches[{len(switches) - 1}].address"] = f"{where}.{key}"
        pis = entry.get("pi_addresses") or []
        if not isinstance(pis, list):
            problem(f"{where}.pi_addresses", "expected a list of IPv4 addresses")
            continue
        for port, ip in enumerate(pis, start=1):
            n = len(nodes)
            nodes.append({"name": f"{name}-pi{port:02d}", "switch": name, "port": port, "ip": ip})
            paths[f"nodes[{n}].ip"] = f"{where}.pi_addresses[{port - 1}]"
            paths[f"nodes[{n}]"] = f"{where}.pi_addresses[{port - 1}]"

    new: dict[str, Any] = {"manager": manager, "switches": switches, "nodes": nodes}
    # The seed's `piman.py server` ran DHCP, TFTP and the hello server: so does piman with it.
    dhcp: dict[str, Any] = {"mode": "authoritative"}
    pool = _free_pool(manager.get("network"), data, nodes, switches)
    if pool is not None:
        dhcp["pool"] = pool
    new |= {"dhcp": dhcp, "tftp": {"enabled": True}, "deploy": {}}
    paths["dhcp"] = "interface"
    return new, paths, problems


def _free_pool(
    network: str | None, data: Mapping[str, Any], nodes: list[dict[str, Any]],
    switches: list[dict[str, Any]],
) -> str | None:  # fmt: skip
    """Addresses for Pis that hosts.csv does not name: the longest run of free addresses in the
    upper half of the seed's subnet, at most 100 of them, at its top (None when none is free)."""
    if network is None:
        return None
    net = IPv4Network(network)
    used = {str(data.get("server_address"))} | {str(n.get("ip")) for n in nodes}
    used |= {str(s.get("address")) for s in switches}
    hosts = list(net.hosts())
    best: tuple[int, int] = (0, -1)  # (start, end) indexes into hosts, inclusive
    start = None
    for i in range(len(hosts) // 2, len(hosts) + 1):
        free = i < len(hosts) and str(hosts[i]) not in used
        if free and start is None:
            start = i
        if not free and start is not None:
            if i - start > best[1] - best[0] + 1:
                best = (start, i - 1)
            start = None
    if best[1] < best[0]:
        return None
    first = max(best[0], best[1] - 99)
    return f"{hosts[first]}-{hosts[best[1]]}"


def _is_ipv4(value: object) -> bool:
    try:
        IPv4Address(str(value))
    except ValueError:
        return False
    return True


def parse_hosts_csv(text: str, source: str) -> tuple[list[dict[str, Any]], list[ConfigProblem]]:
    """hosts.csv (``mac,ip[,hostname]``, optional header, ``#`` comments) → rows and problems."""
    rows: list[dict[str, Any]] = []
    problems: list[ConfigProblem] = []
    seen_mac: dict[str, int] = {}
    seen_ip: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    for lineno, fields in enumerate(reader, start=1):
        fields = [f.strip() for f in fields]
        if not fields or not any(fields) or fields[0].startswith("#"):
            continue
        where = f"line {lineno}"
        if lineno == 1 and fields[0].lower() in {"mac", "mac_address", "hwaddr"}:
            continue  # header
        if len(fields) not in (2, 3):
            problems.append(
                ConfigProblem(
                    source, where, f"expected mac,ip[,hostname], got {len(fields)} fields"
                )
            )
            continue
        try:
            mac = parse_mac(fields[0])
        except ValueError as err:
            problems.append(ConfigProblem(source, where, str(err)))
            continue
        ip = fields[1]
        if not _is_ipv4(ip):
            problems.append(ConfigProblem(source, where, f"{ip!r} is not an IPv4 address"))
            continue
        if mac in seen_mac:
            problems.append(
                ConfigProblem(source, where, f"{mac} is already reserved on line {seen_mac[mac]}")
            )
            continue
        if ip in seen_ip:
            problems.append(
                ConfigProblem(source, where, f"{ip} is already reserved on line {seen_ip[ip]}")
            )
            continue
        seen_mac[mac] = lineno
        seen_ip[ip] = lineno
        row: dict[str, Any] = {"mac": mac, "ip": ip}
        if len(fields) == 3 and fields[2]:
            row["hostname"] = fields[2]
        rows.append(row)
    return rows, problems
