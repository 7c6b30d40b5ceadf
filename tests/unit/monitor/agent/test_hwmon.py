"""hwmon's ``chip`` label rule and thermal zones, on fake /sys trees laid out like real ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from piman.monitor.agent.collectors import LinuxNode
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.hwmon import chip_label, clean_name, collect_hwmon, collect_thermal_zones


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def pi_sys(root: Path, millideg: int = 47236) -> Path:
    """A Raspberry Pi 4's /sys: cpu_thermal hwmon under thermal_zone0, rpi_volt without device."""
    zone = root / "devices/virtual/thermal/thermal_zone0"
    write(zone / "type", "cpu_thermal\n")
    write(zone / "temp", f"{millideg}\n")
    hw0 = zone / "hwmon0"
    write(hw0 / "name", "cpu_thermal\n")
    write(hw0 / "temp1_input", f"{millideg}\n")
    (hw0 / "device").symlink_to("../../thermal_zone0")
    volt = root / "devices/platform/soc/soc:firmware/raspberrypi-hwmon/hwmon/hwmon1"
    write(volt / "name", "rpi_volt\n")
    write(volt / "in0_lcrit_alarm", "0\n")
    (volt / "device").symlink_to("../../../raspberrypi-hwmon")
    (root / "class/hwmon").mkdir(parents=True)
    (root / "class/thermal").mkdir(parents=True)
    (root / "class/hwmon/hwmon0").symlink_to(os.path.relpath(hw0, root / "class/hwmon"))
    (root / "class/hwmon/hwmon1").symlink_to(os.path.relpath(volt, root / "class/hwmon"))
    (root / "class/thermal/thermal_zone0").symlink_to(os.path.relpath(zone, root / "class/thermal"))
    return root


def by_name(families: list[MetricFamily]) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(dict(labels), v) for labels, v in f.samples] for f in families if f.samples}


def test_pi_chip_is_thermal_thermal_zone0_named_cpu_thermal(tmp_path: Path) -> None:
    fams = by_name(collect_hwmon(str(pi_sys(tmp_path))))
    assert fams["node_hwmon_temp_celsius"] == [
        ({"chip": "thermal_thermal_zone0", "sensor": "temp1"}, 47.236)
    ]
    assert ({"chip": "thermal_thermal_zone0", "chip_name": "cpu_thermal"}, 1) in fams[
        "node_hwmon_chip_names"
    ]
    # the device link's parent directory names the type: platform device raspberrypi-hwmon
    assert ({"chip": "soc:firmware_raspberrypi_hwmon", "chip_name": "rpi_volt"}, 1) in fams[
        "node_hwmon_chip_names"
    ]


def test_chip_without_device_link_takes_its_name_file(tmp_path: Path) -> None:
    hw = tmp_path / "class/hwmon/hwmon3"
    write(hw / "name", "Coretemp-ISA 0000\n")
    assert chip_label(str(hw)) == "coretemp_isa_0000"


def test_chip_without_device_or_name_is_hwmon_n(tmp_path: Path) -> None:
    hw = tmp_path / "class/hwmon/hwmon7"
    write(hw / "temp1_input", "30000\n")
    write(hw / "temp1_crit", "90000\n")
    write(hw / "temp1_label", "Package id 0\n")
    fams = by_name(collect_hwmon(str(tmp_path)))
    assert fams["node_hwmon_temp_celsius"] == [({"chip": "hwmon7", "sensor": "temp1"}, 30.0)]
    assert fams["node_hwmon_temp_crit_celsius"] == [({"chip": "hwmon7", "sensor": "temp1"}, 90.0)]
    assert fams["node_hwmon_sensor_label"] == [
        ({"chip": "hwmon7", "label": "Package id 0", "sensor": "temp1"}, 1)
    ]
    assert "node_hwmon_chip_names" not in fams


def test_old_kernels_keep_sensor_files_under_device(tmp_path: Path) -> None:
    dev = tmp_path / "devices/platform/it87.656"
    write(dev / "fan1_input", "1200\n")
    write(dev / "in0_input", "1100\n")
    hw = tmp_path / "class/hwmon/hwmon2"
    hw.mkdir(parents=True)
    (hw / "device").symlink_to(dev)
    fams = by_name(collect_hwmon(str(tmp_path)))
    assert fams["node_hwmon_fan_rpm"] == [({"chip": "platform_it87_656", "sensor": "fan1"}, 1200.0)]
    assert fams["node_hwmon_in_volts"] == [({"chip": "platform_it87_656", "sensor": "in0"}, 1.1)]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("cpu_thermal", "cpu_thermal"),
        (" NCT6775 \n", "nct6775"),
        ("a-b.c", "a_b_c"),
        ("__x__", "x"),
    ],
)
def test_names_are_cleaned_like_node_exporter(raw: str, clean: str) -> None:
    assert clean_name(raw) == clean


def test_thermal_zones_and_the_events_temperature(tmp_path: Path) -> None:
    sys_root = pi_sys(tmp_path, millideg=81500)
    fams = by_name(collect_thermal_zones(str(sys_root)))
    assert fams["node_thermal_zone_temp"] == [({"type": "cpu_thermal", "zone": "0"}, 81.5)]
    node = LinuxNode(sys_root=str(sys_root), vcgencmd="")
    assert node.events()["temperature_celsius"] == 81.5
    names = {f.name for f in node.collect() if f.samples}
    assert {"node_hwmon_temp_celsius", "node_hwmon_chip_names", "node_thermal_zone_temp"} <= names
