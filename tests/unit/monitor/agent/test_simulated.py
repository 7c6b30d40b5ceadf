"""The simulated Pi behind the demo's agents, driven by a fake clock."""

from __future__ import annotations

import pytest

from piman.monitor.agent.exposition import MetricFamily
from piman.sim.agents import THROTTLE_AT, SimulatedPi


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def value(fams: list[MetricFamily], name: str, **labels: str) -> float:
    for fam in fams:
        if fam.name == name:
            for pairs, v in fam.samples:
                if all(dict(pairs).get(k) == x for k, x in labels.items()):
                    return v
    raise AssertionError(f"no {name}{labels}")


def test_counters_grow_with_time_and_cpu_share_matches_events() -> None:
    clock = Clock()
    pi = SimulatedPi("rack1-pi01", clock=clock)
    first = pi.collect()
    clock.now += 60
    events = pi.events()
    second = pi.collect()
    busy = idle = 0.0
    for mode in ("user", "system", "softirq", "idle", "iowait"):
        delta = value(second, "node_cpu_seconds_total", cpu="0", mode=mode) - value(
            first, "node_cpu_seconds_total", cpu="0", mode=mode
        )
        assert delta >= 0
        if mode in ("idle", "iowait"):
            idle += delta
        else:
            busy += delta
    assert busy + idle == pytest.approx(60, abs=0.1)
    assert 100 * busy / 60 == pytest.approx(events["cpu_percent"], abs=15)
    assert value(second, "node_network_receive_bytes_total", device="eth0") > value(
        first, "node_network_receive_bytes_total", device="eth0"
    )
    total = value(second, "node_memory_MemTotal_bytes")
    avail = value(second, "node_memory_MemAvailable_bytes")
    assert events["memory_percent"] == pytest.approx(100 * (total - avail) / total, abs=0.5)
    assert value(second, "node_uname_info", nodename="rack1-pi01") == 1


def test_heat_throttles_and_the_since_boot_bits_stay_until_reboot() -> None:
    clock = Clock()
    pi = SimulatedPi("rack1-pi02", clock=clock)
    assert pi.events()["throttled"] == 0
    pi.pinned_temperature = THROTTLE_AT + 5
    events = pi.events()
    assert events["temperature_celsius"] == THROTTLE_AT + 5
    assert events["throttled"] == 0x60006
    fams = pi.collect()
    assert value(fams, "rpi_throttle_condition", condition="throttled", scope="now") == 1
    assert value(fams, "node_hwmon_temp_celsius", chip="thermal_thermal_zone0") == THROTTLE_AT + 5
    pi.pinned_temperature = 50.0
    assert pi.events()["throttled"] == 0x60000  # occurred since boot
    pi.under_voltage = True
    assert pi.events()["throttled"] == 0x70001
    pi.boot()
    pi.under_voltage = False
    assert pi.events()["throttled"] == 0


def test_hot_pis_drift_upwards() -> None:
    clock = Clock()
    cool, hot = SimulatedPi("a", clock=clock), SimulatedPi("a", clock=clock, hot=True)
    for _ in range(120):
        clock.now += 10
        cool.advance()
        hot.advance()
    assert hot.soc_temperature > cool.soc_temperature + 15
