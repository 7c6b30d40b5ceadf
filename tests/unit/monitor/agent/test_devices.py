"""File systems, disks and network devices from recorded /proc text."""

from __future__ import annotations

import os
import threading
import time

from piman.monitor.agent.devices import StatFs, disks, filesystems, network
from piman.monitor.agent.exposition import MetricFamily

MOUNTS = """\
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
proc /proc proc rw 0 0
tmpfs /run tmpfs rw 0 0
/dev/mmcblk0p1 /boot/firmware vfat ro,relatime 0 0
server:/export /data/nfs nfs4 rw,relatime 0 0
/dev/mmcblk0p2 / ext4 rw,noatime 0 0
"""


def by_name(fams: list[MetricFamily]) -> dict[str, dict[str, float]]:
    """name → {first label value: value}"""
    return {f.name: {next(iter(dict(k).values()), ""): v for k, v in f.samples} for f in fams}


def test_excluded_and_duplicate_mounts_are_left_out() -> None:
    local = os.statvfs("/")
    fams = by_name(filesystems(MOUNTS, StatFs(stat=lambda path: local)))
    assert set(fams["node_filesystem_size_bytes"]) == {
        "/dev/mmcblk0p2",
        "/dev/mmcblk0p1",
        "server:/export",
    }
    assert fams["node_filesystem_readonly"] == {
        "/dev/mmcblk0p2": 0,
        "/dev/mmcblk0p1": 1,
        "server:/export": 0,
    }
    assert fams["node_filesystem_size_bytes"]["/dev/mmcblk0p2"] == local.f_blocks * local.f_frsize


def test_a_hung_nfs_statvfs_is_skipped_and_not_retried_while_stuck() -> None:
    release = threading.Event()
    calls: list[str] = []
    local = os.statvfs("/")

    def stat(path: str) -> os.statvfs_result:
        calls.append(path)
        if path == "/data/nfs":
            release.wait(10)
        return local

    statfs = StatFs(timeout=0.2, stat=stat)
    try:
        for _ in range(3):
            fams = by_name(filesystems(MOUNTS, statfs))
            assert fams["node_filesystem_device_error"] == {
                "/dev/mmcblk0p2": 0,
                "/dev/mmcblk0p1": 0,
                "server:/export": 1,
            }
            assert "server:/export" not in fams["node_filesystem_size_bytes"]
        assert calls.count("/data/nfs") == 1  # one stuck thread, not one per scrape
    finally:
        release.set()
    for _ in range(100):  # the stuck call returns: the next scrape has the mount again
        fams = by_name(filesystems(MOUNTS, statfs))
        if "server:/export" in fams["node_filesystem_size_bytes"]:
            break
        time.sleep(0.02)
    assert fams["node_filesystem_device_error"]["server:/export"] == 0


def test_disks_skip_partitions_of_whole_disks_like_node_exporter() -> None:
    text = (
        "   7 0 loop0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
        "   8 0 sda 100 0 2048 5 0 0 0 0 0 7 5 0 0 0 0 0 0\n"
        "   8 1 sda1 50 0 1024 3 0 0 0 0 0 4 3 0 0 0 0 0 0\n"
        " 179 0 mmcblk0 10 0 8 1000 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    )
    fams = by_name(disks(text))
    assert fams["node_disk_read_bytes_total"] == {"sda": 2048 * 512, "mmcblk0": 8 * 512}
    assert fams["node_disk_read_time_seconds_total"]["mmcblk0"] == 1.0


def test_network_leaves_out_loopback() -> None:
    text = (
        "Inter-|   Receive |  Transmit\n face |bytes ...|bytes ...\n"
        "    lo: 1 2 0 0 0 0 0 0 1 2 0 0 0 0 0 0\n"
        "  eth0: 10 20 0 0 0 0 0 0 30 40 0 0 0 0 0 0\n"
    )
    fams = by_name(network(text, "/nonexistent"))
    assert fams["node_network_receive_bytes_total"] == {"eth0": 10}
    assert fams["node_network_transmit_packets_total"] == {"eth0": 40}
