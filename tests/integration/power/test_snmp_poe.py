"""The snmp-poe driver and the controller against snmpsim, checked with net-snmp's snmpget."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from piman.config.models import Config
from piman.fleet.lifecycle import PowerState
from piman.power.controller import PowerController, SystemClock
from piman.store import Store, reconcile
from tests.integration.power.snmpsim import (
    CISCO_MW,
    NETGEAR,
    RFC,
    TPLINK,
    V3_AUTH,
    V3_PRIV,
    V3_USER,
    Snmpsim,
    cisco_records,
    rfc3621_records,
    snmpget,
    start_snmpsim,
    tplink_records,
)
from tests.support import needs_tool

PORTS = 8
# (profile, community, admin OID of port p, value on, value off)
PROFILE_CASES = {
    "rfc3621": ("rfc", lambda p: f"{RFC}.3.1.{p}", "1", "2"),
    "netgear": ("netgear", lambda p: f"{NETGEAR}.3.1.{p}", "1", "2"),
    "tplink": ("tplink", lambda p: f"{TPLINK}.2.{p}", "1", "0"),
    "cisco": ("cisco@10", lambda p: f"{RFC}.3.1.{p}", "1", "2"),
}


@pytest.fixture(scope="module")
def sim() -> Iterator[Snmpsim]:
    needs_tool("snmpsimd", "snmpget")
    data = {
        "rfc": rfc3621_records(PORTS),
        "netgear": rfc3621_records(PORTS, base=NETGEAR),
        "tplink": tplink_records(PORTS),
        "cisco@10": cisco_records(PORTS),
        "auto-tp": tplink_records(PORTS),
        "auto-rfc": rfc3621_records(PORTS),
        "stack": rfc3621_records(4, group=2, offset=48),
        "searching": rfc3621_records(PORTS, detection={1: 2}),
        "public": [f"{RFC}.3.1.{p}|2|1" for p in range(1, PORTS + 1)],
        "mixed": [*rfc3621_records(3), f"{RFC}.3.1.4|2|1", f"{RFC}.6.1.4|2|3"],
        "v3data": rfc3621_records(PORTS),
        "v1": rfc3621_records(PORTS),
        "audit": rfc3621_records(PORTS),
    }
    s = start_snmpsim(data)
    try:
        yield s
    finally:
        s.stop()


def config(tmp: Path, switch: dict[str, Any], nodes: int = 0) -> Config:
    sw = {"name": "rack1", "address": "198.18.0.254", "ports": PORTS, **switch}
    return Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp)},
            "switches": [sw],
            "nodes": [
                {"name": f"pi{p}", "switch": "rack1", "port": p, "ip": f"198.18.0.{10 + p}"}
                for p in range(1, nodes + 1)
            ],
        }
    )


def snmp(sim: Snmpsim, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": sim.port, "timeout": "1s", "retries": 1, **extra}


class RecordingClock(SystemClock):
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await super().sleep(seconds)


@pytest.mark.parametrize("profile", list(PROFILE_CASES))
async def test_off_on_cycle_and_status_per_profile(
    sim: Snmpsim, tmp_path: Path, profile: str
) -> None:
    community, admin, on, off = PROFILE_CASES[profile]
    settings: dict[str, Any] = {"profile": profile, "off_seconds": "0.2s"}
    if profile == "cisco":
        settings["snmp"] = snmp(sim, community="cisco", vlan=10)
    else:
        settings["snmp"] = snmp(sim, community=community)
    c = PowerController(config(tmp_path, settings), retry_delays=(0.1,))
    try:
        [o] = await c.run("off", [c.target("rack1", 2)])
        assert o.ok, o.error
        assert o.state is PowerState.OFF
        assert snmpget(sim.port, community, admin(2)) == off
        assert snmpget(sim.port, community, admin(3)) == on  # neighbours untouched

        [o] = await c.run("on", [c.target("rack1", 2)])
        assert o.ok, o.error
        assert snmpget(sim.port, community, admin(2)) == on

        before = len(sim.sets())
        [o] = await c.run("cycle", [c.target("rack1", 3)])
        assert o.ok, o.error
        assert o.state is PowerState.ON
        assert snmpget(sim.port, community, admin(3)) == on
        assert sim.sets()[before:] == [(admin(3), f"<{off}>"), (admin(3), f"<{on}>")]

        [o] = await c.run("status", [c.target("rack1", 4)])
        assert o.ok, o.error
        assert o.state is PowerState.ON
        if profile in ("rfc3621", "netgear", "cisco"):
            assert o.reading is not None
            assert o.reading.detection == "deliveringPower"
        if profile == "tplink":
            assert o.reading is not None
            assert o.reading.watts == pytest.approx(4.4)
        if profile == "cisco":
            assert o.reading is not None
            assert o.reading.watts == pytest.approx(3.004)
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("community", "expected"), [("auto-tp", "tplink"), ("auto-rfc", "rfc3621")]
)
async def test_profile_auto_probes_and_remembers(
    sim: Snmpsim, tmp_path: Path, community: str, expected: str
) -> None:
    c = PowerController(
        config(tmp_path, {"profile": "auto", "snmp": snmp(sim, community=community)})
    )
    try:
        [o] = await c.run("off", [c.target("rack1", 5)])
        assert o.ok, o.error
        driver = c.driver(c.config.switches[0])
        assert driver.profile.name == expected  # type: ignore[attr-defined]
        probes = len(sim.requests(community))
        [o] = await c.run("on", [c.target("rack1", 5)])
        assert o.ok, o.error
    finally:
        await c.close()
    requests = sim.requests(community)
    # TP-Link is probed first, before any other vendor's OID.
    assert requests[0] == ("GET", f"{TPLINK}.2.5")
    if expected == "rfc3621":
        assert [oids for _, oids in requests[:4]] == [
            f"{TPLINK}.2.5",
            f"{NETGEAR}.3.1.5",
            f"{CISCO_MW}.1.5",
            f"{RFC}.3.1.5",
        ]
    # Remembered: the second command sends one SET and one read-back GET, no probes.
    assert [kind for kind, _ in requests[probes:]] == ["SET", "GET"]


async def test_group_and_port_offset_pick_the_right_oid(sim: Snmpsim, tmp_path: Path) -> None:
    c = PowerController(
        config(tmp_path, {"group": 2, "port_offset": 48, "snmp": snmp(sim, community="stack")})
    )
    try:
        [o] = await c.run("off", [c.target("rack1", 3)])
        assert o.ok, o.error
    finally:
        await c.close()
    assert snmpget(sim.port, "stack", f"{RFC}.3.2.51") == "2"


async def test_snmpv3_authpriv_with_keys_from_file_and_env(
    sim: Snmpsim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "auth.key").write_text(V3_AUTH + "\n")
    monkeypatch.setenv("PIMAN_TEST_SNMP_PRIV", V3_PRIV)
    v3 = snmp(
        sim,
        version="3",
        user=V3_USER,
        context="v3data",
        auth={"protocol": "sha256", "key_file": str(tmp_path / "auth.key")},
        priv={"protocol": "aes256", "key_env": "PIMAN_TEST_SNMP_PRIV"},
    )
    c = PowerController(config(tmp_path, {"snmp": v3}))
    try:
        [o] = await c.run("off", [c.target("rack1", 6)])
        assert o.ok, o.error
        assert o.state is PowerState.OFF
    finally:
        await c.close()
    assert snmpget(sim.port, "v3data", f"{RFC}.3.1.6") == "2"


async def test_wrong_v3_key_is_fatal_and_not_retried(sim: Snmpsim, tmp_path: Path) -> None:
    v3 = snmp(
        sim,
        version="3",
        user=V3_USER,
        context="v3data",
        auth={"protocol": "sha256", "key": "not-the-key"},
        priv={"protocol": "aes256", "key": V3_PRIV},
    )
    clock = RecordingClock()
    c = PowerController(config(tmp_path, {"snmp": v3}), clock=clock)
    try:
        [o] = await c.run("off", [c.target("rack1", 7)])
    finally:
        await c.close()
    assert not o.ok
    assert "wrong authentication key" in (o.error or "")
    assert "rack1" in (o.error or "")
    assert clock.sleeps == []
    assert snmpget(sim.port, "v3data", f"{RFC}.3.1.7") == "1"
    assert "not-the-key" not in (o.error or "")


async def test_read_only_community_is_fatal_and_not_retried(sim: Snmpsim, tmp_path: Path) -> None:
    clock = RecordingClock()
    c = PowerController(config(tmp_path, {"snmp": snmp(sim, community="public")}), clock=clock)
    try:
        [o] = await c.run("off", [c.target("rack1", 1)])
    finally:
        await c.close()
    assert not o.ok
    assert "not writable" in (o.error or "")
    assert clock.sleeps == []
    assert snmpget(sim.port, "public", f"{RFC}.3.1.1") == "1"


async def test_silent_agent_is_retried_then_times_out_within_the_bound(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.setblocking(False)
        port = silent.getsockname()[1]
        settings = {"snmp": {"host": "127.0.0.1", "port": port, "timeout": "0.2s", "retries": 1}}
        clock = RecordingClock()
        c = PowerController(config(tmp_path, settings), clock=clock, retry_delays=(0.1, 0.1))
        try:
            [o] = await c.run("off", [c.target("rack1", 1)])
        finally:
            await c.close()
        received = 0
        while True:
            try:
                silent.recv(4096)
            except BlockingIOError:
                break
            received += 1
    assert not o.ok
    assert "no answer" in (o.error or "")
    assert "gave up after 3 attempts" in (o.error or "")
    assert clock.sleeps == [0.1, 0.1]
    assert received == 6  # 3 attempts x (1 try + 1 SNMP retry): the configured bound


async def test_port_that_never_delivers_power_fails_with_the_detection_status(
    sim: Snmpsim, tmp_path: Path
) -> None:
    c = PowerController(
        config(tmp_path, {"detect_timeout": 0, "snmp": snmp(sim, community="searching")})
    )
    try:
        [bad, good] = await c.run("on", [c.target("rack1", 1), c.target("rack1", 2)])
    finally:
        await c.close()
    assert not bad.ok
    assert "searching" in (bad.error or "")
    assert good.ok


async def test_actions_go_to_the_audit_log_and_node_power_state(
    sim: Snmpsim, tmp_path: Path, store: Store
) -> None:
    cfg = config(
        tmp_path, {"uplink_port": 8, "snmp": snmp(sim, community="audit")}, nodes=PORTS - 1
    )
    await reconcile(store, cfg)
    c = PowerController(cfg, store=store, actor="test")
    try:
        outcomes = await c.run("off", c.resolve(["pi2", "rack1:8"]))
    finally:
        await c.close()
    assert [o.ok for o in outcomes] == [True, False]
    assert "uplink_port" in (outcomes[1].error or "")
    assert (await store.nodes.get("pi2")).power_state == "off"
    entries = await store.audit.list(limit=10)
    got = {(e.actor, e.action, e.target, e.result) for e in entries}
    assert ("test", "port.off", "pi2 (rack1:2)", "ok") in got
    assert ("test", "power.off", "pi2 (rack1:2)", "ok") in got
    assert ("test", "power.off", "rack1:8", "failed") in got
    assert all(e.at <= datetime.now(UTC).replace(tzinfo=e.at.tzinfo) for e in entries)
    assert f"{RFC}.3.1.8" not in [oid for oid, _ in sim.sets()]
    assert snmpget(sim.port, "audit", f"{RFC}.3.1.2") == "2"
    await asyncio.sleep(0)


async def test_one_read_only_port_does_not_sink_the_others(sim: Snmpsim, tmp_path: Path) -> None:
    c = PowerController(config(tmp_path, {"snmp": snmp(sim, community="mixed")}))
    before = len(sim.sets())
    try:
        outcomes = await c.run("off", [c.target("rack1", p) for p in (1, 2, 3, 4)])
    finally:
        await c.close()
    assert [o.ok for o in outcomes] == [True, True, True, False]
    assert "not writable" in (outcomes[3].error or "")
    assert [snmpget(sim.port, "mixed", f"{RFC}.3.1.{p}") for p in (1, 2, 3, 4)] == [
        "2",
        "2",
        "2",
        "1",
    ]
    # One bulk SET of four varbinds was refused as a whole, then each port was set alone.
    assert len(sim.sets()[before:]) >= 4


async def test_a_rack_is_switched_with_a_few_pdus(sim: Snmpsim, tmp_path: Path) -> None:
    c = PowerController(
        config(tmp_path, {"batch_size": PORTS, "snmp": snmp(sim, community="audit")})
    )
    try:
        outcomes = await c.run("off", [c.target("rack1", p) for p in range(1, PORTS + 1)])
        assert all(o.ok for o in outcomes)
        driver = c.driver(c.config.switches[0])
        messages = driver.client.messages  # type: ignore[attr-defined]
        outcomes = await c.run("on", [c.target("rack1", p) for p in range(1, PORTS + 1)])
        assert all(o.ok for o in outcomes)
    finally:
        await c.close()
    assert messages == 2  # one SET for the 8 ports, one GET to read them back
    assert [snmpget(sim.port, "audit", f"{RFC}.3.1.{p}") for p in range(1, PORTS + 1)] == [
        "1"
    ] * PORTS


async def test_snmpv1_switches_a_port(sim: Snmpsim, tmp_path: Path) -> None:
    c = PowerController(config(tmp_path, {"snmp": snmp(sim, version="1", community="v1")}))
    try:
        [o] = await c.run("cycle", [c.target("rack1", 2)])
        [status] = await c.run("status", [c.target("rack1", PORTS)])
    finally:
        await c.close()
    assert o.ok, o.error
    assert status.ok, status.error
    assert sim.sets()[-2:] == [(f"{RFC}.3.1.2", "<2>"), (f"{RFC}.3.1.2", "<1>")]


@pytest.mark.parametrize(
    ("sim_auth", "sim_priv", "auth", "priv"),
    [("SHA", "AES", "sha", "aes128"), ("SHA512", "AES128", "sha512", "aes128")],
)
async def test_snmpv3_other_protocols(
    tmp_path: Path, sim_auth: str, sim_priv: str, auth: str, priv: str
) -> None:
    needs_tool("snmpsimd")
    s = start_snmpsim({"v3x": rfc3621_records(2)}, v3=(sim_auth, sim_priv))
    try:
        v3 = snmp(
            s,
            version="3",
            user=V3_USER,
            context="v3x",
            auth={"protocol": auth, "key": V3_AUTH},
            priv={"protocol": priv, "key": V3_PRIV},
        )
        c = PowerController(config(tmp_path, {"snmp": v3}))
        try:
            [o] = await c.run("off", [c.target("rack1", 1)])
        finally:
            await c.close()
        assert o.ok, o.error
        assert snmpget(s.port, "v3x", f"{RFC}.3.1.1") == "2"
    finally:
        s.stop()


async def test_unknown_community_reads_as_no_answer_and_names_the_community(
    sim: Snmpsim, tmp_path: Path
) -> None:
    # SNMPv1/v2c agents drop a request with an unknown community without a word, exactly as an
    # unreachable switch would: piman cannot tell the two apart, so it retries and then says so.
    settings = {"snmp": snmp(sim, community="no-such-community", timeout="0.2s", retries=0)}
    clock = RecordingClock()
    c = PowerController(config(tmp_path, settings), clock=clock, retry_delays=(0.1,))
    try:
        [o] = await c.run("off", [c.target("rack1", 1)])
    finally:
        await c.close()
    assert not o.ok
    assert "no answer" in (o.error or "")
    assert "community" in (o.error or "")
    assert clock.sleeps == [0.1]
