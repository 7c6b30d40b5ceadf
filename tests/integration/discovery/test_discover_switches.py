"""``piman discover`` reading a switch: BRIDGE-MIB's forwarding table and LLDP-MIB's neighbours
from snmpsim give each MAC its switch:port; the uplink port and known nodes are set apart, and a
switch that does not answer is a warning, not a failure."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.power.snmpsim import Snmpsim, rfc3621_records, start_snmpsim
from tests.support import free_udp_port, needs_tool

FDB = "1.3.6.1.2.1.17.4.3.1.2"
LLDP = "1.0.8802.1.1.2.1.4.1.1"
NODE, NEW_PI, PI3, UPLINK = (
    "dc:a6:32:00:00:01", "dc:a6:32:00:00:05", "b8:27:eb:00:00:07", "00:11:22:33:44:55",
)  # fmt: skip


def _decimal(mac: str) -> str:
    return ".".join(str(int(b, 16)) for b in mac.split(":"))


def _lldp(port: int, mac: str, name: str) -> list[str]:
    """lldpRemTable rows of a neighbour on ``port`` (time mark 0, index 1) as lldpd sends."""
    index, hexmac = f"0.{port}.1", mac.replace(":", "")
    return [
        f"{LLDP}.4.{index}|2|4",  # chassis id subtype macAddress
        f"{LLDP}.5.{index}|4x|{hexmac}",
        f"{LLDP}.6.{index}|2|3",  # port id subtype macAddress
        f"{LLDP}.7.{index}|4x|{hexmac}",
        f"{LLDP}.9.{index}|4|{name}",
    ]


@pytest.fixture(scope="module")
def sim() -> Iterator[Snmpsim]:
    needs_tool("snmpsimd")
    records = rfc3621_records(8)
    records += [f"{FDB}.{_decimal(mac)}|2|{port}" for mac, port in
                ((NODE, 1), (NEW_PI, 5), (PI3, 7), (UPLINK, 8))]  # fmt: skip
    records += _lldp(5, NEW_PI, "pi-05") + _lldp(8, UPLINK, "core-switch")
    s = start_snmpsim({"bridge": records}, v3=False)
    try:
        yield s
    finally:
        s.stop()


def config(tmp: Path, sim: Snmpsim) -> Path:
    path = tmp / "piman.yaml"
    path.write_text(
        f"""\
manager: {{address: 198.18.0.1, network: 198.18.0.0/24, data_dir: {tmp}}}
switches:
  - name: rack1
    address: 198.18.0.254
    uplink_port: 8
    snmp: {{host: 127.0.0.1, port: {sim.port}, community: bridge, timeout: 1s}}
  - name: rack2
    address: 198.18.0.253
    snmp: {{host: 127.0.0.1, port: {free_udp_port()}, timeout: 0.3s, retries: 0}}
nodes:
  - {{name: pi1, switch: rack1, port: 1, mac: "{NODE}"}}
"""
    )
    return path


def piman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piman", *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_switch_ports_and_lldp_names_of_the_candidates(sim: Snmpsim, tmp_path: Path) -> None:
    cfg = str(config(tmp_path, sim))
    done = piman("discover", "-c", cfg, "--known", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    found = {r["mac"]: r for r in rows if r["switch"] is not None}
    new = found[NEW_PI]
    assert (new["switch_port"], new["hostname"], new["vendor"], new["model"], new["node"]) == (
        "rack1:5", "pi-05", "Raspberry Pi", "pi4", None,
    )  # fmt: skip
    assert new["source_names"] == ["bridge", "lldp"]
    assert {s["where"] for s in new["sources"]} == {"rack1:5"}
    assert (found[PI3]["switch_port"], found[PI3]["model"]) == ("rack1:7", "pi3b+")
    assert found[NODE]["node"] == "pi1"  # known: listed with --known only, named
    assert UPLINK not in found  # the uplink port is the rest of the network
    assert "warning: switch rack2: " in done.stderr  # it did not answer; rack1 still counts


def test_accepting_a_switch_candidate_gives_its_port_in_the_yaml(
    sim: Snmpsim, tmp_path: Path
) -> None:
    cfg = str(config(tmp_path, sim))
    done = piman("discover", "-c", cfg, "--accept", f"{NEW_PI}=rack1-05", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)  # the candidates, and what became of each accepted one
    assert NEW_PI in {c["mac"] for c in document["candidates"]}
    assert document["accepted"] == [
        {
            "mac": NEW_PI,
            "node": "rack1-05",
            "added": True,
            "detail": "added to the store",
            "yaml": f'  - {{name: rack1-05, mac: "{NEW_PI}", model: pi4, switch: rack1, port: 5, '
            "hostname: pi-05}",
        }
    ]
    with sqlite3.connect(tmp_path / "piman.db") as db:
        nodes = db.execute("select name, mac, state, declared from nodes order by name").fetchall()
    assert nodes == [("pi1", NODE, "ready", 1), ("rack1-05", NEW_PI, "new", 0)]
