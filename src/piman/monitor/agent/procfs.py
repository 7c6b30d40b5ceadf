"""Parsers for the /proc files the agent reads: text in, plain data out, no I/O.

Each parser takes the file's text (as the kernel writes it) and returns numbers in the kernel's
units; the collectors convert to Prometheus base units. Lines that do not match the expected shape
are skipped, so a kernel that adds a column never breaks a scrape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CPU_MODES",
    "CpuTimes",
    "DiskStats",
    "Mount",
    "Stat",
    "busy_percent",
    "meminfo_metric_name",
    "parse_diskstats",
    "parse_loadavg",
    "parse_meminfo",
    "parse_mounts",
    "parse_netdev",
    "parse_pressure",
    "parse_stat",
    "parse_vmstat",
]

# Column order of a "cpuN" line in /proc/stat (proc(5)); guest and guest_nice are separate.
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """One CPU's times in clock ticks (USER_HZ), by mode, plus guest time."""

    modes: tuple[int, ...]  # in CPU_MODES order
    guest: int = 0
    guest_nice: int = 0

    @property
    def total(self) -> int:
        return sum(self.modes)

    @property
    def idle(self) -> int:
        return self.modes[3] + self.modes[4]  # idle + iowait, as psutil counts them


@dataclass(frozen=True, slots=True)
class Stat:
    """/proc/stat: the aggregate CPU line, each CPU's line and the system-wide counters."""

    total: CpuTimes
    cpus: dict[str, CpuTimes]
    boot_time: int = 0
    context_switches: int = 0
    forks: int = 0
    interrupts: int = 0
    procs_running: int = 0
    procs_blocked: int = 0


def busy_percent(before: CpuTimes, after: CpuTimes) -> float:
    """Percent of CPU time spent busy (not idle or waiting for I/O) between two readings of
    the aggregate line, rounded to 0.1; 0 when no time passed."""
    d_total = after.total - before.total
    d_busy = d_total - (after.idle - before.idle)
    return round(100.0 * d_busy / d_total, 1) if d_total > 0 else 0.0


def _cpu_times(fields: list[str]) -> CpuTimes:
    values = [int(v) for v in fields]
    values += [0] * (10 - len(values))
    return CpuTimes(tuple(values[:8]), values[8], values[9])


def parse_stat(text: str) -> Stat:
    """Parse /proc/stat."""
    total = CpuTimes((0,) * 8)
    cpus: dict[str, CpuTimes] = {}
    counters: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        key = parts[0]
        if key == "cpu":
            total = _cpu_times(parts[1:])
        elif key.startswith("cpu"):
            cpus[key[3:]] = _cpu_times(parts[1:])
        elif key in ("btime", "ctxt", "processes", "intr", "procs_running", "procs_blocked"):
            counters[key] = int(parts[1])
    return Stat(
        total=total,
        cpus=cpus,
        boot_time=counters.get("btime", 0),
        context_switches=counters.get("ctxt", 0),
        forks=counters.get("processes", 0),
        interrupts=counters.get("intr", 0),
        procs_running=counters.get("procs_running", 0),
        procs_blocked=counters.get("procs_blocked", 0),
    )


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """Parse /proc/loadavg: the 1, 5 and 15 minute load averages."""
    parts = text.split()
    return float(parts[0]), float(parts[1]), float(parts[2])


def parse_meminfo(text: str) -> dict[str, tuple[int, bool]]:
    """Parse /proc/meminfo: field → (value, value is in kB). Values in kB are not yet scaled."""
    out: dict[str, tuple[int, bool]] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            out[key] = (int(parts[0]), len(parts) > 1 and parts[1] == "kB")
        except ValueError:
            continue
    return out


def meminfo_metric_name(key: str, in_kb: bool) -> str:
    """node_exporter's name for a meminfo field.

    ``Active(anon)`` in kB → ``node_memory_Active_anon_bytes``; ``HugePages_Total`` (a count)
    → ``node_memory_HugePages_Total``.
    """
    name = "node_memory_" + key.replace("(", "_").replace(")", "")
    return name + "_bytes" if in_kb else name


def parse_vmstat(text: str) -> dict[str, int]:
    """Parse /proc/vmstat into field → value."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_netdev(text: str) -> dict[str, tuple[int, ...]]:
    """Parse /proc/net/dev: device → its 16 counters (8 receive, then 8 transmit)."""
    out: dict[str, tuple[int, ...]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        values = rest.split()
        if len(values) < 16:
            continue
        out[name.strip()] = tuple(int(v) for v in values[:16])
    return out


@dataclass(frozen=True, slots=True)
class DiskStats:
    """One /proc/diskstats line (Documentation/admin-guide/iostats.rst); missing fields are 0."""

    major: int
    minor: int
    device: str
    values: tuple[int, ...]  # the fields after the name, padded to 17


def parse_diskstats(text: str) -> list[DiskStats]:
    """Parse /proc/diskstats."""
    out: list[DiskStats] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 14:
            continue
        values = [int(v) for v in parts[3:20]]
        values += [0] * (17 - len(values))
        out.append(DiskStats(int(parts[0]), int(parts[1]), parts[2], tuple(values)))
    return out


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of /proc/mounts."""

    device: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    """Parse /proc/mounts (spaces in paths are written as ``\\040``)."""
    out: list[Mount] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        out.append(
            Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2], tuple(parts[3].split(",")))
        )
    return out


def parse_pressure(text: str) -> dict[str, float]:
    """Parse a /proc/pressure/* file: ``some`` / ``full`` → total stall time in seconds."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        for item in parts[1:]:
            if item.startswith("total="):
                out[parts[0]] = int(item[6:]) / 1e6
    return out
