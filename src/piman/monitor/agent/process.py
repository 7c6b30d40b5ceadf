"""The agent's own ``process_*`` metrics, as Prometheus client libraries name them.

Read from ``/proc/self`` (proc(5)): ``stat`` for CPU time, start time and memory, ``fd`` for
open descriptors, and the resource limits for ``process_max_fds`` and
``process_virtual_memory_max_bytes`` (the address-space limit; "unlimited" is written as 2^64 - 1,
as node_exporter does).
"""

from __future__ import annotations

import os
import resource

from piman.monitor.agent.exposition import MetricFamily

__all__ = ["collect_process"]

_UNLIMITED = float(2**64 - 1)
_TICKS = float(os.sysconf("SC_CLK_TCK"))
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _boot_time(proc_root: str) -> float:
    with open(os.path.join(proc_root, "stat"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    return 0.0


def _limit(which: int) -> float:
    soft, _ = resource.getrlimit(which)
    return _UNLIMITED if soft == resource.RLIM_INFINITY else float(soft)


def _gauge(name: str, help_: str, value: float) -> MetricFamily:
    fam = MetricFamily(name, "gauge", help_)
    fam.add(value)
    return fam


def collect_process(proc_root: str = "/proc") -> list[MetricFamily]:
    """``process_*`` for the calling process."""
    with open(os.path.join(proc_root, "self", "stat"), encoding="utf-8") as f:
        text = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    start_ticks, vsize, rss_pages = int(fields[19]), int(fields[20]), int(fields[21])
    cpu = MetricFamily(
        "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."
    )
    cpu.add((utime + stime) / _TICKS)
    return [
        cpu,
        _gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            len(os.listdir(os.path.join(proc_root, "self", "fd"))),
        ),
        _gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            _limit(resource.RLIMIT_NOFILE),
        ),
        _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize),
        _gauge(
            "process_virtual_memory_max_bytes",
            "Maximum amount of virtual memory available in bytes.",
            _limit(resource.RLIMIT_AS),
        ),
        _gauge(
            "process_resident_memory_bytes", "Resident memory size in bytes.", rss_pages * _PAGE
        ),
        _gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            _boot_time(proc_root) + start_ticks / _TICKS,
        ),
    ]
