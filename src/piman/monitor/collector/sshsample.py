"""Agentless monitoring, the node side: one shell command, and its output as the agent's metrics.

Theory of operation
-------------------
A node marked ``monitor: ssh`` runs no agent. Each scrape the manager runs :data:`COMMAND` on it
over SSH: POSIX ``sh``, nothing installed or written on the node, about ten processes
(``grep``, ``stat``, ``date``, ``getconf`` ×2, ``uname``, ``readlink`` per hwmon chip and
``vcgencmd`` ×5 on a Pi). It prints sections, each opened by a line ``@@piman <section>``:

- ``values``: ``time`` (the node's clock), ``ticks`` (USER_HZ), ``page_size``, ``machine``
  (``uname -m``);
- ``dirs``: directories that exist although no file below them is printed (``/proc/<pid>``
  for the process count, ``/proc/pressure``);
- ``links``: ``path<TAB>target`` of each hwmon chip's ``device`` link (``readlink -f``);
- ``statfs``: ``stat -f`` of every mount point (``%S %b %f %a %c %d %n``: statvfs's
  ``f_frsize f_blocks f_bfree f_bavail f_files f_ffree`` and the path), local file systems
  in one call, others (NFS …) one by one under ``timeout 5``, pseudo file systems the
  filesystem collector leaves out not at all;
- ``vcgencmd``: ``<exit status><TAB><query><TAB><reply>`` per query, when the node has it;
- ``files``: ``grep -saH ''`` of every /proc and /sys file the agent's collectors read
  (``path:line`` per line; of /proc/cpuinfo only the ``Revision`` line);
- ``end``: the output is whole (a cut-off output is refused, never half-parsed).

:func:`parse_output` turns that text into a :class:`NodeSample`, whose :meth:`NodeSample.machine`
is a :class:`~piman.monitor.agent.machine.Machine` over those files; the agent's own
:class:`~piman.monitor.agent.collectors.LinuxNode` then runs over it (:func:`collect`), so the
names, labels, units and exclusions are the agent's by construction. What differs: no
``process_*`` metrics (there is no agent process), collector durations are the manager's parse
time, and a mount point whose path holds a blank (``\\040`` in /proc/mounts) reports
``node_filesystem_device_error 1``.
"""

from __future__ import annotations

import errno
import posixpath
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from piman.errors import ProtocolError
from piman.monitor.agent import pi, procfs
from piman.monitor.agent.collectors import LinuxNode
from piman.monitor.agent.devices import LOCAL_FS
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.machine import Machine
from piman.monitor.agent.pi import PiReadings

__all__ = [
    "COMMAND",
    "MARK",
    "MalformedSample",
    "NodeSample",
    "SampledFiles",
    "SampledStat",
    "SampledUname",
    "collect",
    "parse_output",
    "script",
]

MARK = "@@piman "

# /proc files the collectors read whole (LinuxNode's collectors; keep in step with it).
PROC_FILES = (
    "stat",
    "meminfo",
    "loadavg",
    "vmstat",
    "diskstats",
    "net/dev",
    "net/netstat",
    "net/snmp",
    "net/snmp6",
    "net/sockstat",
    "net/sockstat6",
    "sys/fs/file-nr",
    "sys/kernel/random/entropy_avail",
    "sys/kernel/random/poolsize",
    "sys/kernel/domainname",
    "sys/kernel/ostype",
    "sys/kernel/hostname",
    "sys/kernel/osrelease",
    "sys/kernel/version",
    "pressure/cpu",
    "pressure/io",
    "pressure/memory",
    "pressure/irq",
    "device-tree/model",
)
_SENSORS = ("input", "max", "min", "crit", "label")
SYS_GLOBS = (
    "/sys/class/net/*/operstate",
    "/sys/class/thermal/thermal_zone*/temp",
    "/sys/class/thermal/thermal_zone*/type",
    "/sys/class/hwmon/hwmon*/name",
    *(f"/sys/class/hwmon/hwmon*/*_{s}" for s in _SENSORS),
    *(f"/sys/class/hwmon/hwmon*/device/*_{s}" for s in _SENSORS),
    "/sys/firmware/devicetree/base/model",
)
# Pseudo file systems the filesystem collector leaves out anyway: not even statted.
SKIP_FS = (
    "autofs binfmt_misc bpf cgroup cgroup2 configfs debugfs devpts devtmpfs fusectl hugetlbfs "
    "mqueue nsfs overlay proc pstore rpc_pipefs securityfs selinuxfs sysfs tracefs"
).split()
_STATFS_FORMAT = "%S %b %f %a %c %d %n"


def script() -> str:
    """The POSIX sh program (see the module docstring); run it with ``sh -c``."""
    queries = " ".join(shlex.quote(" ".join(cmd)) for cmd in pi.commands())
    files = " ".join(f"/proc/{f}" for f in PROC_FILES) + ' "$m" ' + " ".join(SYS_GLOBS)
    lines = [
        "export LC_ALL=C",
        "T=; command -v timeout >/dev/null 2>&1 && T=timeout",
        "m=/proc/1/mounts; [ -r $m ] || m=/proc/self/mounts",
        f"echo '{MARK}values'",
        'echo "time $(date +%s.%N)"',
        'echo "ticks $(getconf CLK_TCK 2>/dev/null)"',
        'echo "page_size $(getconf PAGESIZE 2>/dev/null)"',
        'echo "machine $(uname -m)"',
        f"echo '{MARK}dirs'",
        "[ -d /proc/pressure ] && echo /proc/pressure",
        "printf '%s\\n' /proc/[0-9]*",
        f"echo '{MARK}links'",
        "for d in /sys/class/hwmon/hwmon*/device; do",
        '  [ -e "$d" ] && printf \'%s\\t%s\\n\' "$d" "$(readlink -f "$d")"',
        "done",
        f"echo '{MARK}statfs'",
        f"F='{_STATFS_FORMAT}'",
        "set -- /",
        "while read -r dev mp fs rest; do",
        "  case $mp in *\\\\*) continue ;; esac",
        f"  case $fs in {'|'.join(SKIP_FS)}) ;;",
        f'  {"|".join(sorted(LOCAL_FS))}) set -- "$@" "$mp" ;;',
        '  *) ${T:+$T 5} stat -f -c "$F" -- "$mp" 2>/dev/null ;;',
        "  esac",
        'done < "$m"',
        'stat -f -c "$F" -- "$@" 2>/dev/null',
        f"echo '{MARK}vcgencmd'",
        "if command -v vcgencmd >/dev/null 2>&1; then",
        f"  for q in {queries}; do",
        '    r=$(${T:+$T 2} vcgencmd $q 2>/dev/null); printf \'%s\\t%s\\t%s\\n\' $? "$q" "$r"',
        "  done",
        "fi",
        f"echo '{MARK}files'",
        "set --",
        f'for f in {files}; do [ -r "$f" ] && set -- "$@" "$f"; done',
        "[ $# -gt 0 ] && grep -saH '' \"$@\"",
        "grep -sH '^Revision' /proc/cpuinfo",
        f"echo '{MARK}end'",
    ]
    return "\n".join(lines) + "\n"


COMMAND = "sh -c " + shlex.quote(script())
"""What the manager runs on the node: :func:`script` under ``sh -c`` (whatever the login shell)."""


class MalformedSample(ProtocolError):
    """The command's output is not what :data:`COMMAND` prints (cut short, or another program)."""


@dataclass(frozen=True, slots=True)
class SampledStat:
    """One ``stat -f`` line, as the fields of statvfs."""

    f_frsize: int
    f_blocks: int
    f_bfree: int
    f_bavail: int
    f_files: int
    f_ffree: int


@dataclass(frozen=True, slots=True)
class SampledUname:
    sysname: str
    nodename: str
    release: str
    version: str
    machine: str


class SampledFiles:
    """A node's files as printed by the command: a read-only tree (implements NodeFiles)."""

    def __init__(
        self,
        files: dict[str, str],
        dirs: Iterable[str] = (),
        links: dict[str, str] | None = None,
    ) -> None:
        self.files = files
        self.links = links or {}
        self.children: dict[str, set[str]] = {}
        for path in (*files, *self.links, *dirs):
            self._add(path)

    def _add(self, path: str) -> None:
        path = posixpath.normpath(path)
        while path != "/":
            parent, name = posixpath.split(path)
            kids = self.children.setdefault(parent, set())
            if name in kids:
                return
            kids.add(name)
            path = parent

    def read(self, path: str) -> str:
        text = self.files.get(posixpath.normpath(path))
        if text is None:
            raise FileNotFoundError(errno.ENOENT, "not in the sample", path)
        return text

    def listdir(self, path: str) -> list[str]:
        kids = self.children.get(posixpath.normpath(path))
        if kids is None:
            raise NotADirectoryError(errno.ENOTDIR, "not in the sample", path)
        return sorted(kids)

    def realpath(self, path: str) -> str:
        path = posixpath.normpath(path)
        return self.links.get(path, path)

    def exists(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return path in self.files or path in self.links or path in self.children


@dataclass(slots=True)
class NodeSample:
    """One run of the command, parsed."""

    files: SampledFiles
    statfs: dict[str, SampledStat] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    vcgencmd: list[tuple[tuple[str, ...], str | None]] | None = None

    @property
    def time(self) -> float:
        """The node's clock when the command ran (seconds since the epoch)."""
        text = self.values.get("time", "")
        try:
            return float(text)
        except ValueError:
            try:  # a date(1) without %N
                return float(text.partition(".")[0])
            except ValueError:
                raise MalformedSample(f"no node time in the sample ({text!r})") from None

    def _statfs(self, path: str, fstype: str = "") -> SampledStat:
        st = self.statfs.get(path)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no statfs in the sample", path)
        return st

    def _uname(self) -> SampledUname:
        f = self.files

        def kernel(name: str) -> str:
            try:
                return f.read(f"/proc/sys/kernel/{name}").strip()
            except OSError:
                return ""

        return SampledUname(
            kernel("ostype"),
            kernel("hostname"),
            kernel("osrelease"),
            kernel("version"),
            self.values.get("machine", ""),
        )

    def _pi(self) -> PiReadings:
        return pi.readings_from(self.vcgencmd or ())

    def machine(self) -> Machine:
        """The node as the collectors see it."""
        return Machine(
            files=self.files,
            statfs=self._statfs,
            statvfs=self._statfs,
            uname=self._uname,
            ticks=_number(self.values.get("ticks"), 100.0),
            page_size=int(_number(self.values.get("page_size"), 4096.0)),
            vcgencmd=_Replies(self) if self.vcgencmd is not None else None,
            process=False,
        )


class _Replies:
    def __init__(self, sample: NodeSample) -> None:
        self.sample = sample

    def read(self) -> PiReadings:
        return self.sample._pi()


def _number(text: str | None, default: float) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if value > 0 else default


def _statfs_line(line: str) -> tuple[str, SampledStat] | None:
    parts = line.split(" ", 6)
    if len(parts) != 7:
        return None
    try:
        numbers = [int(p) for p in parts[:6]]
    except ValueError:
        return None
    return parts[6], SampledStat(*numbers)


def parse_output(text: str) -> NodeSample:
    """The command's output as a :class:`NodeSample`; MalformedSample if it is not whole."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.split("\n"):
        if line.startswith(MARK):
            current = sections.setdefault(line[len(MARK) :].strip(), [])
            continue
        if current is not None:
            current.append(line)
    if "end" not in sections or "files" not in sections:
        raise MalformedSample("the sample is cut short (no end mark): output limit or a crash?")
    files: dict[str, list[str]] = {}
    for line in sections["files"]:
        path, sep, content = line.partition(":")
        if sep and path.startswith("/"):
            files.setdefault(path, []).append(content)
    links: dict[str, str] = {}
    for line in sections.get("links", []):
        path, sep, target = line.partition("\t")
        if sep and target:
            links[posixpath.normpath(path)] = target
    dirs = [d for d in sections.get("dirs", []) if d.startswith("/") and "*" not in d]
    sample = NodeSample(
        SampledFiles({p: "\n".join(lines) + "\n" for p, lines in files.items()}, dirs, links)
    )
    for line in sections.get("values", []):
        key, _, value = line.partition(" ")
        if key:
            sample.values[key] = value.strip()
    for line in sections.get("statfs", []):
        parsed = _statfs_line(line)
        if parsed is not None:
            sample.statfs.setdefault(parsed[0], parsed[1])
    replies = [line.split("\t", 2) for line in sections.get("vcgencmd", []) if line]
    if replies:
        sample.vcgencmd = [
            (tuple(r[1].split()), r[2] if r[0] == "0" else None) for r in replies if len(r) == 3
        ]
    return sample


def collect(
    sample: NodeSample, previous: procfs.CpuTimes | None = None
) -> tuple[list[MetricFamily], dict[str, Any] | None, procfs.CpuTimes | None]:
    """The agent's families and ``/events`` snapshot for a sample, with the aggregate CPU times
    to pass as ``previous`` next time (``cpu_percent`` is the busy share between the two)."""
    node_time = sample.time
    node = LinuxNode(machine=sample.machine(), clock=lambda: node_time)
    families = node.collect()
    try:
        total: procfs.CpuTimes | None = procfs.parse_stat(sample.files.read("/proc/stat")).total
    except (OSError, ValueError, IndexError):
        total = None
    events: dict[str, Any] | None
    try:
        events = node.events()
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        events = None
    if events is not None:
        busy = procfs.busy_percent(previous, total) if previous and total else 0.0
        events["cpu_percent"] = max(0.0, min(100.0, busy))
    return families, events, total
