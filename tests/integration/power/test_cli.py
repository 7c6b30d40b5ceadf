"""``piman restart`` and ``piman power`` end to end: the real CLI, snmpsim, the store."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from piman.store import Store
from tests.integration.power.snmpsim import (
    RFC,
    Snmpsim,
    rfc3621_records,
    snmpget,
    start_snmpsim,
    stuck_records,
)
from tests.support import SEED_YAML as SEED
from tests.support import needs_tool

FDB = "1.3.6.1.2.1.17.4.3.1.2"
BASE_PORT = "1.3.6.1.2.1.17.1.4.1.2"


def _mac_oid(mac: str) -> str:
    return ".".join(str(int(b, 16)) for b in mac.split(":"))


@pytest.fixture(scope="module")
def sim() -> Iterator[Snmpsim]:
    needs_tool("snmpsimd", "snmpget")
    bridge = rfc3621_records(8) + [f"{BASE_PORT}.{p}|2|{p}" for p in range(1, 9)]
    bridge += [
        f"{FDB}.{_mac_oid('dc:a6:32:00:00:01')}|2|1",
        f"{FDB}.{_mac_oid('dc:a6:32:00:00:02')}|2|5",
        f"{FDB}.{_mac_oid('b8:27:eb:00:00:07')}|2|7",
    ]
    s = start_snmpsim(
        {
            "seed": rfc3621_records(4),
            "lab": rfc3621_records(8),
            "bridge": bridge,
            "stuck": stuck_records(8),
        },
        v3=False,
    )
    try:
        yield s
    finally:
        s.stop()


def piman(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piman", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of a rich table, by first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        cells = [c for c in cells if c]
        if len(cells) > 1:
            rows[cells[0]] = cells
    return rows


def lab_config(tmp: Path, sim: Snmpsim, community: str = "lab") -> Path:
    path = tmp / "piman.yaml"
    path.write_text(
        f"""\
manager: {{address: 198.18.0.1, data_dir: {tmp}}}
switches:
  - name: rack1
    address: 198.18.0.254
    uplink_port: 8
    off_seconds: 0.2s
    snmp: {{host: 127.0.0.1, port: {sim.port}, community: {community}, timeout: 1s}}
nodes:
  - {{name: pi1, switch: rack1, port: 1, mac: "dc:a6:32:00:00:01", ip: 198.18.0.11}}
  - {{name: pi2, switch: rack1, port: 2, mac: "dc:a6:32:00:00:02", ip: 198.18.0.12}}
  - {{name: pi3, switch: rack1, port: 3, ip: 198.18.0.13}}
"""
    )
    return path


def test_seed_config_restart_end_to_end(sim: Snmpsim, tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(
        f"""\
manager: {{data_dir: {tmp_path}}}
switches:
  - address: 172.30.4.254
    off_seconds: 0.2s
    snmp: {{host: 127.0.0.1, port: {sim.port}, community: seed}}
"""
    )
    before = len(sim.sets())
    result = piman(
        "restart", "172.30.4.254", "2", "3", "-c", str(seed), env={"PIMAN_OVERLAY": str(overlay)}
    )
    # Pi 3 is not in the seed's list for switch 0, but port 3 exists: it is cycled by port.
    assert result.returncode == 0, result.stderr
    assert "switch0-pi02 (switch0:2): on, deliveringPower" in result.stdout
    sets = sim.sets()[before:]
    # Both ports off first (concurrently), then both on: never on before off.
    assert sorted(sets[:2]) == [(f"{RFC}.3.1.2", "<2>"), (f"{RFC}.3.1.3", "<2>")]
    assert sorted(sets[2:]) == [(f"{RFC}.3.1.2", "<1>"), (f"{RFC}.3.1.3", "<1>")]
    assert snmpget(sim.port, "seed", f"{RFC}.3.1.2") == "1"
    assert snmpget(sim.port, "seed", f"{RFC}.3.1.3") == "1"

    async def audit() -> list[tuple[str, str, str]]:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
        await store.open()
        try:
            node = await store.nodes.get("switch0-pi02")
            assert node.power_state == "on"
            return [(e.action, e.target, e.result) for e in await store.audit.list()]
        finally:
            await store.close()

    entries = asyncio.run(audit())
    assert ("power.cycle", "switch0-pi02 (switch0:2)", "ok") in entries
    assert ("port.off", "switch0-pi02 (switch0:2)", "ok") in entries
    assert ("port.on", "switch0:3", "ok") in entries


def test_restart_bad_input_is_one_line_exit_2(sim: Snmpsim, tmp_path: Path) -> None:
    config = lab_config(tmp_path, sim)
    result = piman("restart", "rack9", "2", "-c", str(config))
    assert result.returncode == 2
    assert "no switch named or at 'rack9'" in result.stderr
    assert "Traceback" not in result.stderr
    result = piman("restart", "rack1", "two", "-c", str(config))
    assert result.returncode == 2
    assert "'two' is not a Pi number" in result.stderr


def test_power_status_table_and_failures_exit_1(sim: Snmpsim, tmp_path: Path) -> None:
    config = lab_config(tmp_path, sim)
    result = piman("power", "off", "pi2", "rack1:8", "-c", str(config))
    assert result.returncode == 1
    assert "pi2 (rack1:2): off" in result.stdout
    assert "error: rack1:8:" in result.stderr
    assert "uplink_port" in result.stderr
    assert snmpget(sim.port, "lab", f"{RFC}.3.1.2") == "2"
    assert snmpget(sim.port, "lab", f"{RFC}.3.1.8") == "1"

    result = piman("power", "status", "all", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = table_rows(result.stdout)
    assert lines["pi2"][1:3] == ["rack1:2", "off"]
    assert lines["pi1"][1:4] == ["rack1:1", "on", "deliveringPower"]

    result = piman("power", "on", "pi2", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert snmpget(sim.port, "lab", f"{RFC}.3.1.2") == "1"

    result = piman("power", "cycle", "nosuchnode", "-c", str(config))
    assert result.returncode == 2
    assert "'nosuchnode' is not a node" in result.stderr


def test_a_switch_that_accepts_the_set_but_keeps_the_port_on_is_a_failure(
    sim: Snmpsim, tmp_path: Path
) -> None:
    config = lab_config(tmp_path, sim, community="stuck")
    before = len(sim.sets())
    result = piman("power", "off", "pi2", "-c", str(config))
    assert result.returncode == 1, result.stdout
    assert "error: pi2 (rack1:2): rack1:2: set off but the switch reads back on" in result.stderr
    assert "pi2 (rack1:2): off" not in result.stdout
    # The switch answered the SET without an error: only the read-back shows the port stayed on.
    assert sim.sets()[before:] == [(f"{RFC}.3.1.2", "<2>")]
    assert snmpget(sim.port, "stuck", f"{RFC}.3.1.2") == "1"

    async def stored() -> tuple[str, list[tuple[str, str | None]]]:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
        await store.open()
        try:
            node = await store.nodes.get("pi2")
            entries = await store.audit.list(action="power.off")
            return node.power_state, [(e.result, e.detail) for e in entries]
        finally:
            await store.close()

    power_state, entries = asyncio.run(stored())
    assert power_state == "unknown"  # never "off": the port was not switched off
    assert entries == [("failed", "rack1:2: set off but the switch reads back on")]


def test_power_map_shows_macs_and_prints_yaml_fixes(sim: Snmpsim, tmp_path: Path) -> None:
    config = lab_config(tmp_path, sim, community="bridge")
    result = piman("power", "map", "rack1", "-c", str(config))
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["dc:a6:32:00:00:01"][1:] == ["pi1", "1", "1", "ok"]
    assert rows["dc:a6:32:00:00:02"][1:] == ["pi2", "5", "2", "moved"]
    assert rows["b8:27:eb:00:00:07"][-1] == "unconfigured"
    assert '- {name: pi2, switch: rack1, port: 5, mac: "dc:a6:32:00:00:02"}' in result.stdout
