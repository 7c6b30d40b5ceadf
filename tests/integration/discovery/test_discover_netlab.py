"""``piman discover`` in a netns lab, as a user runs it: DHCP sightings from a busybox udhcpc that
netboots like a Pi, the neighbour table after a sweep, and mDNS announcements from a zeroconf
responder in another namespace on the same bridge. Each ends with ``--accept``: a node, and the
line that declares it in the config.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

from tests.integration import netlab as lab_module

NetLab = lab_module.NetLab
netlab = lab_module.netlab

PI_MAC = "dc:a6:32:00:01:00"  # a Pi OUI: with "PXEClient" the DHCP server takes it for a Pi
PXE_VENDOR = "PXEClient:Arch:00000:UNDI:002001"


def piman(lab: NetLab, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real CLI in the manager's namespace."""
    done = lab.run(
        lab.server, "env", "COLUMNS=200", sys.executable, "-m", "piman", *args, check=False,
        timeout=120,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def candidates(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    rows = json.loads(done.stdout)
    if isinstance(rows, dict):
        rows = rows["candidates"]
    return {r["mac"] or r["ip"]: r for r in rows}


def set_mac(lab: NetLab, ns: str, mac: str) -> None:
    lab.run(ns, "ip", "link", "set", "eth0", "down")
    lab.run(ns, "ip", "link", "set", "eth0", "address", mac)
    lab.run(ns, "ip", "link", "set", "eth0", "up")


def manager_url(lab: NetLab) -> str:
    listen = yaml.safe_load((lab.tmp / "piman.yaml").read_text())["manager"]["http"]
    return f"http://{listen}"


def test_a_pi_netbooting_is_found_through_the_manager_and_accepted(netlab: NetLab) -> None:
    ns = netlab.clients[0]
    set_mac(netlab, ns, PI_MAC)
    netlab.start_manager({"dhcp": {"pool": "198.18.0.100-198.18.0.110"}})
    config, url = str(netlab.tmp / "piman.yaml"), manager_url(netlab)
    script = netlab.tmp / "udhcpc.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    netlab.run(ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4", "-T", "2",
               "-V", PXE_VENDOR, "-s", str(script), timeout=60)  # fmt: skip

    found = candidates(piman(netlab, "discover", "--url", url, "-c", config, "--json"))
    pi = found[PI_MAC]
    assert (pi["vendor"], pi["model"]) == ("Raspberry Pi", "pi4")
    assert "dhcp" in pi["source_names"]
    assert pi["ip"].startswith("198.18.0.1")  # the pool's address it was offered
    (dhcp,) = [s for s in pi["sources"] if s["source"] == "dhcp"]
    assert dhcp["where"] == f"manager {url}"
    assert pi["node"] is None

    accepted = piman(netlab, "discover", "--url", url, "-c", config, "--accept",
                     f"{PI_MAC}=lab-pi")  # fmt: skip
    out = accepted.stdout
    assert f"{PI_MAC}: added as lab-pi (accepted by the manager)" in out
    line = f'  - {{name: lab-pi, mac: "{PI_MAC}", ip: {pi["ip"]}, model: pi4}}'
    assert line in out.splitlines(), out
    node = sql(
        netlab, netlab.tmp / "data", "select mac, state, ip from nodes where name = 'lab-pi'"
    )
    assert node == f"{PI_MAC}|new|{pi['ip']}"
    query = "select actor, action, target from audit_log where action = 'node.accept'"
    assert sql(netlab, netlab.tmp / "data", query) == "local:root|node.accept|lab-pi"
    # A node now: the manager no longer lists it, and discover does not offer it again.
    again = piman(netlab, "discover", "--url", url, "-c", config, "--accept", PI_MAC, check=False)
    assert again.returncode == 2
    assert f"--accept {PI_MAC}: not among the candidates found" in again.stderr


def sql(lab: NetLab, data_dir: Path, query: str) -> str:
    """One query of a store (SQLite) as sqlite3 prints its rows."""
    return lab.run(lab.server, "sqlite3", str(data_dir / "piman.db"), query).stdout.strip()


def lab_config(lab: NetLab) -> str:
    path = lab.tmp / "local.yaml"
    path.write_text(
        f"manager: {{address: 198.18.0.1, network: 198.18.0.0/24, data_dir: {lab.tmp}/local}}\n"
    )
    return str(path)


def test_a_sweep_finds_the_addressed_clients_and_accepts_one_into_the_store(
    netlab: NetLab,
) -> None:
    for i, ns in enumerate(netlab.clients[:2]):
        netlab.run(ns, "ip", "addr", "add", f"198.18.0.{10 + i}/24", "dev", "eth0")
    config = lab_config(netlab)
    # One run: the sweep, then the first client accepted into the store (no manager runs).
    swept = piman(netlab, "discover", "-c", config, "--subnet", "198.18.0.0/24", "--sweep",
                  "--rate", "2000", "--json",
                  "--accept", f"{netlab.client_mac(0)}=c0-node")  # fmt: skip
    found = candidates(swept)
    for i in range(2):
        row = found[netlab.client_mac(i)]
        assert (row["ip"], row["vendor"], row["source_names"]) == (
            f"198.18.0.{10 + i}", "locally administered", ["arp"],
        )  # fmt: skip
        assert row["sources"][0]["where"] == "eth0"
    assert netlab.client_mac(2) not in found  # no address: nothing to answer ARP for
    assert "sweep: " in swept.stderr  # progress on stderr, the JSON alone on stdout
    (accepted,) = json.loads(swept.stdout)["accepted"]
    assert (accepted["node"], accepted["added"], accepted["detail"]) == (
        "c0-node", True, "added to the store",
    )  # fmt: skip
    assert (
        accepted["yaml"] == f'  - {{name: c0-node, mac: "{netlab.client_mac(0)}", ip: 198.18.0.10}}'
    )
    nodes = sql(netlab, netlab.tmp / "local", "select name, mac, ip, state, declared from nodes")
    assert nodes == f"c0-node|{netlab.client_mac(0)}|198.18.0.10|new|0"


RESPONDER = textwrap.dedent(
    """\
    import asyncio, socket, sys
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    async def main(kind, name, host, ip):
        zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(kind, f"{name}.{kind}", port=22, server=f"{host}.local.",
                                addresses=[socket.inet_aton(ip)])
        await zc.async_register_service(info)
        print("ready", flush=True)
        await asyncio.sleep(120)

    asyncio.run(main(*sys.argv[1:]))
    """
)


def respond(lab: NetLab, ns: str, kind: str, name: str, host: str, ip: str) -> None:
    """A zeroconf responder in ``ns`` announcing one service (killed with the lab)."""
    log = lab.tmp / f"responder-{ns}.log"
    with log.open("wb") as out:
        proc = lab.popen(ns, sys.executable, "-c", RESPONDER, kind, name, host, ip,
                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while b"ready" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the responder did not start"
        time.sleep(0.1)


def test_mdns_announcements_from_other_namespaces_are_found(netlab: NetLab) -> None:
    workstation, ssh_only = netlab.clients[1], netlab.clients[2]
    announced_mac = "dc:a6:32:00:02:00"
    set_mac(netlab, workstation, announced_mac)
    netlab.run(workstation, "ip", "addr", "add", "198.18.0.21/24", "dev", "eth0")
    netlab.run(ssh_only, "ip", "addr", "add", "198.18.0.22/24", "dev", "eth0")
    respond(netlab, workstation, "_workstation._tcp.local.", f"rack-pi [{announced_mac}]",
            "rack-pi", "198.18.0.21")  # fmt: skip
    respond(netlab, ssh_only, "_ssh._tcp.local.", "lab-box", "lab-box", "198.18.0.22")
    config = lab_config(netlab)

    done = piman(netlab, "discover", "-c", config, "--mdns", "2", "--accept-all-pis", "--json")
    found = candidates(done)
    pi = found[announced_mac]
    assert (pi["ip"], pi["hostname"], pi["vendor"]) == ("198.18.0.21", "rack-pi", "Raspberry Pi")
    assert "mdns" in pi["source_names"]
    assert {s["where"] for s in pi["sources"] if s["source"] == "mdns"} == {"_workstation._tcp"}
    # Its name carried no MAC: the neighbour table gave it (discover asked ARP for the address).
    box = found[netlab.client_mac(2)]
    assert (box["ip"], box["hostname"], box["source_names"]) == (
        "198.18.0.22", "lab-box", ["arp", "mdns"],
    )  # fmt: skip
    assert "mdns: " in done.stderr
    document = json.loads(done.stdout)
    assert document["candidates"][0]["mac"] == announced_mac  # the Pi first
    # Every Pi accepted, and only the Pi.
    assert [(a["mac"], a["node"], a["yaml"]) for a in document["accepted"]] == [
        (
            announced_mac,
            "pi-dca632000200",
            f'  - {{name: pi-dca632000200, mac: "{announced_mac}", ip: 198.18.0.21, model: pi4, '
            "hostname: rack-pi}",
        )
    ]
