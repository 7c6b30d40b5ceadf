"""Reinstall throughput: piman's installer vs a PiSeduce-style ``curl | dd`` pipe vs Debian's
``bmaptool copy``, 1 / 8 / 16 nodes at once on loopback; and image serving against nginx.

Usage: ``.venv/bin/python bench/deploy.py [--size-gib 1] [--counts 1 8 16] [--repeat 1]
[--links lo 1gbit] [--quick] [--keep] [--targets DIR] [--json FILE]`` as root, with Debian's
busybox, curl, nginx (nginx-light), bmaptool (bmap-tools), sfdisk, mkfs.vfat, mcopy, mke2fs, and
for a shaped link iproute2's ip and tc. ``--quick``: a 256 MiB image, 1 and 4 at once. About 5
minutes per ``--repeat`` and link on a 2-CPU machine.

Links (``--links``, default ``lo``): ``lo`` is loopback. A rate (``1gbit``, ``300mbit``, any
``tc`` rate) puts each writer in a network namespace of its own, joined to the servers'
namespace by a veth pair whose server end sends through ``tc qdisc tbf rate RATE burst 256kb
latency 50ms``: each node has a link of that rate (a Pi 4's NIC is 1 Gbit/s, a Pi 3B+'s about
300 Mbit/s), the servers' side is not limited (a 10 GbE uplink). With any rate, the whole bench
(servers, loopback rows included) runs in a namespace it creates (``<p>-srv``, the servers at
198.18.255.1; node ``i`` at 198.18.i.2 behind 198.18.i.1), torn down at the end; the host's
network is not touched. curl | dd and bmaptool run over the same links.

The image: a raw disk image (``--size-gib``) with an MBR, a FAT boot partition and an ext4 root
filled with random files (nothing compresses) until 25 % of the image is mapped, imported with
``piman env add`` (which writes ``image.img`` and its bmap 2.0 file, the one bmaptool reads).
The root is made with mke2fs's defaults (``metadata_csum``: block groups flagged
``BLOCK_UNINIT``, whose metadata piman computes as the kernel does, src/piman/deploy/ext4.py).

piman: the real manager (``piman server``) with 16 nodes on a ``driver: manual`` switch. Each
deployment is made with ``POST /api/v1/deployments``; each node fetches its installer command
line over TFTP (``<serial>/cmdline.txt``, the Pi 4 prefix; placeholders for the installer's
``start4.elf`` and kernel stand in for ``piman installer build``: without them the boot tree
does not answer prefixed requests and deployments do not start) and runs the real
``installer.sh`` under busybox sh (a PATH of busybox applets and openssl, what the initramfs
has; ``PIMAN_NO_NET=1``, ``PIMAN_NO_REBOOT=1``) with a file as its disk. Exit 0 means: every
mapped range streamed onto the disk (``wget -O -`` writing into the disk, one request per run
of adjacent ranges), synced, read back and checked (SHA-256, once per range, one openssl per
group of ranges, in the background while the next runs stream), the head (checked before
anything was erased) written last and read back, the result reported.
Then each node fetches ``<serial>/config.txt`` from its own tree, as a freshly installed Pi
does, and the deployment ends ``deployed``. All installers speak from one address (127.0.0.1,
or with shaped links 198.18.i.2 through the servers' namespace), so ``deploy.check_address``
is off.

Anchors, run in the same process tree, against Debian's nginx serving the same file (a hard link
to ``data_dir/environments/bench/image.img``; ``sendfile on``, workers as ``nobody``):
``curl -s URL | dd of=TARGET bs=4M conv=fsync`` (PiSeduce-style: the whole image streamed and
written, no check; ``conv=fsync`` because the other two also make their writes durable before
they exit) and ``bmaptool copy --bmap image.bmap URL TARGET`` (default verification: the SHA-256
of each mapped range as it is read from the stream, not read back; over HTTP bmaptool cannot
seek, so it reads the whole image and drops the unmapped bytes; it fsyncs at the end).

Placement: the targets are files in the work directory (``tempfile``, like the other benches:
/tmp, the machine's disk; ``--targets DIR`` puts them elsewhere, e.g. on tmpfs), preallocated
to the image size once and kept from run to run. Before every run each mapped range of each
target is overwritten with a fill byte (untimed; then ``sync``, so no run flushes another's),
so the check after the run proves that the run wrote it. Kept, not made afresh: on a virtual
machine with free page reporting (this Firecracker VM), the page cache of a deleted file goes
back to the host, and writing fresh page cache then costs a host fault per page. With a new
file every run, that cost was the largest part of every method's time (``perf``, 16 at once: 46
% of both CPUs in the page-cache copy with piman, 37 % with bmaptool) and runs of the same cell
differed by up to 46 %; a real Pi writes its own card through its own memory. The installers'
scratch (``PIMAN_TMP``) is on tmpfs (/dev/shm) when there is one, as ``/tmp`` in the
installer's initramfs is RAM. The table header says where both are.

Columns: ``link``; ``wall`` from the start of the first writer to the exit of the last;
``MB/s/writer`` = image bytes / wall, ``agg`` = writers × image bytes / wall; ``wire/writer`` =
bytes the server sent per writer (piman: ``piman_deploy_streamed_bytes_total`` from /metrics,
bodies only; nginx: ``$bytes_sent`` from its access log, headers included) and ``wire/mapped``
its ratio to the mapped bytes; ``server CPU s/GB`` = user + system time of the manager process
(or of nginx's master and workers) per GB sent; ``writers CPU s`` = user + system time of the
writers and everything they ran (busybox sh, wget, dd, openssl, sha256sum; curl and dd;
bmaptool). ``runs s (load)``: every run's wall time and the 1-minute load average at its start
(other work on the machine shows there). Every target is checked against the bmap after its run
(untimed). Serving: 16 ``curl -o /dev/null`` of the whole image at once from nginx and from
piman's image stream (with sessions from a hello): the serving goal is judged with the same
clients for both servers. Below it, piman's served bytes per second with the 16 installers, and
the most their CPU and the server's allowed on this machine (they share its CPUs; on a rack
each installer runs on its own Pi). Each cell is the median of ``--repeat`` runs; within a row
of the same ``n`` the methods take turns. Before the runs of each ``n``, ``--warmup`` rounds
(default 1) run every method once, untimed: the first run on a new target makes its page cache
(a host fault per page on this VM, see Placement), and the first ``curl | dd`` the cache of its
unmapped part; the warm-up pays for that before anything is timed.

Reading it: on loopback a byte on the wire costs next to nothing, and every writer runs on the
same CPUs as the servers. The goals against the dd pipe come from piman moving a quarter of
the bytes; they show where a link or the disk is the limit, not the writers' CPU. The
installer's customise step needs a loop device and vfat: on a kernel without vfat it is
skipped (and said so in the result), as on this project's machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import random
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # piman's tests: the image builder

from tests.integration.deploy.test_installer_script import busybox_bin
from tests.support import api_token, free_port, free_udp_port
from tests.unit.deploy.test_images import RASPIOS_BOOT, build_image

from piman.deploy import bmap as bmaps
from piman.deploy.images import inspect
from piman.deploy.installer import SOURCES_DIR
from piman.deploy.installer.build import installer_paths
from piman.sim.netboot import tftp_fetch

MIB = 1 << 20
GIB = 1 << 30
PIMAN = [sys.executable, "-m", "piman"]
TOOLS = (
    "busybox", "openssl", "curl", "nginx", "bmaptool", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs"
)  # fmt: skip
MAPPED_SHARE = 0.25
TARGET_FILL = 0x5A  # what every mapped range of a target holds before a run
GOAL_DD, GOAL_BMAPTOOL, GOAL_WIRE, GOAL_NGINX, GOAL_UPLINK = 3.0, 1.0, 1.05, 0.8, 1.25e9
METHODS = ("piman", "curl | dd", "bmaptool")
SERVERS_IP = "198.18.255.1"  # with shaped links: the servers' address, on their namespace's lo
CLONE_NEWNET = 0x40000000


def cpu_seconds(pid: int) -> float:
    """User + system time of a process (all its threads, reaped children included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system time of this script's reaped descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def where(path: Path) -> str:
    """``path`` and what holds it: ``/tmp (ext4 on /dev/vda)``."""
    best = ("", "?", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, kind = line.split()[:3]
        if str(path).startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best[0]):
            best = (mnt, kind, dev)
    return f"{path} ({best[1]} on {best[2]})"


# -- the image -------------------------------------------------------------------------------


def make_image(path: Path, size: int) -> tuple[Path, int]:
    """A Pi-like image of ``size`` bytes whose bmap maps MAPPED_SHARE of it; its mapped bytes.

    The root's files are random bytes; their total is adjusted once after a first build, by the
    metadata (journal, inode tables, FAT) the first build mapped beside them."""
    rng = random.Random(2024)
    boot = {**RASPIOS_BOOT, "start4.elf": rng.randbytes(2_228_224), "fixup4.dat": b"fx"}
    want = int(size * MAPPED_SHARE)
    payload = want - size // 25  # a first guess at the metadata: ~4 % of the image
    mapped = 0
    for _ in range(3):
        path.unlink(missing_ok=True)
        for staging in (path.with_name(path.name + ".boot"), path.with_name(path.name + ".root")):
            shutil.rmtree(staging, ignore_errors=True)
        files = {
            "etc/hostname": b"raspberrypi\n",
            "etc/os-release": b'ID=debian\nVERSION_ID="12"\n',
        }
        left, i = payload, 0
        while left > 0:
            files[f"usr/lib/bench/blob{i:03d}.bin"] = rng.randbytes(min(left, 32 * MIB))
            left, i = left - 32 * MIB, i + 1
        build_image(path, boot, files, root_mib=size // MIB - 17)  # mke2fs's default ext4
        mapped = bmaps.mapped_bytes(bmaps.compute(path, inspect(path)))
        if abs(mapped - want) <= size // 100:
            break
        payload += want - mapped
    for leftover in (path.with_name(path.name + ".boot"), path.with_name(path.name + ".root")):
        shutil.rmtree(leftover, ignore_errors=True)
    return path, mapped


def spans(block_map: bmaps.Bmap) -> Iterator[tuple[bmaps.BmapRange, int, int]]:
    """Each mapped range with its first byte and the byte after its last."""
    size = block_map.block_size
    for r in block_map.ranges:
        yield r, r.first * size, min((r.last + 1) * size, block_map.image_size)


def check_target(target: Path, block_map: bmaps.Bmap) -> None:
    """Every mapped range of ``target`` holds the image's bytes (RuntimeError if not)."""
    with target.open("rb") as f:
        for r, start, end in spans(block_map):
            f.seek(start)
            if hashlib.sha256(f.read(end - start)).hexdigest() != r.sha256:
                raise RuntimeError(f"{target}: blocks {r.first}-{r.last} differ from the image")


# -- processes -------------------------------------------------------------------------------


class Processes:
    """Everything this script starts, ended (by process group) on exit and on Ctrl-C."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.running[:]):
            self.stop(proc)
        # A Ctrl-C inside Popen() can land after the fork, before the process is recorded:
        # end whatever child this process still has, by its id (each leads its own group).
        me = os.getpid()
        for task in Path(f"/proc/{me}/task").iterdir():
            for pid in map(int, (task / "children").read_text().split()):
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


@dataclass
class Run:
    """One run of ``n`` writers (or readers) at once."""

    wall: float
    wire: int  # bytes the server sent
    server_cpu: float
    writers_cpu: float
    retries: int = 0  # installer lines saying it asked again
    load: float = 0.0  # the 1-minute load average at the start


def run_at_once(
    procs: Processes,
    cmds: list[list[str]],
    envs: Sequence[dict[str, str] | None],
    logs: list[Path],
) -> float:
    """Start the commands at once; wall time until the last exits (a thread waits for each, so
    that no wait rounds the time; a watchdog ends them after 30 minutes)."""
    handles = [log.open("wb") for log in logs]
    t0 = time.perf_counter()
    started = [
        procs.start(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        for cmd, env, out in zip(cmds, envs, handles, strict=True)
    ]
    ends: list[float] = []

    def wait(proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        ends.append(time.perf_counter())

    waiters = [threading.Thread(target=wait, args=(p,)) for p in started]
    for w in waiters:
        w.start()

    def kill_all() -> None:
        for proc in started:
            procs.stop(proc, signal.SIGKILL)

    watchdog = threading.Timer(1800, kill_all)
    watchdog.start()
    try:
        for w in waiters:
            w.join()
    finally:
        watchdog.cancel()
        for out in handles:
            out.close()
    for p, log in zip(started, logs, strict=True):
        if p in procs.running:
            procs.running.remove(p)
        if p.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(p.args)} exited {p.returncode}:\n{tail}")  # type: ignore[arg-type]
    return max(ends) - t0


# -- shaped links ----------------------------------------------------------------------------


class Links:
    """Namespaces for shaped links: the servers' ``<p>-srv`` (SERVERS_IP on its lo) and one per
    node, ``<p>-nII`` (198.18.i.2 on eth0, a veth whose peer ``<p>vII`` in ``<p>-srv`` is
    198.18.i.1 and carries the shaping). Made by ``up``, removed by ``down``."""

    def __init__(self, count: int) -> None:
        self.prefix = "pb" + secrets.token_hex(2)
        self.srv = f"{self.prefix}-srv"
        self.nodes = [f"{self.prefix}-n{i:02d}" for i in range(1, count + 1)]
        self.ip = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
        self.tc = shutil.which("tc", path="/usr/sbin:/sbin:/usr/bin:/bin") or "tc"
        self.made: list[str] = []

    def _run(self, *cmd: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")

    def dev(self, number: int) -> str:
        return f"{self.prefix}v{number:02d}"

    def up(self) -> None:
        ip = self.ip
        self._run(ip, "netns", "add", self.srv)
        self.made.append(self.srv)
        self._run(ip, "-n", self.srv, "link", "set", "lo", "up")
        self._run(ip, "-n", self.srv, "addr", "add", f"{SERVERS_IP}/32", "dev", "lo")
        for number, ns in enumerate(self.nodes, 1):
            self._run(ip, "netns", "add", ns)
            self.made.append(ns)
            dev = self.dev(number)
            self._run(ip, "link", "add", dev, "netns", self.srv, "type", "veth",
                      "peer", "name", "eth0", "netns", ns)  # fmt: skip
            self._run(ip, "-n", self.srv, "addr", "add", f"198.18.{number}.1/24", "dev", dev)
            self._run(ip, "-n", self.srv, "link", "set", dev, "up")
            self._run(ip, "-n", ns, "link", "set", "lo", "up")
            self._run(ip, "-n", ns, "addr", "add", f"198.18.{number}.2/24", "dev", "eth0")
            self._run(ip, "-n", ns, "link", "set", "eth0", "up")
            self._run(ip, "-n", ns, "route", "add", "default", "via", f"198.18.{number}.1")

    def enter(self) -> None:
        """This process (and all it starts from now on) joins the servers' namespace."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.srv}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.srv}")
        finally:
            os.close(fd)

    def shape(self, rate: str) -> None:
        """Every node's link: ``rate`` towards the node (what it downloads)."""
        for number in range(1, len(self.nodes) + 1):
            self._run(self.tc, "-n", self.srv, "qdisc", "replace", "dev", self.dev(number),
                      "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms")  # fmt: skip

    def wrap(self, number: int, cmd: list[str]) -> list[str]:
        """``cmd`` run in node ``number``'s namespace."""
        return [self.ip, "netns", "exec", self.nodes[number - 1], *cmd]

    def down(self) -> None:
        for ns in reversed(self.made):
            subprocess.run([self.ip, "netns", "del", ns], capture_output=True, check=False)
        self.made.clear()


# -- nginx -----------------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes auto;
user nobody nogroup;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format bytes '$bytes_sent';
    access_log {dir}/access.log bytes;
    client_body_temp_path {dir}/body;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    server {{
        listen {listen};
        root {root};
    }}
}}
"""


class Nginx:
    """Debian's nginx serving ``root`` on loopback, in the foreground (workers as nobody)."""

    def __init__(self, procs: Processes, work: Path, root: Path, host: str) -> None:
        self.dir = work / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        listen = f"127.0.0.1:{self.port}" if host == "127.0.0.1" else str(self.port)
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, listen=listen, root=root))
        self.proc = procs.start(
            ["nginx", "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        self.writers_url = f"http://{host}:{self.port}"  # what the writers fetch from
        wait_for(lambda: httpx.get(self.url + "/image.img", headers={"Range": "bytes=0-0"}), 206)
        self.log_at = 0

    def pids(self) -> list[int]:
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [self.proc.pid, *map(int, kids)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def sent_since_mark(self) -> int:
        """Bytes sent for the requests logged since the last call."""
        log = self.dir / "access.log"
        with log.open("rb") as f:
            f.seek(self.log_at)
            text = f.read()
        self.log_at += len(text)
        return sum(int(line) for line in text.split())


def wait_for(probe: Callable[[], httpx.Response], status: int = 200, within: float = 30) -> None:
    """Until ``probe`` answers ``status``."""
    deadline = time.monotonic() + within
    answer = None
    while True:
        try:
            answer = probe()
            if answer.status_code == status:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"a server did not come up: {answer and answer.status_code}")
        time.sleep(0.1)


# -- piman -----------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    serial: str
    disk: Path
    home: Path  # the installer's files: its command line, bin/, tmp/
    number: int  # from 1: its namespace with shaped links


class Manager:
    """``piman server`` with ``nodes`` Pi 4s on a manual switch and the ``bench`` environment."""

    def __init__(
        self,
        procs: Processes,
        work: Path,
        targets: Path,
        scratch: Path,
        image: Path,
        count: int,
        host: str,
    ) -> None:
        self.procs = procs
        self.data = work / "data"
        self.http, self.images, self.tftp = free_port(), free_port(), free_udp_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.log = work / "manager.log"
        self.nodes = [
            Node(f"n{i:02d}", f"5e{i:06x}", targets / f"sd{i:02d}.img",
                 scratch / f"n{i:02d}", i)
            for i in range(1, count + 1)
        ]  # fmt: skip
        # loopback: as in the tests (the installers are 127.0.0.1); shaped links: the servers'
        # address, listening on every address of their namespace (its lo included)
        lab = host != "127.0.0.1"
        config = {
            "manager": {
                "address": host if lab else "127.0.0.2",
                "network": "198.18.0.0/15" if lab else "127.0.0.0/8",
                "data_dir": str(self.data),
                "http": f"{'0.0.0.0' if lab else '127.0.0.1'}:{self.http}",
            },
            "tftp": {"listen": f"127.0.0.1:{self.tftp}"},
            "deploy": {
                "image_listen": f"{'0.0.0.0' if lab else '127.0.0.1'}:{self.images}",
                "check_address": False,  # every installer here speaks from 127.0.0.1
                "max_parallel": max(16, count),
                "customise": {"install_agent": False},
            },
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [
                {
                    "name": n.name,
                    "switch": "rack1",
                    "port": i + 1,
                    "ip": f"198.18.{i + 1}.2" if lab else f"127.0.1.{i + 1}",
                    "mac": f"dc:a6:32:00:01:{i + 1:02x}",
                    "serial": n.serial,
                    "model": "pi4",
                    "disk": str(n.disk),
                }
                for i, n in enumerate(self.nodes)
            ],
        }
        self.config = work / "piman.yaml"
        self.config.write_text(yaml.safe_dump(config))
        added = subprocess.run(
            [*PIMAN, "env", "add", str(image), "--name", "bench", "-c", str(self.config)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if added.returncode != 0:
            raise RuntimeError(f"piman env add: {added.stderr}")
        self.image = self.data / "environments" / "bench" / "image.img"
        self.bmap_file = self.data / "environments" / "bench" / "image.bmap"
        self.bmap = bmaps.read(self.bmap_file)
        # Bench-only placeholders for a built installer (`piman installer build`): the boot
        # tree answers a Pi 4's prefixed request (<serial>/cmdline.txt) only when the installer
        # tree holds a start4.elf, and deployments need its kernel to exist. The installer
        # itself runs here as a process, not booted.
        tree = installer_paths(self.data, "arm64")
        tree.root.mkdir(parents=True, exist_ok=True)
        for placeholder in (tree.root / "start4.elf", tree.kernel):
            placeholder.write_bytes(b"placeholder")
        with self.log.open("ab") as out:
            self.proc = procs.start(
                [*PIMAN, "server", "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_for(lambda: httpx.get(self.url + "/healthz"))
        password = (self.data / "initial-admin-password").read_text().strip()
        self.headers = {"Authorization": f"Bearer {api_token(self.url, 'admin', password)}"}

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def streamed(self) -> int:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        found = re.search(r"^piman_deploy_streamed_bytes_total (\S+)$", text, re.M)
        return int(float(found[1])) if found else 0

    def deploy(self, nodes: list[Node]) -> dict[str, int]:
        """New deployments of ``bench``; node name → deployment id."""
        made = httpx.post(
            self.url + "/api/v1/deployments",
            headers=self.headers,
            json={"nodes": [n.name for n in nodes], "environment": "bench"},
            timeout=60,
        )
        if made.status_code != 201:
            raise RuntimeError(f"POST /api/v1/deployments: {made.status_code} {made.text}")
        return {d["node"]: d["id"] for d in made.json()}

    async def _tftp(self, name: str) -> bytes | None:
        got = bytearray()
        size = await tftp_fetch(("127.0.0.1", self.tftp), name, (("blksize", "1468"),), into=got)
        return None if size is None else bytes(got)

    def cmdlines(self, nodes: list[Node], within: float = 60) -> dict[str, bytes]:
        """Each node's installer command line, as its firmware fetches it (Pi 4 prefix)."""

        async def one(node: Node) -> bytes:
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                text = await self._tftp(f"{node.serial}/cmdline.txt")
                if text is not None and b"piman.token=" in text:
                    return text
                await asyncio.sleep(0.2)
            raise RuntimeError(f"{node.name}: the boot tree never served the installer")

        async def every() -> list[bytes]:
            return await asyncio.gather(*(one(n) for n in nodes))

        return dict(zip((n.name for n in nodes), asyncio.run(every()), strict=True))

    def boot_local(self, nodes: list[Node], ids: dict[str, int]) -> None:
        """Each node boots its new system (fetches its own config.txt): deployed."""

        async def every() -> None:
            await asyncio.gather(*(self._tftp(f"{n.serial}/config.txt") for n in nodes))

        asyncio.run(every())
        self.wait_ended(ids, want="deployed")

    def wait_ended(self, ids: dict[str, int], want: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        for ident in ids.values():
            while True:
                d = httpx.get(f"{self.url}/api/v1/deployments/{ident}", headers=self.headers)
                state = d.json()["state"]
                if state == want:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deployment {ident} is {state}, not {want}")
                time.sleep(0.05)

    def cancel(self, ids: dict[str, int]) -> None:
        for ident in ids.values():
            httpx.post(f"{self.url}/api/v1/deployments/{ident}/cancel", headers=self.headers)
        self.wait_ended(ids, want="cancelled")

    def hello(self, token: str, node: Node) -> tuple[str, str]:
        """What an installer's hello gives: (session, image URL)."""
        body = {"node": node.name, "disk": str(node.disk), "disk_bytes": self.bmap.image_size,
                "installer": "1"}  # fmt: skip
        plan = httpx.post(self.url + "/boot/v1/hello", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        plan.raise_for_status()
        fields = dict(line.split(" ", 1) for line in plan.text.splitlines() if " " in line)
        return fields["session"], fields["image"]


def token_of(cmdline: bytes) -> str:
    found = re.search(rb"piman\.token=(\S+)", cmdline)
    assert found is not None
    return found[1].decode()


# -- the runs --------------------------------------------------------------------------------


@dataclass
class Bench:
    procs: Processes
    work: Path
    manager: Manager
    nginx: Nginx
    bin: Path
    size: int
    links: Links | None = None
    link: str = "lo"  # what the writers' link is now: lo, or a tc rate

    def wrap(self, node: Node, cmd: list[str]) -> list[str]:
        """``cmd`` as node ``node`` runs it: behind its shaped link, or on loopback."""
        if self.link == "lo" or self.links is None:
            return cmd
        return self.links.wrap(node.number, cmd)

    def reset_targets(self, nodes: list[Node]) -> None:
        """Every mapped range of each target overwritten with ``TARGET_FILL``, in place; nothing
        dirty left. A target is made once (preallocated to the image size) and kept from run
        to run, with its page cache: see Placement in the module's text."""
        fill = bytes([TARGET_FILL]) * (4 * MIB)
        for node in nodes:
            if not node.disk.exists():
                with node.disk.open("wb") as f:
                    os.posix_fallocate(f.fileno(), 0, self.size)
            with node.disk.open("r+b") as f:
                for _, start, end in spans(self.manager.bmap):
                    f.seek(start)
                    while start < end:
                        start += f.write(fill[: end - start])
        os.sync()

    def piman(self, nodes: list[Node]) -> Run:
        self.reset_targets(nodes)
        ids = self.manager.deploy(nodes)
        lines = self.manager.cmdlines(nodes)
        cmds, envs, logs = [], [], []
        for node in nodes:
            shutil.rmtree(node.home, ignore_errors=True)
            (node.home / "tmp").mkdir(parents=True)
            (node.home / "cmdline").write_bytes(lines[node.name])
            cmds.append(self.wrap(node, [str(self.bin / "sh"), str(SOURCES_DIR / "installer.sh")]))
            envs.append({"PATH": str(self.bin), "PIMAN_CMDLINE": str(node.home / "cmdline"),
                         "PIMAN_NO_NET": "1", "PIMAN_NO_REBOOT": "1",
                         "PIMAN_TMP": str(node.home / "tmp")})  # fmt: skip
            logs.append(self.work / "logs" / f"piman-{node.name}.log")
        load = os.getloadavg()[0]
        wire0, cpu0, kids0 = self.manager.streamed(), self.manager.cpu(), children_cpu()
        wall = run_at_once(self.procs, cmds, envs, logs)
        cpu, kids = self.manager.cpu() - cpu0, children_cpu() - kids0
        wire = self.manager.streamed() - wire0
        retries = sum(log.read_text().count("asking again") + log.read_text().count("going on in")
                      for log in logs)  # fmt: skip
        self.manager.boot_local(nodes, ids)
        for node in nodes:
            check_target(node.disk, self.manager.bmap)
        return Run(wall, wire, cpu, kids, retries, load)

    def anchor(self, nodes: list[Node], command: Callable[[Node], list[str]], label: str) -> Run:
        self.reset_targets(nodes)
        self.nginx.sent_since_mark()
        logs = [self.work / "logs" / f"{label}-{n.name}.log" for n in nodes]
        load = os.getloadavg()[0]
        cpu0, kids0 = self.nginx.cpu(), children_cpu()
        cmds = [self.wrap(n, command(n)) for n in nodes]
        wall = run_at_once(self.procs, cmds, [None] * len(nodes), logs)
        cpu, kids = self.nginx.cpu() - cpu0, children_cpu() - kids0
        wire = self.nginx.sent_since_mark()
        for node in nodes:
            check_target(node.disk, self.manager.bmap)
        return Run(wall, wire, cpu, kids, load=load)

    def dd_pipe(self, nodes: list[Node]) -> Run:
        url = self.nginx.writers_url + "/image.img"

        def command(node: Node) -> list[str]:
            pipe = f"curl -sSf {url} | dd of={node.disk} bs=4M conv=fsync status=none"
            return ["bash", "-o", "pipefail", "-c", pipe]

        return self.anchor(nodes, command, "dd")

    def bmaptool(self, nodes: list[Node]) -> Run:
        url = self.nginx.writers_url + "/image.img"

        def command(node: Node) -> list[str]:
            return ["bmaptool", "-q", "copy", "--bmap", str(self.manager.bmap_file), url,
                    str(node.disk)]  # fmt: skip

        return self.anchor(nodes, command, "bmaptool")

    def serve_nginx(self, count: int) -> Run:
        """``count`` curl -o /dev/null of the whole image at once from nginx."""
        url = self.nginx.url + "/image.img"
        self.nginx.sent_since_mark()
        logs = [self.work / "logs" / f"serve-nginx-{i}.log" for i in range(count)]
        cpu0, kids0 = self.nginx.cpu(), children_cpu()
        cmds = [["curl", "-sSf", "-o", "/dev/null", url] for _ in range(count)]
        wall = run_at_once(self.procs, cmds, [None] * count, logs)
        cpu, kids = self.nginx.cpu() - cpu0, children_cpu() - kids0
        return Run(wall, self.nginx.sent_since_mark(), cpu, kids)

    def serve_piman(self, nodes: list[Node]) -> Run:
        """As many curl -o /dev/null of the whole image from piman's image stream, each with
        the session of a hello; the deployments are cancelled afterwards."""
        ids = self.manager.deploy(nodes)
        lines = self.manager.cmdlines(nodes)
        cmds = []
        for node in nodes:
            session, url = self.manager.hello(token_of(lines[node.name]), node)
            cmds.append(["curl", "-sS", "-f", "-o", "/dev/null", "-H",
                         f"Authorization: Bearer {session}", url])  # fmt: skip
        logs = [self.work / "logs" / f"serve-piman-{n.name}.log" for n in nodes]
        wire0, cpu0, kids0 = self.manager.streamed(), self.manager.cpu(), children_cpu()
        wall = run_at_once(self.procs, cmds, [None] * len(nodes), logs)
        cpu, kids = self.manager.cpu() - cpu0, children_cpu() - kids0
        wire = self.manager.streamed() - wire0
        self.manager.cancel(ids)
        return Run(wall, wire, cpu, kids)


# -- the table -------------------------------------------------------------------------------


@dataclass
class Cell:
    link: str
    method: str
    n: int
    runs: list[Run] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(float(getattr(r, key)) for r in self.runs)


def row(cell: Cell, size: int, mapped: int) -> dict[str, Any]:
    wall, wire = cell.median("wall"), cell.median("wire")
    cpu = cell.median("server_cpu")
    return {
        "link": cell.link,
        "method": cell.method,
        "n": cell.n,
        "wall_s": round(wall, 3),
        "best_wall_s": round(min(r.wall for r in cell.runs), 3),
        "mb_s_per_writer": round(size / wall / 1e6, 1),
        "mb_s_aggregate": round(cell.n * size / wall / 1e6, 1),
        "wire_bytes_per_writer": int(wire / cell.n),
        "wire_per_mapped": round(wire / cell.n / mapped, 4),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_s_per_gb": round(cpu / (wire / 1e9), 3) if wire else None,
        "writers_cpu_s": round(cell.median("writers_cpu"), 2),
        "installer_retries": int(cell.median("retries")),
        "runs": [asdict(r) for r in cell.runs],
    }


def print_table(report: dict[str, Any]) -> None:
    meta = report["setup"]
    print()
    print(f"image {meta['image_bytes'] / GIB:.2f} GiB, mapped {meta['mapped_bytes'] / MIB:.1f} "
          f"MiB ({meta['mapped_share'] * 100:.1f} %), {meta['ranges']} ranges; "
          f"median of {meta['repeat']} run(s) after {meta.get('warmup', 0)} warm-up round(s); "
          f"{meta['cpus']} CPUs")  # fmt: skip
    print(f"targets: {meta['targets']}; installer scratch: {meta['scratch']}")
    print("servers: piman's image stream (server CPU: the whole manager process, API and TFTP "
          f"included) / Debian nginx {meta['nginx']} (sendfile on, {meta['nginx_workers']} "
          "workers)")  # fmt: skip
    start, end = meta["load_average_1min"]
    print(
        f"load average (1 min) at start {start:.2f}, at end {end:.2f}"
        + ("  (other work on this machine: the figures are noisy)" if start > 0.5 else "")
    )
    print()
    head = (f"{'link':7s} {'method':10s} {'n':>3s} {'wall s':>7s} {'MB/s/writer':>11s} "
            f"{'MB/s agg':>9s} {'wire MB/wr':>10s} {'wire/mapped':>11s} "
            f"{'srv CPU s/GB':>12s} {'writers CPU s':>13s}  runs s (load)")  # fmt: skip
    print(head)
    for r in report["rows"]:
        per_gb = "-" if r["server_cpu_s_per_gb"] is None else f"{r['server_cpu_s_per_gb']:.3f}"
        retried = f"  ({r['installer_retries']} retries)" if r["installer_retries"] else ""
        runs = " ".join(f"{x['wall']:.2f}({x['load']:.0f})" for x in r["runs"])
        print(f"{r['link']:7s} {r['method']:10s} {r['n']:3d} {r['wall_s']:7.2f} "
              f"{r['mb_s_per_writer']:11.1f} {r['mb_s_aggregate']:9.1f} "
              f"{r['wire_bytes_per_writer'] / 1e6:10.1f} {r['wire_per_mapped']:11.3f} "
              f"{per_gb:>12s} {r['writers_cpu_s']:13.1f}  {runs}{retried}")  # fmt: skip
    print()
    print("piman against the anchors (ratio = anchor wall / piman wall; > 1: piman faster)")
    goals = (f"≥{GOAL_DD}", f"≥{GOAL_BMAPTOOL}", f"≤{GOAL_WIRE}")
    print(f"{'link':7s} {'n':>3s} {'×curl|dd':>9s} {goals[0]:>7s} {'×bmaptool':>10s} "
          f"{goals[1]:>7s} {'wire/mapped':>11s} {goals[2]:>7s}")  # fmt: skip
    for g in report["goals"]["per_n"]:
        print(f"{g['link']:7s} {g['n']:3d} {g['x_dd']:9.2f} {verdict(g['met_dd']):>7s} "
              f"{g['x_bmaptool']:10.2f} {verdict(g['met_bmaptool']):>7s} "
              f"{g['wire_per_mapped']:11.3f} {verdict(g['met_wire']):>7s}")  # fmt: skip
    s = report["goals"]["serving"]
    print()
    print(f"image serving, {s['n']} at once (GB/s = bytes sent / wall; CPU of the server)")
    print(f"{'server and clients':40s} {'wall s':>7s} {'GB/s':>6s} {'CPU s/GB':>9s}")
    for label, key in (("nginx, curl -o /dev/null", "nginx_curl"),
                       ("piman image stream, curl -o /dev/null", "piman_curl"),
                       ("piman image stream, installers", "piman_installers")):  # fmt: skip
        v = s[key]
        print(f"{label:40s} {v['wall_s']:7.2f} {v['gb_s']:6.2f} {v['cpu_s_per_gb']:9.3f}")
    print(f"goal: at least min({GOAL_NGINX} × nginx, {GOAL_UPLINK / 1e9} GB/s) = "
          f"{s['goal_gb_s']:.2f} GB/s, with the same 16 curl clients: piman "
          f"{s['piman_curl']['gb_s']:.2f} ({verdict(s['met_curl'])})")  # fmt: skip
    cap = s["installers_cpu_cap_gb_s"]
    print(f"the {s['n']} installers drew {s['piman_installers']['gb_s']:.2f} GB/s: they share "
          f"{os.cpu_count()} CPUs with the server, whose CPU and theirs allow at most "
          f"{cap:.2f} GB/s here (bytes / ((writers' + server CPU s) / CPUs)); on a rack each "
          "installer runs on its own Pi")  # fmt: skip


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def serving(run: Run) -> dict[str, float]:
    return {"wall_s": round(run.wall, 3), "gb_s": round(run.wire / run.wall / 1e9, 3),
            "cpu_s_per_gb": round(run.server_cpu / (run.wire / 1e9), 3)}  # fmt: skip


def cpu_cap(run: Run) -> float:
    """The most GB/s the run's CPU allowed: bytes sent / (CPU seconds of the writers and the
    server spread over every CPU of the machine)."""
    return run.wire / 1e9 / ((run.writers_cpu + run.server_cpu) / (os.cpu_count() or 1))


def interrupted(signum: int, _frame: object) -> None:
    """Ctrl-C or SIGTERM: raise, so that ``finally`` stops every process and removes files."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="image size (GiB)")
    parser.add_argument("--counts", type=int, nargs="*", default=[1, 8, 16])
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds of every method before each n"
    )
    parser.add_argument("--quick", action="store_true", help="256 MiB image, 1 and 4 at once")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--targets", type=Path, help="where the target files go (default: the work directory)"
    )
    parser.add_argument("--json", type=Path, help="write the table here as JSON")
    parser.add_argument(
        "--links", nargs="*", default=["lo"], help="lo and/or tc rates (1gbit): see above"
    )
    args = parser.parse_args()
    path = os.environ["PATH"] + ":/usr/sbin:/sbin"
    missing = [t for t in TOOLS if shutil.which(t, path=path) is None]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (Debian: busybox openssl curl nginx-light "
                         "bmap-tools fdisk dosfstools mtools e2fsprogs)")  # fmt: skip
    os.environ["PATH"] = path
    size = 256 * MIB if args.quick else int(args.size_gib * GIB) // MIB * MIB
    counts = [1, 4] if args.quick else sorted(set(args.counts))
    work = Path(tempfile.mkdtemp(prefix="piman-bench-deploy-"))
    shm = Path("/dev/shm")
    scratch = Path(
        tempfile.mkdtemp(prefix="piman-bench-deploy-", dir=shm if shm.is_dir() else work)
    )
    targets = Path(tempfile.mkdtemp(prefix="piman-bench-targets-", dir=args.targets or work))
    procs = Processes()
    links = Links(max(counts)) if any(link != "lo" for link in args.links) else None
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: asyncio.run would take it over
        signal.signal(sig, interrupted)
    try:
        if links is not None:
            links.up()
            links.enter()  # before anything starts: every server runs in <p>-srv
        report = run(
            procs, work, targets, scratch, size, counts, args.repeat, args.warmup, args.links, links
        )
        print_table(report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        procs.stop_all()
        if links is not None:
            links.down()
        shutil.rmtree(scratch, ignore_errors=True)
        if args.targets:
            shutil.rmtree(targets, ignore_errors=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(
    procs: Processes,
    work: Path,
    targets: Path,
    scratch: Path,
    size: int,
    counts: list[int],
    repeat: int,
    warmup: int,
    link_names: list[str],
    links: Links | None,
) -> dict[str, Any]:
    """Set up the image, the manager and nginx; measure; the report."""
    (work / "logs").mkdir()
    load_at_start = os.getloadavg()[0]
    print(f"building a {size / GIB:.2f} GiB image in {work} …", flush=True)
    image, _ = make_image(work / "bench.img", size)
    host = "127.0.0.1" if links is None else SERVERS_IP
    manager = Manager(procs, work, targets, scratch, image, max(counts), host)
    image.unlink()  # the manager holds its own copy
    www = work / "www"
    www.mkdir()
    os.link(manager.image, www / "image.img")  # the same file (inode) nginx serves
    for readable in (work, www):  # nginx's workers run as nobody
        readable.chmod(0o755)
    nginx = Nginx(procs, work, www, host)
    bench = Bench(procs, work, manager, nginx, busybox_bin(work / "bin"), size, links)
    with (www / "image.img").open("rb") as f:  # warm the page cache for every server alike
        while f.read(16 * MIB):
            pass
    cells, serve = measure(bench, counts, repeat, warmup, link_names)
    nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    setup = {
        "image_bytes": size,
        "mapped_bytes": bmaps.mapped_bytes(manager.bmap),
        "mapped_share": round(bmaps.mapped_bytes(manager.bmap) / size, 4),
        "ranges": len(manager.bmap.ranges),
        "repeat": repeat,
        "warmup": warmup,
        "cpus": len(os.sched_getaffinity(0)),
        "targets": where(targets),
        "scratch": where(scratch),
        "nginx": nginx_version.strip().rsplit("/", 1)[-1],
        "nginx_workers": len(nginx.pids()) - 1,
        "load_average_1min": [load_at_start, os.getloadavg()[0]],
        "links": link_names,
    }
    return report(setup, cells, serve, counts, link_names)


def measure(
    bench: Bench, counts: list[int], repeat: int, warmup: int, link_names: list[str]
) -> tuple[dict[tuple[str, str, int], Cell], dict[str, list[Run]]]:
    """Every method at every count on every link, taking turns; then serving (loopback) at the
    largest count."""
    cells: dict[tuple[str, str, int], Cell] = {}
    runners = {"piman": bench.piman, "curl | dd": bench.dd_pipe, "bmaptool": bench.bmaptool}
    for link in link_names:
        bench.link = link
        if link != "lo" and bench.links is not None:
            bench.links.shape(link)
        for n in counts:
            nodes = bench.manager.nodes[:n]
            for _ in range(warmup):  # untimed: every method once, so none runs first cold
                for method in METHODS:
                    result = runners[method](nodes)
                    print(f"  {link} {method} x{n}: {result.wall:.2f} s (warm-up, not counted)",
                          flush=True)  # fmt: skip
            for r in range(repeat):
                for method in METHODS[r % 3 :] + METHODS[: r % 3]:
                    result = runners[method](nodes)
                    cell = cells.setdefault((link, method, n), Cell(link, method, n))
                    cell.runs.append(result)
                    print(f"  {link} {method} x{n}: {result.wall:.2f} s, "
                          f"{result.wire / 1e6:.0f} MB sent, load {result.load:.1f}",
                          flush=True)  # fmt: skip
    bench.link = "lo"
    top = max(counts)
    serve: dict[str, list[Run]] = {"nginx_curl": [], "piman_curl": []}
    for r in range(repeat):
        for key in ("nginx_curl", "piman_curl")[r % 2 :] + ("nginx_curl", "piman_curl")[: r % 2]:
            if key == "nginx_curl":
                got = bench.serve_nginx(top)
            else:
                got = bench.serve_piman(bench.manager.nodes[:top])
            serve[key].append(got)
            print(f"  serving {key} x{top}: {got.wall:.2f} s, "
                  f"{got.wire / got.wall / 1e9:.2f} GB/s", flush=True)  # fmt: skip
    return cells, serve


def report(
    setup: dict[str, Any],
    cells: dict[tuple[str, str, int], Cell],
    serve: dict[str, list[Run]],
    counts: list[int],
    link_names: list[str],
) -> dict[str, Any]:
    """The table as data, with the ratios and the goals."""
    size, mapped = setup["image_bytes"], setup["mapped_bytes"]
    per_n = []
    for link, n in ((link, n) for link in link_names for n in counts):
        p, d, b = (cells[(link, m, n)].median("wall") for m in METHODS)
        wire = cells[(link, "piman", n)].median("wire") / n / mapped
        per_n.append({
            "link": link,
            "n": n,
            "x_dd": round(d / p, 3),
            "x_bmaptool": round(b / p, 3),
            "wire_per_mapped": round(wire, 4),
            "met_dd": d / p >= GOAL_DD,
            "met_bmaptool": b / p >= GOAL_BMAPTOOL,
            "met_wire": wire <= GOAL_WIRE,
        })  # fmt: skip
    top = max(counts)

    def median_run(runs: list[Run]) -> Run:
        return sorted(runs, key=lambda x: x.wall)[len(runs) // 2]

    nginx_rate = serving(median_run(serve["nginx_curl"]))
    piman_rate = serving(median_run(serve["piman_curl"]))
    installers_run = median_run(cells[(link_names[0], "piman", top)].runs)
    installers_rate = serving(installers_run)
    goal = min(GOAL_NGINX * nginx_rate["gb_s"], GOAL_UPLINK / 1e9)
    return {
        "setup": setup,
        "rows": [
            row(cells[(link, m, n)], size, mapped)
            for link in link_names
            for n in counts
            for m in METHODS
        ],
        "goals": {
            "per_n": per_n,
            "serving": {
                "n": top,
                "nginx_curl": nginx_rate,
                "piman_curl": piman_rate,
                "piman_installers": installers_rate,
                "goal_gb_s": round(goal, 3),
                "met_curl": piman_rate["gb_s"] >= goal,
                "installers_cpu_cap_gb_s": round(cpu_cap(installers_run), 3),
            },
        },
    }


if __name__ == "__main__":
    main()
