"""TFTP in a namespace lab: the manager listens on 0.0.0.0:69 pinned to its interface
(SO_BINDTODEVICE) and answers each client from its own boot tree, found by IP, by serial prefix
or (proxy DHCP: the manager never gave out the address) through the neighbour table."""

from __future__ import annotations

import time

from tests.integration import netlab as lab_module
from tests.integration.netlab import SERVER_IP
from tests.support import needs_tool

NetLab = lab_module.NetLab
netlab = lab_module.netlab


def _get(lab: NetLab, ns: str, name: str) -> tuple[bytes | None, str]:
    out = lab.tmp / f"{ns}.out"
    out.unlink(missing_ok=True)
    result = lab.run(
        ns, "tftp", SERVER_IP, "-m", "binary", "-c", "get", name, str(out), check=False
    )  # fmt: skip
    data = out.read_bytes() if out.exists() and out.stat().st_size else None
    return data, result.stdout + result.stderr


def test_clients_get_their_own_trees_over_the_provisioning_interface(netlab: NetLab) -> None:
    needs_tool("tftp")
    data = netlab.tmp / "data"
    for tree, marker in [("boot", b"default"), ("nodes/pi-a/boot", b"pi-a"),
                         ("nodes/pi-proxy/boot", b"pi-proxy")]:  # fmt: skip
        (data / tree).mkdir(parents=True)
        (data / tree / "start4.elf").write_bytes(b"start4 " + marker)
    c0, c1, c2 = netlab.clients
    netlab.run(c0, "ip", "addr", "add", "198.18.0.11/24", "dev", "eth0")
    netlab.run(c1, "ip", "addr", "add", "198.18.0.99/24", "dev", "eth0")
    netlab.run(c2, "ip", "addr", "add", "198.18.0.77/24", "dev", "eth0")
    netlab.start_manager(
        {
            "tftp": {"enabled": True},
            "nodes": [
                {"name": "pi-a", "mac": netlab.client_mac(0), "ip": "198.18.0.11",
                 "model": "pi4"},
                {"name": "pi-proxy", "mac": netlab.client_mac(2), "model": "pi4"},
            ],
        }
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not netlab.run(netlab.server, "ss", "-Hlun", "sport", "= :69").stdout.strip():
        assert time.monotonic() < deadline, netlab.manager_log()
        time.sleep(0.2)
    # The listener is pinned to eth0: nothing answers on the namespace's loopback.
    assert "eth0" in netlab.run(netlab.server, "ss", "-Hlun", "sport", "= :69").stdout

    assert _get(netlab, c0, "start4.elf")[0] == b"start4 pi-a"  # known by IP
    assert _get(netlab, c1, "start4.elf")[0] == b"start4 default"  # unknown
    assert _get(netlab, c1, "0badcafe/start4.elf")[0] == b"start4 default"
    assert _get(netlab, c2, "start4.elf")[0] == b"start4 pi-proxy"  # by MAC from ARP
    data_, text = _get(netlab, c1, "../piman.db")
    assert data_ is None
    assert "Error code 2" in text
    assert "refused path '../piman.db'" in netlab.manager_log()
