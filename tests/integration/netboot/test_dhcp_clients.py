"""piman's DHCP server in a netns lab against real clients: busybox udhcpc and ISC dhclient.

The manager runs as a real subprocess (``python -m piman server``) so that ``kill -9`` is real.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.integration import netlab as lab_module
from tests.support import needs_tool

NetLab = lab_module.NetLab
netlab = lab_module.netlab

RESERVED = "198.18.0.50"
POOL = "198.18.0.100-198.18.0.101"


def _script(lab: NetLab, name: str, body: str) -> Path:
    path = lab.tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def udhcpc(lab: NetLab, ns: str) -> str | None:
    """busybox udhcpc in ``ns``: the address it was given (None when it got none)."""
    out = lab.tmp / f"udhcpc-{ns}.out"
    script = _script(
        lab, "udhcpc.sh", f'[ "$1" = bound ] && echo "$ip $subnet $router" >> {out}\nexit 0\n'
    )
    out.unlink(missing_ok=True)
    lab.run(
        ns,
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-f",
        "-q",
        "-n",
        "-t",
        "4",
        "-T",
        "2",
        "-A",
        "1",
        "-s",
        str(script),
        check=False,
        timeout=60,
    )
    if not out.exists():
        return None
    return out.read_text().split()[0]


def dhclient(lab: NetLab, ns: str) -> str | None:
    """ISC dhclient in ``ns`` (one attempt, 20 s): the address it was given."""
    out = lab.tmp / f"dhclient-{ns}.out"
    out.unlink(missing_ok=True)
    script = _script(
        lab,
        "dhclient.sh",
        f'case "$reason" in BOUND|REBOOT) echo "$new_ip_address $new_subnet_mask" >> {out};; '
        "esac\nexit 0\n",
    )
    conf = lab.tmp / "dhclient.conf"
    conf.write_text("timeout 20;\nretry 1;\nrequest subnet-mask, routers;\n")
    lab.run(
        ns,
        "dhclient",
        "-1",
        "-v",
        "-cf",
        str(conf),
        "-sf",
        str(script),
        "-lf",
        str(lab.tmp / f"{ns}.leases"),
        "-pf",
        str(lab.tmp / f"{ns}.pid"),
        "eth0",
        check=False,
        timeout=60,
    )
    pid = lab.tmp / f"{ns}.pid"
    if pid.exists():  # dhclient went to the background to renew: stop it
        try:
            os.kill(int(pid.read_text().strip()), 9)
        except (ProcessLookupError, ValueError):
            pass
    if not out.exists():
        return None
    return out.read_text().split()[0]


def _config(lab: NetLab) -> dict[str, object]:
    return {
        "dhcp": {
            "mode": "authoritative",
            "listen": "0.0.0.0:67",
            "pool": POOL,
            "router": "198.18.0.1",
            "lease_time": "1h",
        },
        "nodes": [{"name": "rack1-01", "mac": lab.client_mac(0), "ip": RESERVED}],
    }


def test_udhcpc_and_dhclient_get_reservation_and_pool_address(netlab: NetLab) -> None:
    needs_tool("busybox", "dhclient")
    netlab.start_manager(_config(netlab))
    assert udhcpc(netlab, netlab.clients[0]) == RESERVED
    pool_a = udhcpc(netlab, netlab.clients[1])
    assert pool_a in {"198.18.0.100", "198.18.0.101"}
    assert dhclient(netlab, netlab.clients[0]) == RESERVED
    pool_b = dhclient(netlab, netlab.clients[2])
    assert pool_b in {"198.18.0.100", "198.18.0.101"}
    assert pool_b != pool_a
    # The same client asking again keeps its address.
    assert udhcpc(netlab, netlab.clients[1]) == pool_a


def test_after_kill_9_and_restart_a_second_client_never_gets_a_leased_address(
    netlab: NetLab,
) -> None:
    needs_tool("busybox", "dhclient")
    manager = netlab.start_manager(_config(netlab))
    first = udhcpc(netlab, netlab.clients[1])
    assert first is not None
    manager.kill()  # SIGKILL: no chance to flush anything
    manager.wait(timeout=10)
    netlab.start_manager(config=netlab.tmp / "piman.yaml")
    second = dhclient(netlab, netlab.clients[2])
    assert second is not None
    assert second != first
    assert "leases loaded" in netlab.manager_log()
    assert udhcpc(netlab, netlab.clients[0]) == RESERVED  # reserved clients still get theirs
    # The pool (2 addresses) is now full: a third client gets nothing, not a taken address.
    netlab.run(netlab.clients[0], "ip", "link", "set", "eth0", "address", "02:00:00:00:01:7f")
    assert udhcpc(netlab, netlab.clients[0]) is None
    assert "pool 198.18.0.100-198.18.0.101 exhausted" in netlab.manager_log()
