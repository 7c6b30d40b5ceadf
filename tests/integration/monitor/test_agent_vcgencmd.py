"""rpi_* metrics from a vcgencmd faked by a shell script: every throttling bit, failures, hangs."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from piman.monitor.agent.collectors import LinuxNode
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.pi import THROTTLE_BITS
from tests.integration.monitor import running_agent

FAKE = """#!/bin/sh
# A stand-in for Raspberry Pi OS's vcgencmd: replies come from files beside this script.
d=$(dirname "$0")
[ -f "$d/hang" ] && exec sleep 30
[ -f "$d/broken" ] && { echo 'error=1 error_msg="Command not registered"'; exit 255; }
case "$1" in
  get_throttled) echo "throttled=$(cat "$d/mask")" ;;
  measure_temp) echo "temp=$(cat "$d/temp")'C" ;;
  measure_clock)
    case "$2" in arm) echo "frequency(48)=1800404352" ;; core) echo "frequency(1)=500000992" ;;
    *) echo "frequency(0)=0" ;; esac ;;
  measure_volts) echo "volt=0.8600V" ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture
def fake_vcgencmd(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "vcgencmd"
    script.parent.mkdir()
    script.write_text(FAKE)
    script.chmod(0o755)
    (script.parent / "mask").write_text("0x0\n")
    (script.parent / "temp").write_text("48.3\n")
    return script


def samples(families: list[MetricFamily], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for f in families if f.name == name for labels, v in f.samples}


def success(families: list[MetricFamily]) -> float:
    return samples(families, "node_scrape_collector_success")[(("collector", "vcgencmd"),)]


@pytest.mark.parametrize("bit", sorted(THROTTLE_BITS))
def test_each_throttle_bit_reaches_the_metrics(fake_vcgencmd: Path, bit: int) -> None:
    (fake_vcgencmd.parent / "mask").write_text(f"{1 << bit:#x}\n")
    node = LinuxNode(vcgencmd=str(fake_vcgencmd))
    fams = node.collect()
    assert success(fams) == 1
    assert samples(fams, "rpi_throttled_mask") == {(): float(1 << bit)}
    active = [dict(k) for k, v in samples(fams, "rpi_throttle_condition").items() if v == 1]
    condition, scope = THROTTLE_BITS[bit]
    assert active == [{"condition": condition, "scope": scope}]
    assert len(samples(fams, "rpi_throttle_condition")) == 8
    assert node.events()["throttled"] == 1 << bit


def test_clocks_voltages_and_temperature(fake_vcgencmd: Path) -> None:
    fams = LinuxNode(vcgencmd=str(fake_vcgencmd)).collect()
    assert samples(fams, "rpi_soc_temperature_celsius") == {(): 48.3}
    assert samples(fams, "rpi_clock_frequency_hertz") == {
        (("component", "arm"),): 1800404352.0,
        (("component", "core"),): 500000992.0,
    }
    assert samples(fams, "rpi_voltage_volts") == {(("component", "core"),): 0.86}


def test_failing_vcgencmd_reports_collector_failure_not_a_failed_scrape(
    fake_vcgencmd: Path,
) -> None:
    (fake_vcgencmd.parent / "broken").write_text("")
    fams = LinuxNode(vcgencmd=str(fake_vcgencmd)).collect()
    assert success(fams) == 0
    assert samples(fams, "rpi_throttled_mask") == {}
    assert samples(fams, "node_load1")  # the rest of the scrape is there


def test_hung_vcgencmd_is_cut_off_at_its_deadline(fake_vcgencmd: Path) -> None:
    (fake_vcgencmd.parent / "hang").write_text("")
    node = LinuxNode(vcgencmd=str(fake_vcgencmd), vcgencmd_timeout=0.3)
    fams = node.collect()
    assert success(fams) == 0
    assert samples(fams, "node_cpu_seconds_total")
    assert "throttled" not in node.events()


def test_agent_finds_vcgencmd_on_path(fake_vcgencmd: Path) -> None:
    (fake_vcgencmd.parent / "mask").write_text("0x50005\n")
    (fake_vcgencmd.parent / "temp").write_text("81.0\n")
    env = {"PATH": f"{fake_vcgencmd.parent}{os.pathsep}{os.environ['PATH']}"}
    with running_agent(env=env) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/events", timeout=10) as r:
            events = json.loads(r.read())
    assert 'node_scrape_collector_success{collector="vcgencmd"} 1' in text
    assert "rpi_throttled_mask 327685" in text
    assert 'rpi_throttle_condition{condition="under_voltage",scope="now"} 1' in text
    assert 'rpi_throttle_condition{condition="soft_temp_limit",scope="since_boot"} 0' in text
    assert events["throttled"] == 0x50005
    assert events["temperature_celsius"] == 81.0
