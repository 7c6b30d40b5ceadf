"""Temperatures and other sensors from /sys/class/hwmon and /sys/class/thermal.

The ``chip`` label follows node_exporter's rule so that dashboards join on it unchanged:

1. the ``device`` link of ``hwmonN`` resolved; its parent directory's name and its own name,
   each cleaned, joined with ``_`` (a Pi's ``cpu_thermal`` hwmon points at
   ``/sys/devices/virtual/thermal/thermal_zone0``, giving ``thermal_thermal_zone0``);
2. else the cleaned content of its ``name`` file;
3. else ``hwmonN`` itself.

Cleaning lower-cases and turns every character outside ``[a-z0-9:_]`` into ``_``, then trims
``_`` at both ends. ``node_hwmon_chip_names{chip,chip_name}`` carries the cleaned ``name`` file.
``sys_root`` lets tests point the collector at a fake tree, and ``files`` (default: this
machine's) lets the manager run the same code over another machine's files copied over SSH.
"""

from __future__ import annotations

import os
import re

from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.files import LocalFiles, NodeFiles

__all__ = ["chip_label", "clean_name", "collect_hwmon", "collect_thermal_zones"]

_INVALID = re.compile(r"[^a-z0-9:_]")
_SENSOR_FILE = re.compile(r"^(temp|in|fan|curr|power)(\d+)_(input|max|min|crit|label)$")
_LOCAL = LocalFiles()


def clean_name(raw: str) -> str:
    """node_exporter's cleaning of hwmon names (see the module docstring)."""
    return _INVALID.sub("_", raw.strip().lower()).strip("_")


def _read(files: NodeFiles, path: str) -> str | None:
    try:
        return files.read(path).strip()
    except OSError:
        return None


def chip_label(hwmon_dir: str, files: NodeFiles = _LOCAL) -> str:
    """The ``chip`` label of one ``/sys/class/hwmon/hwmonN`` directory."""
    device = os.path.join(hwmon_dir, "device")
    if files.exists(device):
        resolved = files.realpath(device)
        parent, dev_name = os.path.split(resolved.rstrip("/"))
        dev_type = os.path.basename(parent)
        name, kind = clean_name(dev_name), clean_name(dev_type)
        if kind and name:
            return f"{kind}_{name}"
        if name:
            return name
    raw = _read(files, os.path.join(hwmon_dir, "name"))
    if raw:
        cleaned = clean_name(raw)
        if cleaned:
            return cleaned
    return clean_name(os.path.basename(files.realpath(hwmon_dir))) or "hwmon"


def _listdir(files: NodeFiles, path: str) -> list[str]:
    try:
        return files.listdir(path)
    except OSError:
        return []


def _sensor_files(files: NodeFiles, hwmon_dir: str) -> tuple[str, list[str]]:
    """Where this chip's sensor files are: the hwmon directory, or (old kernels) its device."""
    names = _listdir(files, hwmon_dir)
    if any(_SENSOR_FILE.match(n) for n in names):
        return hwmon_dir, names
    device = os.path.join(hwmon_dir, "device")
    return device, _listdir(files, device)


_UNITS = {  # sensor kind → (metric infix, divisor to base unit)
    "temp": ("temp", "celsius", 1000.0),
    "in": ("in", "volts", 1000.0),
    "curr": ("curr", "amps", 1000.0),
    "power": ("power", "watt", 1e6),
    "fan": ("fan", "rpm", 1.0),
}


def collect_hwmon(sys_root: str = "/sys", files: NodeFiles = _LOCAL) -> list[MetricFamily]:
    """``node_hwmon_*`` for every chip under ``<sys_root>/class/hwmon``."""
    base = os.path.join(sys_root, "class", "hwmon")
    families: dict[str, MetricFamily] = {}
    chip_names = MetricFamily(
        "node_hwmon_chip_names", "gauge", "Annotation metric for human-readable chip names"
    )
    labels_fam = MetricFamily("node_hwmon_sensor_label", "gauge", "Label for given chip and sensor")
    for entry in _listdir(files, base):
        hwmon_dir = os.path.join(base, entry)
        chip = chip_label(hwmon_dir, files)
        raw_name = _read(files, os.path.join(hwmon_dir, "name"))
        if raw_name and clean_name(raw_name):
            chip_names.add(1, {"chip": chip, "chip_name": clean_name(raw_name)})
        where, names = _sensor_files(files, hwmon_dir)
        for fname in names:
            m = _SENSOR_FILE.match(fname)
            if m is None:
                continue
            kind, num, item = m.groups()
            sensor = f"{kind}{num}"
            text = _read(files, os.path.join(where, fname))
            if text is None:
                continue
            if item == "label":
                labels_fam.add(1, {"chip": chip, "sensor": sensor, "label": text})
                continue
            infix, unit, divisor = _UNITS[kind]
            suffix = "" if item == "input" else f"_{item}"
            name = f"node_hwmon_{infix}{suffix}_{unit}"
            try:
                value = int(text) / divisor
            except ValueError:
                continue
            fam = families.get(name)
            if fam is None:
                what = "input" if item == "input" else item
                fam = families[name] = MetricFamily(
                    name, "gauge", f"Hardware monitor for {kind} ({what})"
                )
            fam.add(value, {"chip": chip, "sensor": sensor})
    return [chip_names, labels_fam, *families.values()]


def collect_thermal_zones(sys_root: str = "/sys", files: NodeFiles = _LOCAL) -> list[MetricFamily]:
    """``node_thermal_zone_temp{zone,type}`` for every ``thermal_zoneN``."""
    base = os.path.join(sys_root, "class", "thermal")
    fam = MetricFamily("node_thermal_zone_temp", "gauge", "Zone temperature in Celsius")
    for entry in _listdir(files, base):
        if not entry.startswith("thermal_zone"):
            continue
        zone_dir = os.path.join(base, entry)
        temp = _read(files, os.path.join(zone_dir, "temp"))
        kind = _read(files, os.path.join(zone_dir, "type")) or ""
        if temp is None:
            continue
        try:
            value = int(temp) / 1000.0
        except ValueError:
            continue
        fam.add(value, {"type": kind, "zone": entry[len("thermal_zone") :]})
    return [fam]
