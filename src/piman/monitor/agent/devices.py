"""Storage and network devices: file systems, block devices and network interfaces.

Names, types and labels are node_exporter's; so are the devices and mounts left out (the
defaults of Debian's prometheus-node-exporter 1.5, which Raspberry Pi OS ships). Each function
takes the text of the /proc file it needs, so tests can feed recorded files.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable

from piman.monitor.agent import procfs
from piman.monitor.agent.exposition import MetricFamily, MetricType
from piman.monitor.agent.files import FsStat, LocalFiles, NodeFiles

__all__ = ["FS_TYPES_EXCLUDED", "LOCAL_FS", "StatFs", "disks", "filesystems", "network"]

logger = logging.getLogger(__name__)

# node_exporter's defaults for the filesystem, diskstats and netdev collectors, as Debian's
# prometheus-node-exporter 1.5 (and so Raspberry Pi OS) ships them.
FS_TYPES_EXCLUDED = re.compile(
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|"
    r"iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|"
    r"erofs|sysfs|tracefs)$"
)
_MOUNTS_EXCLUDED = re.compile(
    r"^/(dev|proc|run|sys|mnt|media|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
_DISKS_EXCLUDED = re.compile(r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
_NETDEV_EXCLUDED = re.compile(r"^lo$")

# /proc/diskstats field index → (name, type, scale, help)
_DISK_FIELDS: tuple[tuple[int, str, MetricType, float, str], ...] = (
    (0, "reads_completed_total", "counter", 1, "The total number of reads completed successfully."),
    (1, "reads_merged_total", "counter", 1, "The total number of reads merged."),
    (2, "read_bytes_total", "counter", 512, "The total number of bytes read successfully."),
    (
        3,
        "read_time_seconds_total",
        "counter",
        1e-3,
        "The total number of seconds spent by all reads.",
    ),
    (
        4,
        "writes_completed_total",
        "counter",
        1,
        "The total number of writes completed successfully.",
    ),
    (5, "writes_merged_total", "counter", 1, "The number of writes merged."),
    (6, "written_bytes_total", "counter", 512, "The total number of bytes written successfully."),
    (
        7,
        "write_time_seconds_total",
        "counter",
        1e-3,
        "The total number of seconds spent by all writes.",
    ),
    (8, "io_now", "gauge", 1, "The number of I/Os currently in progress."),
    (9, "io_time_seconds_total", "counter", 1e-3, "Total seconds spent doing I/Os."),
    (
        10,
        "io_time_weighted_seconds_total",
        "counter",
        1e-3,
        "The weighted # of seconds spent doing I/Os.",
    ),
    (
        11,
        "discards_completed_total",
        "counter",
        1,
        "The total number of discards completed successfully.",
    ),
    (12, "discards_merged_total", "counter", 1, "The total number of discards merged."),
    (
        13,
        "discarded_sectors_total",
        "counter",
        1,
        "The total number of sectors discarded successfully.",
    ),
    (
        14,
        "discard_time_seconds_total",
        "counter",
        1e-3,
        "This is the total number of seconds spent by all discards.",
    ),
    (
        15,
        "flush_requests_total",
        "counter",
        1,
        "The total number of flush requests completed successfully",
    ),
    (
        16,
        "flush_requests_time_seconds_total",
        "counter",
        1e-3,
        "This is the total number of seconds spent by all flush requests.",
    ),
)
_NET_RECEIVE = ("bytes", "packets", "errs", "drop", "fifo", "frame", "compressed", "multicast")
_NET_TRANSMIT = ("bytes", "packets", "errs", "drop", "fifo", "colls", "carrier", "compressed")


# File systems whose statvfs answers from memory; any other (NFS, CIFS, FUSE …) may hang.
LOCAL_FS = frozenset(
    "ext2 ext3 ext4 vfat msdos exfat xfs btrfs f2fs jfs reiserfs ntfs ntfs3 zfs tmpfs ramfs".split()
)


class StatFs:
    """``os.statvfs`` with a deadline for file systems that can hang (a dead NFS server).

    As node_exporter does, a mount whose call is still stuck from an earlier scrape is skipped
    (reported ``device_error 1``) without starting another thread, until that call returns.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        stat: Callable[[str], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.timeout = timeout
        self._stat = stat
        self._lock = threading.Lock()
        self._stuck: set[str] = set()

    def __call__(self, path: str, fstype: str) -> os.statvfs_result | None:
        """The statvfs of ``path``, or None if it is stuck; OSError as statvfs raises it."""
        if fstype in LOCAL_FS:
            return self._stat(path)
        with self._lock:
            if path in self._stuck:
                return None
            self._stuck.add(path)
        outcome: list[os.statvfs_result | OSError] = []
        done = threading.Event()

        def work() -> None:
            try:
                outcome.append(self._stat(path))
            except OSError as err:
                outcome.append(err)
            finally:
                with self._lock:
                    self._stuck.discard(path)
                done.set()

        threading.Thread(target=work, name=f"statvfs {path}", daemon=True).start()
        if not done.wait(self.timeout):
            logger.warning("[filesystem] statvfs(%s) stuck for %.0fs: skipped", path, self.timeout)
            return None
        result = outcome[0]
        if isinstance(result, OSError):
            raise result
        return result


def filesystems(
    mounts: str, statfs: Callable[[str, str], FsStat | None] | None = None
) -> list[MetricFamily]:
    """``node_filesystem_*`` for the mounts in ``mounts`` (/proc/1/mounts); ``statfs(path,
    fstype)`` (default: a :class:`StatFs`) gives a mount's statvfs, None when it is stuck."""
    text = mounts
    statfs = statfs if statfs is not None else StatFs()
    names = {
        "size": ("node_filesystem_size_bytes", "Filesystem size in bytes."),
        "free": ("node_filesystem_free_bytes", "Filesystem free space in bytes."),
        "avail": (
            "node_filesystem_avail_bytes",
            "Filesystem space available to non-root users in bytes.",
        ),
        "files": ("node_filesystem_files", "Filesystem total file nodes."),
        "files_free": ("node_filesystem_files_free", "Filesystem total free file nodes."),
        "readonly": ("node_filesystem_readonly", "Filesystem read-only status."),
        "device_error": (
            "node_filesystem_device_error",
            "Whether an error occurred while getting statistics for the given device.",
        ),
    }
    fams = {k: MetricFamily(n, "gauge", h) for k, (n, h) in names.items()}
    seen: set[str] = set()
    for m in procfs.parse_mounts(text):
        if FS_TYPES_EXCLUDED.match(m.fstype) or _MOUNTS_EXCLUDED.match(m.mountpoint):
            continue
        if m.mountpoint in seen:
            continue
        seen.add(m.mountpoint)
        labels = {"device": m.device, "fstype": m.fstype, "mountpoint": m.mountpoint}
        try:
            st = statfs(m.mountpoint, m.fstype)
        except OSError:
            st = None
        if st is None:
            fams["device_error"].add(1, labels)
            continue
        fams["device_error"].add(0, labels)
        fams["readonly"].add(1 if "ro" in m.options else 0, labels)
        fams["size"].add(st.f_blocks * st.f_frsize, labels)
        fams["free"].add(st.f_bfree * st.f_frsize, labels)
        fams["avail"].add(st.f_bavail * st.f_frsize, labels)
        fams["files"].add(st.f_files, labels)
        fams["files_free"].add(st.f_ffree, labels)
    return list(fams.values())


def network(netdev: str, sys_root: str, files: NodeFiles | None = None) -> list[MetricFamily]:
    """``node_network_*`` from /proc/net/dev's text and ``<sys_root>/class/net`` (read through
    ``files``, default this machine's)."""
    files = files if files is not None else LocalFiles()
    devices = {
        name: values
        for name, values in procfs.parse_netdev(netdev).items()
        if not _NETDEV_EXCLUDED.match(name)
    }
    fams: list[MetricFamily] = []
    for offset, direction, fields in (
        (0, "receive", _NET_RECEIVE),
        (8, "transmit", _NET_TRANSMIT),
    ):
        for i, field in enumerate(fields):
            fam = MetricFamily(
                f"node_network_{direction}_{field}_total",
                "counter",
                f"Network device statistic {direction}_{field}.",
            )
            for device, values in devices.items():
                fam.add(values[offset + i], {"device": device})
            fams.append(fam)
    up = MetricFamily("node_network_up", "gauge", "Value is 1 if operstate is 'up', 0 otherwise.")
    net_class = os.path.join(sys_root, "class", "net")
    try:
        entries = files.listdir(net_class)
    except OSError:
        entries = []
    for device in entries:
        try:
            state = files.read(os.path.join(net_class, device, "operstate")).strip()
        except OSError:
            continue
        up.add(1 if state == "up" else 0, {"device": device})
    fams.append(up)
    return fams


def disks(diskstats: str) -> list[MetricFamily]:
    """``node_disk_*`` from /proc/diskstats' text."""
    disks = [d for d in procfs.parse_diskstats(diskstats) if not _DISKS_EXCLUDED.match(d.device)]
    fams = []
    for index, name, kind, scale, help_ in _DISK_FIELDS:
        fam = MetricFamily(f"node_disk_{name}", kind, help_)
        for d in disks:
            fam.add(d.values[index] * scale, {"device": d.device})
        fams.append(fam)
    info = MetricFamily("node_disk_info", "gauge", "Info of /sys/block/<block_device>.")
    for d in disks:
        info.add(
            1,
            {
                "device": d.device,
                "major": str(d.major),
                "minor": str(d.minor),
                "model": "",
                "path": "",
                "revision": "",
                "serial": "",
                "wwn": "",
            },
        )
    fams.append(info)
    return fams
