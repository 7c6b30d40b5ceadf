"""/proc parsers on text recorded from a Raspberry Pi 4 (Raspberry Pi OS, kernel 6.1)."""

from __future__ import annotations

import pytest

from piman.monitor.agent import procfs

STAT = """\
cpu  96406 0 55293 6836744 6322 0 1640 0 0 0
cpu0 24062 0 14352 1707606 1603 0 1211 0 0 0
cpu1 23858 0 13442 1709833 1523 0 180 0 0 0
cpu2 24302 0 13811 1709499 1651 0 138 0 0 0
cpu3 24183 0 13687 1709806 1544 0 110 0 3 1
intr 13437120 0 10163 1160289 0 0 0 0 0 0
ctxt 24174349
btime 1700000000
processes 52431
procs_running 2
procs_blocked 0
softirq 5893466 1 1192412 2 58712 0 0 14932 2289011 0 2338396
"""

MEMINFO = """\
MemTotal:        3884360 kB
MemFree:         2963812 kB
MemAvailable:    3498724 kB
Active(anon):      14220 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

NETDEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   12345      67    0    0    0     0          0         0    12345      67    0    0    0     0       0          0
  eth0: 98765432  123456    1    2    3     4          5         6 55555555   77777    7    8    9    10      11         12
"""

DISKSTATS = """\
   1       0 ram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 179       0 mmcblk0 12931 5383 1153862 11513 4585 6379 362442 40950 0 25664 52463 0 0 0 0
 179       1 mmcblk0p1 200 1000 10000 100 1 0 1 0 0 120 100 0 0 0 0 10 5
"""

MOUNTS = """\
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
/dev/mmcblk0p1 /boot/firmware vfat rw,relatime,fmask=0022 0 0
/dev/sda1 /mnt/my\\040disk ext4 ro,relatime 0 0
"""


# ruff: noqa: E501 - NETDEV above is the kernel's own layout


def test_stat_gives_per_cpu_ticks_and_system_counters() -> None:
    stat = procfs.parse_stat(STAT)
    assert sorted(stat.cpus) == ["0", "1", "2", "3"]
    assert stat.cpus["0"].modes == (24062, 0, 14352, 1707606, 1603, 0, 1211, 0)
    assert (stat.cpus["3"].guest, stat.cpus["3"].guest_nice) == (3, 1)
    assert stat.total.idle == 6836744 + 6322
    assert (stat.boot_time, stat.context_switches, stat.forks) == (1700000000, 24174349, 52431)
    assert (stat.interrupts, stat.procs_running, stat.procs_blocked) == (13437120, 2, 0)


def test_meminfo_names_follow_node_exporter() -> None:
    mem = procfs.parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == (3884360, True)
    assert mem["HugePages_Total"] == (0, False)
    assert procfs.meminfo_metric_name("Active(anon)", True) == "node_memory_Active_anon_bytes"
    assert procfs.meminfo_metric_name("HugePages_Total", False) == "node_memory_HugePages_Total"


def test_netdev_gives_sixteen_counters_per_device() -> None:
    dev = procfs.parse_netdev(NETDEV)
    assert set(dev) == {"lo", "eth0"}
    assert dev["eth0"][0] == 98765432
    assert dev["eth0"][8] == 55555555
    assert dev["eth0"][13] == 10  # transmit colls


def test_diskstats_pads_old_kernels_to_seventeen_fields() -> None:
    disks = {d.device: d for d in procfs.parse_diskstats(DISKSTATS)}
    assert disks["mmcblk0"].values[2] == 1153862
    assert len(disks["mmcblk0"].values) == 17
    assert disks["mmcblk0"].values[15:] == (0, 0)
    assert disks["mmcblk0p1"].values[15:] == (10, 5)
    assert (disks["mmcblk0"].major, disks["mmcblk0"].minor) == (179, 0)


def test_mounts_unescape_spaces() -> None:
    mounts = procfs.parse_mounts(MOUNTS)
    assert [m.mountpoint for m in mounts] == ["/", "/boot/firmware", "/mnt/my disk"]
    assert "ro" in mounts[2].options


def test_pressure_totals_are_seconds() -> None:
    text = (
        "some avg10=0.60 avg60=0.75 avg300=1.04 total=12412573\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n"
    )
    assert procfs.parse_pressure(text) == pytest.approx({"some": 12.412573, "full": 5e-6})


def test_loadavg_and_vmstat() -> None:
    assert procfs.parse_loadavg("0.10 0.21 0.12 1/234 5678\n") == (0.10, 0.21, 0.12)
    assert procfs.parse_vmstat("pgfault 88\noom_kill 0\nbad line here\n") == {
        "pgfault": 88,
        "oom_kill": 0,
    }
