"""The real machine as metric families: /proc and /sys read directly, node_exporter's names.

:class:`LinuxNode` is the agent's default source. Each collector is a method that returns
families; :meth:`LinuxNode.collect` runs them all, and one that fails (a file missing on this
kernel, a vcgencmd timeout) is reported as ``node_scrape_collector_success{collector=…} 0``
without failing the scrape. ``proc_root`` and ``sys_root`` let tests point it at fake trees.
Every read goes through a :class:`~piman.monitor.agent.machine.Machine` (this machine unless
one is given): the manager runs these same collectors over files copied from a node over SSH.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from piman.monitor.agent import devices, hwmon, netstat, pi, procfs
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.machine import Machine
from piman.monitor.agent.process import collect_process

__all__ = ["LinuxNode"]

logger = logging.getLogger(__name__)

# /proc/pressure/<resource>, line → metric
_PRESSURE = (
    ("cpu", "some", "node_pressure_cpu_waiting_seconds_total", "waited for CPU time"),
    ("io", "some", "node_pressure_io_waiting_seconds_total", "waited due to IO congestion"),
    ("io", "full", "node_pressure_io_stalled_seconds_total", "stalled due to IO congestion"),
    ("memory", "some", "node_pressure_memory_waiting_seconds_total", "waited for memory"),
    ("memory", "full", "node_pressure_memory_stalled_seconds_total", "stalled due to memory"),
    ("irq", "full", "node_pressure_irq_stalled_seconds_total", "stalled due to IRQ pressure"),
)
_VMSTAT = re.compile(r"^(oom_kill|pgpg|pswp|pg.*fault)")
_PIDS = re.compile(r"^\d+$")


def _gauge(name: str, help_: str, value: float) -> MetricFamily:
    fam = MetricFamily(name, "gauge", help_)
    fam.add(value)
    return fam


def _counter(name: str, help_: str, value: float) -> MetricFamily:
    fam = MetricFamily(name, "counter", help_)
    fam.add(value)
    return fam


class LinuxNode:
    """This machine, read from ``proc_root`` and ``sys_root``; safe to use from several threads.

    ``vcgencmd`` is the program's path; None looks it up on $PATH, ``""`` means none.
    ``root_fs`` is the file system whose usage ``/events`` reports as ``disk_percent``.
    ``machine``, when given, is read instead of this one (``vcgencmd`` is then its own).
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        sys_root: str = "/sys",
        root_fs: str = "/",
        vcgencmd: str | None = None,
        vcgencmd_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        machine: Machine | None = None,
    ) -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.root_fs = root_fs
        self.clock = clock
        if machine is None:
            program = vcgencmd if vcgencmd is not None else pi.find_program("vcgencmd")
            reader = pi.Vcgencmd(program, vcgencmd_timeout) if program else None
            machine = Machine(vcgencmd=reader)
        self.machine = machine
        self.files = machine.files
        self.vcgencmd = machine.vcgencmd
        self.board = pi.read_board_info(proc_root, sys_root, self.files)
        self.ticks = machine.ticks
        self.page_size = machine.page_size
        self._lock = threading.Lock()
        self._pi_cache: tuple[float, pi.PiReadings] | None = None
        self._cpu_ref: tuple[float, procfs.CpuTimes] | None = None
        self._cpu_percent = 0.0
        self._collectors: list[tuple[str, Callable[[], list[MetricFamily]]]] = [
            ("cpu", self._cpu),
            ("loadavg", self._loadavg),
            ("meminfo", self._meminfo),
            ("filesystem", self._filesystem),
            ("netdev", self._netdev),
            ("diskstats", self._diskstats),
            ("netstat", self._netstat),
            ("sockstat", self._sockstat),
            ("stat", self._stat),
            ("time", self._time),
            ("uname", self._uname),
            ("vmstat", self._vmstat),
            ("filefd", self._filefd),
            ("entropy", self._entropy),
            ("hwmon", lambda: hwmon.collect_hwmon(self.sys_root, self.files)),
            ("thermal_zone", lambda: hwmon.collect_thermal_zones(self.sys_root, self.files)),
        ]
        try:
            self.files.listdir(os.path.join(proc_root, "pressure"))
            self._collectors.append(("pressure", self._pressure))
        except OSError:
            pass
        try:
            self._cpu_ref = (time.monotonic(), self._read_stat().total)
        except OSError:
            self._cpu_ref = None

    # -- helpers -------------------------------------------------------------------------------

    def _proc(self, *parts: str) -> str:
        return self.files.read(os.path.join(self.proc_root, *parts))

    def _read_stat(self) -> procfs.Stat:
        return procfs.parse_stat(self._proc("stat"))

    def _meminfo_values(self) -> dict[str, tuple[int, bool]]:
        return procfs.parse_meminfo(self._proc("meminfo"))

    # -- the collectors ------------------------------------------------------------------------

    def _cpu(self) -> list[MetricFamily]:
        stat = self._read_stat()
        secs = MetricFamily(
            "node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode."
        )
        guest = MetricFamily(
            "node_cpu_guest_seconds_total",
            "counter",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
        )
        tick = self.ticks
        for cpu, times in stat.cpus.items():
            for mode, value in zip(procfs.CPU_MODES, times.modes, strict=True):
                secs.add(value / tick, {"cpu": cpu, "mode": mode})
            guest.add(times.guest / tick, {"cpu": cpu, "mode": "user"})
            guest.add(times.guest_nice / tick, {"cpu": cpu, "mode": "nice"})
        return [secs, guest]

    def _loadavg(self) -> list[MetricFamily]:
        one, five, fifteen = procfs.parse_loadavg(self._proc("loadavg"))
        return [
            _gauge("node_load1", "1m load average.", one),
            _gauge("node_load5", "5m load average.", five),
            _gauge("node_load15", "15m load average.", fifteen),
        ]

    def _meminfo(self) -> list[MetricFamily]:
        out = []
        for key, (value, in_kb) in self._meminfo_values().items():
            name = procfs.meminfo_metric_name(key, in_kb)
            field = name[len("node_memory_") :]
            out.append(
                _gauge(name, f"Memory information field {field}.", value * 1024 if in_kb else value)
            )
        return out

    def _filesystem(self) -> list[MetricFamily]:
        try:
            mounts = self._proc("1", "mounts")
        except OSError:
            mounts = self._proc("self", "mounts")
        return devices.filesystems(mounts, self.machine.statfs)

    def _netdev(self) -> list[MetricFamily]:
        return devices.network(self._proc("net", "dev"), self.sys_root, self.files)

    def _diskstats(self) -> list[MetricFamily]:
        return devices.disks(self._proc("diskstats"))

    def _netstat(self) -> list[MetricFamily]:
        texts = [(self._proc("net", "netstat"), False), (self._proc("net", "snmp"), False)]
        try:
            texts.append((self._proc("net", "snmp6"), True))
        except OSError:  # IPv6 disabled
            pass
        return netstat.netstat_families(*texts)

    def _sockstat(self) -> list[MetricFamily]:
        texts = [self._proc("net", "sockstat")]
        try:
            texts.append(self._proc("net", "sockstat6"))
        except OSError:
            pass
        return netstat.sockstat_families(self.page_size, *texts)

    def _stat(self) -> list[MetricFamily]:
        stat = self._read_stat()
        return [
            _gauge("node_boot_time_seconds", "Node boot time, in unixtime.", stat.boot_time),
            _counter(
                "node_context_switches_total",
                "Total number of context switches.",
                stat.context_switches,
            ),
            _counter("node_forks_total", "Total number of forks.", stat.forks),
            _counter("node_intr_total", "Total number of interrupts serviced.", stat.interrupts),
            _gauge(
                "node_procs_running", "Number of processes in runnable state.", stat.procs_running
            ),
            _gauge(
                "node_procs_blocked",
                "Number of processes blocked waiting for I/O to complete.",
                stat.procs_blocked,
            ),
        ]

    def _time(self) -> list[MetricFamily]:
        return [
            _gauge("node_time_seconds", "System time in seconds since epoch (1970).", self.clock())
        ]

    def _uname(self) -> list[MetricFamily]:
        u = self.machine.uname()
        try:
            domain = self._proc("sys", "kernel", "domainname").strip()
        except OSError:
            domain = "(none)"
        fam = MetricFamily(
            "node_uname_info",
            "gauge",
            "Labeled system information as provided by the uname system call.",
        )
        fam.add(
            1,
            {
                "domainname": domain,
                "machine": u.machine,
                "nodename": u.nodename,
                "release": u.release,
                "sysname": u.sysname,
                "version": u.version,
            },
        )
        return [fam]

    def _vmstat(self) -> list[MetricFamily]:
        values = procfs.parse_vmstat(self._proc("vmstat"))
        return [
            MetricFamily(
                f"node_vmstat_{k}", "untyped", f"/proc/vmstat information field {k}.", [((), v)]
            )
            for k, v in values.items()
            if _VMSTAT.match(k)
        ]

    def _filefd(self) -> list[MetricFamily]:
        allocated, _, maximum = self._proc("sys", "fs", "file-nr").split()[:3]
        return [
            _gauge(
                "node_filefd_allocated", "File descriptor statistics: allocated.", int(allocated)
            ),
            _gauge("node_filefd_maximum", "File descriptor statistics: maximum.", int(maximum)),
        ]

    def _entropy(self) -> list[MetricFamily]:
        avail = int(self._proc("sys", "kernel", "random", "entropy_avail"))
        pool = int(self._proc("sys", "kernel", "random", "poolsize"))
        return [
            _gauge("node_entropy_available_bits", "Bits of available entropy.", avail),
            _gauge("node_entropy_pool_size_bits", "Bits of entropy pool.", pool),
        ]

    def _pressure(self) -> list[MetricFamily]:
        fams = []
        cache: dict[str, dict[str, float]] = {}
        for resource, line, name, what in _PRESSURE:
            if resource not in cache:
                try:
                    cache[resource] = procfs.parse_pressure(self._proc("pressure", resource))
                except OSError:
                    cache[resource] = {}
            if line in cache[resource]:
                fams.append(
                    _counter(
                        name,
                        f"Total time in seconds that processes have {what}",
                        cache[resource][line],
                    )
                )
        return fams

    def _pi(self, max_age: float = 0.0) -> pi.PiReadings | None:
        """vcgencmd readings, reusing ones at most ``max_age`` seconds old."""
        if self.vcgencmd is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._pi_cache
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
        readings = self.vcgencmd.read()
        with self._lock:
            self._pi_cache = (now, readings)
        return readings

    # -- the source interface ------------------------------------------------------------------

    def collect(self) -> list[MetricFamily]:
        """Every family this machine has now, with per-collector success and duration."""
        families: list[MetricFamily] = []
        success = MetricFamily(
            "node_scrape_collector_success",
            "gauge",
            "node_exporter: Whether a collector succeeded.",
        )
        duration = MetricFamily(
            "node_scrape_collector_duration_seconds",
            "gauge",
            "node_exporter: Duration of a collector scrape.",
        )
        for name, collector in self._collectors:
            start = time.perf_counter()
            try:
                families.extend(collector())
                ok = 1
            except (OSError, ValueError, IndexError) as err:
                logger.warning("[collector=%s] failed: %s", name, err)
                ok = 0
            success.add(ok, {"collector": name})
            duration.add(time.perf_counter() - start, {"collector": name})
        if self.vcgencmd is not None or self.board is not None:
            # On a Pi without vcgencmd, or when it fails or hangs, the collector reports 0.
            start = time.perf_counter()
            readings = self._pi()
            families.extend(pi.pi_families(readings, self.board))
            success.add(1 if readings is not None and readings.ok else 0, {"collector": "vcgencmd"})
            duration.add(time.perf_counter() - start, {"collector": "vcgencmd"})
        if self.machine.process:
            families.extend(collect_process())
        families += [success, duration]
        return families

    def events(self) -> dict[str, Any]:
        """The /events snapshot (see :mod:`piman.monitor.agent.app` for the fields)."""
        now = time.monotonic()
        total = self._read_stat().total
        with self._lock:
            ref = self._cpu_ref
            if ref is not None and now - ref[0] >= 0.5:
                self._cpu_percent = procfs.busy_percent(ref[1], total)
                self._cpu_ref = (now, total)
            elif ref is None:
                self._cpu_ref = (now, total)
            cpu_percent = self._cpu_percent
        mem = self._meminfo_values()
        mem_total = mem.get("MemTotal", (0, True))[0]
        mem_avail = mem.get("MemAvailable", (0, True))[0]
        st = self.machine.statvfs(self.root_fs)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        pids = sum(1 for n in self.files.listdir(self.proc_root) if _PIDS.match(n))
        out: dict[str, Any] = {
            "time": self.clock(),
            "cpu_percent": max(0.0, min(100.0, cpu_percent)),
            "memory_percent": round(100.0 * (mem_total - mem_avail) / mem_total, 1)
            if mem_total
            else 0.0,
            "disk_percent": round(100.0 * used / (used + avail), 1) if used + avail else 0.0,
            "num_pids": pids,
        }
        readings = self._pi(max_age=10.0)
        temperature = readings.soc_temperature if readings is not None else None
        if temperature is None:
            temperature = self._board_temperature()
        if temperature is not None:
            out["temperature_celsius"] = temperature
        if readings is not None and readings.throttled is not None:
            out["throttled"] = readings.throttled
        return out

    def _board_temperature(self) -> float | None:
        """The CPU's thermal zone (a zone whose type mentions cpu, else the first), in °C."""
        zones = hwmon.collect_thermal_zones(self.sys_root, self.files)[0].samples
        if not zones:
            return None
        for labels, value in zones:
            if "cpu" in dict(labels).get("type", "").lower():
                return value
        return min(zones, key=lambda s: int(dict(s[0]).get("zone", "0") or 0))[1]
