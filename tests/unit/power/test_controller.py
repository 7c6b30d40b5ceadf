"""The controller's sequencing, retries, staggering and records, against fake drivers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from piman.config.models import Config
from piman.fleet.lifecycle import PowerState
from piman.power.controller import PowerController
from piman.power.registry import DriverRegistry
from piman.store import Store, reconcile
from tests.unit.power.fakes import EPOCH, FakeClock, FakeSwitch, fake_factory


def make_config(
    tmp: Path, ports: int = 48, switches: tuple[str, ...] = ("rack1",), **switch_fields: Any
) -> Config:
    return Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "network": "198.18.0.0/16", "data_dir": str(tmp)},
            "switches": [
                {
                    "name": name,
                    "address": f"198.18.255.{250 + k}",
                    "driver": "snmp-poe",
                    "ports": ports,
                    **switch_fields,
                }
                for k, name in enumerate(switches)
            ],
            "nodes": [
                {
                    "name": f"{name}-pi{p:02d}",
                    "switch": name,
                    "port": p,
                    "ip": f"198.18.{k + 1}.{p}",
                }
                for k, name in enumerate(switches)
                for p in range(1, ports + 1)
                if p != switch_fields.get("uplink_port")
            ],
        }
    )


def controller(
    config: Config, store: Store | None, fakes: dict[str, FakeSwitch], clock: FakeClock, **kw: Any
) -> PowerController:
    registry = DriverRegistry([("snmp-poe", fake_factory(fakes))])
    return PowerController(config, store=store, registry=registry, clock=clock, **kw)


async def test_power_on_of_48_ports_is_staggered_in_batches_in_port_order(
    tmp_path: Path, store: Store
) -> None:
    config = make_config(tmp_path, 48, uplink_port=48, batch_size=4, batch_interval="5s")
    await reconcile(store, config)
    fakes: dict[str, FakeSwitch] = {}
    clock = FakeClock()
    c = controller(config, store, fakes, clock)
    outcomes = await c.run("on", c.resolve(["all"]))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    assert len(outcomes) == 47

    entries = [e for e in await store.audit.list(action="port.on", limit=1000)]
    entries.sort(key=lambda e: (e.at, int(e.target.rsplit(":", 1)[1].rstrip(")"))))
    ports = [int(e.target.rsplit(":", 1)[1].rstrip(")")) for e in entries]
    assert ports == list(range(1, 48))
    offsets = [
        (e.at - EPOCH.replace(tzinfo=None) if e.at.tzinfo is None else e.at - EPOCH).total_seconds()
        for e in entries
    ]
    for i, offset in enumerate(offsets):
        assert offset == pytest.approx((i // 4) * 5.0)
    assert len(set(offsets)) == 12  # 47 ports in batches of 4


async def test_cycle_switches_off_waits_then_on_and_records_state(
    tmp_path: Path, store: Store
) -> None:
    config = make_config(tmp_path, 4, off_seconds="3s", batch_size=8)
    await reconcile(store, config)
    fakes: dict[str, FakeSwitch] = {}
    clock = FakeClock()
    c = controller(config, store, fakes, clock)
    outcomes = await c.run("cycle", c.resolve(["rack1-pi02", "rack1:3"]))
    assert [o.ok for o in outcomes] == [True, True]
    assert fakes["rack1"].log == [
        ("rack1", 2, "off"),
        ("rack1", 3, "off"),
        ("rack1", 2, "on"),
        ("rack1", 3, "on"),
    ]
    assert 3.0 in clock.sleeps
    node = await store.nodes.get("rack1-pi02")
    assert node.power_state == PowerState.ON.value
    results = await store.audit.list(action="power.cycle")
    assert {r.result for r in results} == {"ok"}
    assert any("detection=deliveringPower" in (r.detail or "") for r in results)


async def test_uplink_port_is_never_switched_off(tmp_path: Path) -> None:
    config = make_config(tmp_path, 8, uplink_port=8)
    fakes: dict[str, FakeSwitch] = {}
    c = controller(config, None, fakes, FakeClock())
    outcomes = await c.run("off", [c.target("rack1", 8), c.target("rack1", 7)])
    assert not outcomes[0].ok
    assert "uplink_port" in (outcomes[0].error or "")
    assert outcomes[1].ok
    assert fakes["rack1"].log == [("rack1", 7, "off")]


async def test_unreachable_switch_is_retried_on_the_schedule(tmp_path: Path) -> None:
    config = make_config(tmp_path, 4)
    fakes = {"rack1": FakeSwitch()}
    fakes["rack1"].conn_failures[2] = 2
    clock = FakeClock()
    c = controller(config, None, fakes, clock, retry_delays=(1.0, 2.0, 4.0))
    [outcome] = await c.run("off", [c.target("rack1", 2)])
    assert outcome.ok
    assert clock.sleeps == [1.0, 2.0]


async def test_unreachable_switch_gives_up_after_the_schedule(tmp_path: Path) -> None:
    config = make_config(tmp_path, 4)
    fakes = {"rack1": FakeSwitch()}
    fakes["rack1"].conn_failures[2] = 99
    clock = FakeClock()
    c = controller(config, None, fakes, clock, retry_delays=(1.0, 2.0))
    [outcome] = await c.run("off", [c.target("rack1", 2)])
    assert not outcome.ok
    assert "gave up after 3 attempts" in (outcome.error or "")
    assert clock.sleeps == [1.0, 2.0]


async def test_fatal_error_is_not_retried(tmp_path: Path) -> None:
    config = make_config(tmp_path, 4)
    fakes = {"rack1": FakeSwitch()}
    fakes["rack1"].fatal.add(3)
    clock = FakeClock()
    c = controller(config, None, fakes, clock)
    [outcome] = await c.run("cycle", [c.target("rack1", 3)])
    assert not outcome.ok
    assert "read-only" in (outcome.error or "")
    assert clock.sleeps == []


async def test_switches_run_concurrently_each_with_its_own_stagger(
    tmp_path: Path, store: Store
) -> None:
    config = make_config(tmp_path, 8, ("rack1", "rack2"), batch_size=4, batch_interval="10s")
    await reconcile(store, config)
    fakes: dict[str, FakeSwitch] = {}
    c = controller(config, store, fakes, FakeClock())
    outcomes = await c.run("on", c.resolve(["all"]))
    assert all(o.ok for o in outcomes)
    assert len(outcomes) == 16
    at: dict[str, list[float]] = {}
    for e in await store.audit.list(action="port.on", limit=100):
        when = e.at if e.at.tzinfo else e.at.replace(tzinfo=EPOCH.tzinfo)
        at.setdefault(e.target.split("-")[0], []).append((when - EPOCH).total_seconds())
    assert sorted(at["rack1"]) == [0.0] * 4 + [10.0] * 4
    assert sorted(at["rack2"]) == [0.0] * 4 + [10.0] * 4


async def test_resolve_rejects_unknown_targets(tmp_path: Path) -> None:
    from piman.errors import NotFoundError

    c = controller(make_config(tmp_path, 4), None, {}, FakeClock())
    with pytest.raises(NotFoundError, match="nope"):
        c.resolve(["nope"])
    with pytest.raises(NotFoundError, match="no port 9"):
        c.resolve(["rack1:9"])
    with pytest.raises(NotFoundError, match="no switch"):
        c.resolve(["rack9:1"])
    assert [t.port for t in c.resolve(["198.18.255.250:2", "rack1-pi02"])] == [2]


async def test_cycle_uses_a_one_step_reboot_when_the_driver_has_one(tmp_path: Path) -> None:
    from piman.config.models import NodeSettings
    from piman.config.power import SwitchSettings
    from piman.fleet.power import PortReading

    reboots: list[int] = []

    class Rebooting:
        name = "ssh-reboot"
        has_readback = False
        has_detection = False

        def __init__(self, switch: SwitchSettings, nodes: dict[int, NodeSettings]) -> None:
            self.switch = switch.name

        async def reboot(self, port: int) -> None:
            reboots.append(port)

        async def set_port(self, port: int, state: PowerState) -> None:
            raise AssertionError("a reboot-capable driver is not switched off and on")

        async def get_port(self, port: int) -> PortReading:
            return PortReading(admin=PowerState.UNKNOWN)

        async def close(self) -> None:
            return None

    config = make_config(tmp_path, 4)
    c = PowerController(
        config, registry=DriverRegistry([("snmp-poe", Rebooting)]), clock=FakeClock()
    )
    outcomes = await c.run("cycle", c.resolve(["rack1-pi01", "rack1-pi03"]))
    assert [o.ok for o in outcomes] == [True, True]
    assert reboots == [1, 3]


async def test_manual_driver_outcome_tells_the_operator(tmp_path: Path) -> None:
    from piman.power.manual import ManualDriver

    config = make_config(tmp_path, 4)
    clock = FakeClock()
    c = PowerController(config, registry=DriverRegistry([("snmp-poe", ManualDriver)]), clock=clock)
    [o] = await c.run("off", c.resolve(["rack1-pi02"]))
    assert not o.ok
    assert "switch it off by hand" in (o.error or "")
    assert clock.sleeps == []


async def test_a_port_named_twice_is_cycled_once(tmp_path: Path) -> None:
    fakes: dict[str, FakeSwitch] = {}
    c = controller(make_config(tmp_path, 4), None, fakes, FakeClock())
    outcomes = await c.run("cycle", [c.target("rack1", 2), c.target("198.18.255.250", 2)])
    assert len(outcomes) == 1
    assert fakes["rack1"].log == [("rack1", 2, "off"), ("rack1", 2, "on")]


async def test_a_port_that_accepts_a_set_but_keeps_its_state_is_a_failure(
    tmp_path: Path, store: Store
) -> None:
    config = make_config(tmp_path, 4)
    await reconcile(store, config)
    fakes = {"rack1": FakeSwitch()}
    fakes["rack1"].stuck.add(2)
    c = controller(config, store, fakes, FakeClock())
    stuck, fine = await c.run("off", c.resolve(["rack1-pi02", "rack1-pi03"]))
    # The switch took both sets without an error; only the read-back tells them apart.
    assert fakes["rack1"].log == [("rack1", 2, "off"), ("rack1", 3, "off")]
    assert not stuck.ok
    assert stuck.error == "rack1:2: set off but the switch reads back on"
    assert stuck.state is PowerState.UNKNOWN
    assert fine.ok
    assert fine.state is PowerState.OFF
    assert (await store.nodes.get("rack1-pi02")).power_state == PowerState.UNKNOWN.value
    assert (await store.nodes.get("rack1-pi03")).power_state == PowerState.OFF.value
    [entry] = await store.audit.list(action="power.off", target="rack1-pi02 (rack1:2)")
    assert (entry.result, entry.detail) == ("failed", stuck.error)


async def test_a_cycle_whose_off_does_not_take_never_switches_on(tmp_path: Path) -> None:
    fakes = {"rack1": FakeSwitch()}
    fakes["rack1"].stuck.add(2)
    clock = FakeClock()
    c = controller(make_config(tmp_path, 4, off_seconds="3s"), None, fakes, clock)
    [o] = await c.run("cycle", [c.target("rack1", 2)])
    assert not o.ok
    assert "set off but the switch reads back on" in (o.error or "")
    assert fakes["rack1"].log == [("rack1", 2, "off")]
    assert 3.0 not in clock.sleeps  # no off-wait: nothing went off
