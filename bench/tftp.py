"""TFTP throughput: piman vs dnsmasq vs tftpd-hpa on loopback, 1 client and 50 concurrent.

Usage: ``.venv/bin/python bench/tftp.py [--repeat N] [--quick]`` (as root: dnsmasq always
listens on port 69). Files are a Pi 4 boot set of random bytes: start4.elf 2.2 MB, kernel8.img
8 MB and a 30 MB initramfs. Lock-step transfers use curl (``--tftp-blksize``), window transfers
use atftp (``--option "windowsize N"``; neither anchor supports RFC 7440, so windowsize rows
compare piman with itself). Every fetched file is checked by size. All three servers run at
once and the runs of one scenario are interleaved (piman, dnsmasq, tftpd-hpa, rotating), so
that load from elsewhere on the machine hits all alike.

Placement. A lock-step transfer is a ping-pong between two processes, and on a virtual machine
where they run decides more than either program: a wake-up across CPUs costs an inter-processor
interrupt (a VM exit), a wake-up on the same CPU does not. One client is therefore measured
three ways: ``free`` (the scheduler places server and client), ``cross`` (server pinned to CPU 0,
client to CPU 1: the shape of a real network, where the ACK comes from elsewhere) and ``same``
(both on CPU 0: nothing but the two programs' own work). Fifty clients run free, and once
``cross``: the server alone on CPU 0, all fifty clients on CPU 1 (on a 2-CPU machine the clients'
own work is then what limits every server).

piman runs with its defaults, so its data path spins up to 100 µs for each ACK before it
sleeps (``tftp.busy_poll``): it trades a little CPU for the wake-up, and the server CPU table
shows what that costs. With concurrent transfers, lock-step blocks go through piman's C data
path (``tftp.native``, built with piman); the rows with fifty clients also run a fourth server,
piman with ``tftp.native: false``, so that a table shows what the C path brings.

Fifty curl processes on a two-CPU machine use about twice the CPU of the server they fetch
from (exec, a poll loop, a wake-up and a context switch per block each), so the ``x50`` curl
rows measure the clients and the kernel's placement of them nearly as much as the server. The
``tftpload`` rows (``bench/tftpload.c``, compiled here with ``cc``) run fifty lock-step
transfers from one process instead, at a few microseconds per block, each block compared with
the file: the server's own cost per block decides, as with fifty Pis on a LAN. They run free
and ``cross`` (server alone on CPU 0, tftpload on CPU 1), and the server CPU table gives the
server's CPU time per block.

Request latency: the time from a read request (tsize and blksize, as the Pi firmware asks) to
the server's OACK, requests one after the other. A Pi 4 makes some forty requests per boot
(probes included), so this adds to every boot whatever the throughput.

Each cell is the median of ``--repeat`` runs (the best run beside it): wall time until the
last client ends, and the CPU time the server process used (user + system). Ratios are
anchor / piman, so > 1.0 means piman is faster (or cheaper).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FILES = {"start4.elf": 2_228_224, "kernel8.img": 8_388_608, "initramfs8": 30_000_000}

PIMAN_SERVER = """
import asyncio, sys
from pathlib import Path
from piman.config.netboot import TftpSettings
from piman.netboot.tftp.files import RootDirectory
from piman.netboot.tftp.server import TftpServer

async def main() -> None:
    settings = TftpSettings(rate_limit=1e6, mtu=1500, native=sys.argv[3] == "C")
    server = TftpServer(RootDirectory(Path(sys.argv[1])), settings,
                        listen=("127.0.0.1", int(sys.argv[2])))
    await server.serve()

asyncio.run(main())
"""


PY = "piman-python"  # piman with tftp.native: false, for the rows with concurrent transfers


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise SystemExit(f"server exited at start: {' '.join(cmd)}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_tftpload(work: Path) -> Path | None:
    """Compile bench/tftpload.c into ``work``; None (its rows are left out) without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("no C compiler (Debian: build-essential): the tftpload rows are left out")
        return None
    exe = work / "tftpload"
    source = Path(__file__).with_name("tftpload.c")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(source)], check=True)
    return exe


def tftpload(
    exe: Path,
    port: int,
    name: str,
    local: Path,
    blksize: int,
    clients: int,
    pid: int,
    cpu: int | None,
) -> tuple[float, float]:
    """Fifty (``clients``) lock-step transfers from one tftpload process: its wall time (first
    request to last block, every byte checked against ``local``) and the server's CPU time."""
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    cpu0 = cpu_seconds(pid)
    done = subprocess.run(
        [str(exe), "127.0.0.1", str(port), name, str(local), str(blksize), str(clients)],
        capture_output=True, text=True, timeout=300, preexec_fn=pin,
    )  # fmt: skip
    used = cpu_seconds(pid) - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"tftpload on port {port}: {done.stderr.strip()}")
    seconds, nbytes = done.stdout.split()
    if int(nbytes) != clients * local.stat().st_size:
        raise RuntimeError(f"tftpload on port {port}: {nbytes} bytes, expected all of them")
    return float(seconds), used


def curl(port: int, name: str, blksize: int, out: Path) -> list[str]:
    url = f"tftp://127.0.0.1:{port}/{name}"
    cmd = ["curl", "-sS", "-o", str(out), url]
    return [*cmd, "--tftp-blksize", str(blksize)] if blksize != 512 else cmd


def atftp(port: int, name: str, blksize: int, window: int, out: Path) -> list[str]:
    opts = ["--option", f"blksize {blksize}"]
    if window > 1:
        opts += ["--option", f"windowsize {window}"]
    return ["atftp", *opts, "-g", "-r", name, "-l", str(out), "127.0.0.1", str(port)]


PROBE = b"\0\1start4.elf\0octet\0tsize\x000\0blksize\x001468\0"  # as the Pi firmware asks


def request_latency(port: int, count: int) -> list[float]:
    """Seconds from a read request (tsize and blksize, as the Pi firmware sends them) to the
    server's answer (its OACK), one request after the other; each transfer is then ended with
    ERROR 0, as the firmware ends its probes."""
    times = []
    for _ in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            t0 = time.perf_counter()
            sock.sendto(PROBE, ("127.0.0.1", port))
            data, peer = sock.recvfrom(2048)
            times.append(time.perf_counter() - t0)
            if not data.startswith(b"\0\6"):
                raise RuntimeError(f"port {port}: answer {data[:40]!r}, expected an OACK")
            sock.sendto(b"\0\5\0\0probe\0", peer)
    return times


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, reaped children included) of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(
    cmds: list[list[str]], outs: list[Path], size: int, pid: int, cpu: int | None
) -> tuple[float, float]:
    """Run the client commands at once (on CPU ``cpu`` when given): wall time until the last
    ends, server CPU time used."""
    for out in outs:
        out.unlink(missing_ok=True)
    pin = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin)
        for c in cmds
    ]

    # A blocking wait: Popen.wait(timeout) polls with sleeps of up to 50 ms, which would
    # round every wall time up to a 50 ms step. A watchdog kills clients stuck for 300 s.
    def kill_all() -> None:
        for p in procs:
            p.kill()

    watchdog = threading.Timer(300, kill_all)
    watchdog.start()
    try:
        failed = [p for p in procs if p.wait() != 0]
    finally:
        watchdog.cancel()
    elapsed = time.perf_counter() - t0
    if failed:
        err = failed[0].stderr.read() if failed[0].stderr else b""
        raise RuntimeError(f"client failed: {failed[0].args!r}: {err!r}")
    for out in outs:
        if out.stat().st_size != size:
            raise RuntimeError(f"{out}: {out.stat().st_size} bytes, expected {size}")
    for p in procs:
        if p.stderr:
            p.stderr.close()
    return elapsed, cpu_seconds(pid) - cpu0


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of a process onto ``cpus`` (children forked later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


PLACEMENTS = {"free": (None, None), "cross": (0, 1), "same": (0, 0)}  # (server CPU, client CPU)


@dataclass
class Cell:
    runs: list[tuple[float, float]]

    @property
    def wall(self) -> float:
        return statistics.median(r[0] for r in self.runs)

    @property
    def best(self) -> float:
        return min(r[0] for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r[1] for r in self.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer rows")
    args = parser.parse_args()
    for tool in ("curl", "atftp", "dnsmasq", "in.tftpd"):
        if shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin") is None:
            raise SystemExit(f"needs {tool}")
    work = Path(tempfile.mkdtemp(prefix="piman-bench-tftp-"))
    try:
        run(work, args.repeat, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, repeat: int, quick: bool) -> None:
    root = work / "root"
    root.mkdir()
    for name, size in FILES.items():
        (root / name).write_bytes(os.urandom(size))
    outdir = work / "out"
    outdir.mkdir()
    ports = {"piman": free_udp_port(), "dnsmasq": 69, "tftpd-hpa": free_udp_port(),
             PY: free_udp_port()}  # fmt: skip
    servers = {
        "piman": [sys.executable, "-c", PIMAN_SERVER, str(root), str(ports["piman"]), "C"],
        "dnsmasq": [
            "dnsmasq", "--keep-in-foreground", "--port=0", "--enable-tftp",
            f"--tftp-root={root}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--tftp-max=1000", f"--pid-file={work / 'dnsmasq.pid'}", "--conf-file=/dev/null",
            "--user=root",
        ],
        "tftpd-hpa": ["in.tftpd", "-L", "-a", f"127.0.0.1:{ports['tftpd-hpa']}", "-s", str(root),
                      "-u", "root"],
        PY: [sys.executable, "-c", PIMAN_SERVER, str(root), str(ports[PY]), "Python"],
    }  # fmt: skip
    all_cpus = os.sched_getaffinity(0)
    places = ["free", "cross", "same"] if len(all_cpus) >= 2 and {0, 1} <= all_cpus else ["free"]
    singles = [("initramfs8", 512), ("initramfs8", 1024), ("initramfs8", 1468)]
    if not quick:
        singles += [("start4.elf", 1024), ("kernel8.img", 1468)]
    lockstep = [(name, bs, 1, place) for place in places for name, bs in singles]
    lockstep += [("start4.elf", 1468, 50, "free"), ("start4.elf", 1024, 50, "free")]
    if "cross" in places:  # the 50 clients on CPU 1, the server alone on CPU 0
        lockstep += [("start4.elf", 1468, 50, "cross")]
    if not quick:
        lockstep += [("kernel8.img", 1468, 50, "free")]
    windows = [1, 8, 16, 32]
    loads = [("start4.elf", 1468, "free"), ("start4.elf", 1024, "free")]
    if "cross" in places:
        loads += [("start4.elf", 1468, "cross")]
    if not quick:
        loads += [("kernel8.img", 1468, "free")]
    loader = build_tftpload(work)
    if loader is None:
        loads = []  # and the loop below breaks at once: it needs the loader

    cells: dict[tuple[str, str], Cell] = {}
    anchors = ["piman", "dnsmasq", "tftpd-hpa"]
    with contextlib.ExitStack() as stack:
        pids = {name: stack.enter_context(process(cmd)).pid for name, cmd in servers.items()}
        for name, blksize, clients, place in lockstep:
            label = f"{name} bs={blksize} x{clients} {place}"
            server_cpu, client_cpu = PLACEMENTS[place]
            for pid in pids.values():
                pin_process(pid, all_cpus if server_cpu is None else {server_cpu})
            order = anchors + [PY] * (clients > 1)  # one transfer alone: the same code
            runs: dict[str, list[tuple[float, float]]] = {server: [] for server in order}
            for r in range(repeat):  # interleaved, so that load from elsewhere hits all alike
                for server in order[r % len(order) :] + order[: r % len(order)]:
                    outs = [outdir / f"{server}-{i}" for i in range(clients)]
                    cmds = [curl(ports[server], name, blksize, o) for o in outs]
                    runs[server].append(timed(cmds, outs, FILES[name], pids[server], client_cpu))
            for server in order:
                cells[(server, label)] = Cell(runs[server])
            print("  " + label + ": " + ", ".join(
                f"{s} {cells[(s, label)].wall:.3f} s" for s in order), flush=True)  # fmt: skip
        for name, blksize, place in loads:
            if loader is None:
                break
            label = f"{name} bs={blksize} x50 {place} tftpload"
            server_cpu, client_cpu = PLACEMENTS[place]
            for pid in pids.values():
                pin_process(pid, all_cpus if server_cpu is None else {server_cpu})
            order = [*anchors, PY]
            runs = {server: [] for server in order}
            for r in range(3 * repeat):  # interleaved; short runs, so three times as many
                for server in order[r % len(order) :] + order[: r % len(order)]:
                    timing = tftpload(loader, ports[server], name, root / name, blksize, 50,
                                      pids[server], client_cpu)  # fmt: skip
                    runs[server].append(timing)
            for server in order:
                cells[(server, label)] = Cell(runs[server])
            print("  " + label + ": " + ", ".join(
                f"{s} {cells[(s, label)].wall:.3f} s" for s in order), flush=True)  # fmt: skip
        for pid in pids.values():
            pin_process(pid, all_cpus)
        for window in windows:
            for clients in (1, 50) if window in (1, 16) else (1,):
                outs = [outdir / f"w-{i}" for i in range(clients)]
                name = "initramfs8" if clients == 1 else "start4.elf"
                cmds = [atftp(ports["piman"], name, 1468, window, o) for o in outs]
                label = f"{name} bs=1468 ws={window} x{clients} (atftp)"
                cells[("piman", label)] = Cell(
                    [timed(cmds, outs, FILES[name], pids["piman"], None) for _ in range(repeat)]
                )
                print(f"  piman {label}: {cells[('piman', label)].wall:.3f} s", flush=True)
        order = anchors
        latency: dict[str, list[float]] = {server: [] for server in order}
        for r in range(10 * repeat):  # rounds of 20 requests, interleaved
            for server in order[r % 3 :] + order[: r % 3]:
                latency[server] += request_latency(ports[server], 20)

    print()
    print(f"lock-step (curl) wall time, seconds: median of {repeat} runs (best in brackets); "
          "ratio = anchor / piman (> 1: piman faster)")  # fmt: skip
    print(f"{'scenario':30s} {'place':5s} {'dnsmasq':>15s} {'tftpd-hpa':>15s} {'piman':>15s} "
          f"{'×dnsmasq':>9s} {'(best)':>7s} {'×tftpd':>7s}")  # fmt: skip
    for name, blksize, clients, place in lockstep:
        label = f"{name} bs={blksize} x{clients} {place}"
        d, h, p = (cells[(s, label)] for s in ("dnsmasq", "tftpd-hpa", "piman"))
        print(f"{label.rsplit(' ', 1)[0]:30s} {place:5s} "
              + " ".join(f"{c.wall:7.3f} ({c.best:5.3f})" for c in (d, h, p))
              + f" {d.wall / p.wall:9.2f} {d.best / p.best:7.2f}"
              + f" {h.wall / p.wall:7.2f}")  # fmt: skip
    print()
    print("server CPU time (user + system), seconds, median; ratio = dnsmasq / piman")
    print("(in.tftpd forks a child per transfer whose time is not reliably reaped: not shown)")
    print(f"{'scenario':30s} {'place':5s} {'dnsmasq':>8s} {'piman':>8s} {'×dnsmasq':>9s}")
    for name, blksize, clients, place in lockstep:
        label = f"{name} bs={blksize} x{clients} {place}"
        dc, pc = (cells[(s, label)].cpu for s in ("dnsmasq", "piman"))
        rd = f"{dc / pc:.2f}" if pc > 0 else "-"
        print(f"{label.rsplit(' ', 1)[0]:30s} {place:5s} {dc:8.2f} {pc:8.2f} {rd:>9s}")
    if loads:
        print()
        print(f"fifty lock-step transfers from one process (tftpload), wall time in seconds: "
              f"median of {3 * repeat} runs (best in brackets); ratio = anchor / piman; "
              "server CPU per block in µs")  # fmt: skip
        print(f"{'scenario':30s} {'place':5s} {'dnsmasq':>15s} {'tftpd-hpa':>15s} "
              f"{'piman':>15s} {'×dnsmasq':>9s} {'(best)':>7s} {'×tftpd':>7s} "
              f"{'µs/block dnsmasq':>17s} {'piman':>6s}")  # fmt: skip
        for name, blksize, place in loads:
            label = f"{name} bs={blksize} x50 {place} tftpload"
            d, h, p = (cells[(s, label)] for s in ("dnsmasq", "tftpd-hpa", "piman"))
            blocks = 50 * (FILES[name] // blksize + 1)  # the last one short, maybe empty
            print(f"{f'{name} bs={blksize} x50':30s} {place:5s} "
                  + " ".join(f"{c.wall:7.3f} ({c.best:5.3f})" for c in (d, h, p))
                  + f" {d.wall / p.wall:9.2f} {d.best / p.best:7.2f} {h.wall / p.wall:7.2f}"
                  + f" {d.cpu / blocks * 1e6:17.1f} {p.cpu / blocks * 1e6:6.1f}")  # fmt: skip
    print()
    print(
        "piman's data path for concurrent lock-step transfers: C (the default, tftp.native) or "
        "Python (tftp.native: false);\nwall time, median (best in brackets); ratio = Python / C"
    )
    print(f"{'scenario':40s} {'place':5s} {'Python':>15s} {'C':>15s} {'×Python':>8s}")
    rows = [(f"{n} bs={b} x{c}", p, f"{n} bs={b} x{c} {p}") for n, b, c, p in lockstep if c > 1]
    rows += [(f"{n} bs={b} x50 (tftpload)", p, f"{n} bs={b} x50 {p} tftpload") for n, b, p in loads]
    for text, place, label in rows:
        py, c = cells[(PY, label)], cells[("piman", label)]
        print(f"{text:40s} {place:5s} {py.wall:7.3f} ({py.best:5.3f}) {c.wall:7.3f} ({c.best:5.3f})"
              f" {py.wall / c.wall:8.2f}")  # fmt: skip
    print()
    print(f"request to answer (RRQ with tsize and blksize → OACK), {len(latency['piman'])} "
          "requests one after the other, µs; ratio = anchor / piman")  # fmt: skip
    print(f"{'server':10s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'×p50':>6s}")
    p50 = statistics.median(latency["piman"])
    for server in ("dnsmasq", "tftpd-hpa", "piman"):
        q = statistics.quantiles(latency[server], n=100)
        print(f"{server:10s} {q[49] * 1e6:7.0f} {q[89] * 1e6:7.0f} {q[98] * 1e6:7.0f} "
              f"{statistics.median(latency[server]) / p50:6.2f}")  # fmt: skip
    print()
    print(f"{'piman windowsize (RFC 7440), free':44s} {'median s':>8s} {'(best)':>7s} "
          f"{'MB/s':>7s} {'×ws=1':>6s}")  # fmt: skip
    for clients in (1, 50):
        name = "initramfs8" if clients == 1 else "start4.elf"
        base = cells[("piman", f"{name} bs=1468 ws=1 x{clients} (atftp)")]
        for window in windows:
            label = f"{name} bs=1468 ws={window} x{clients} (atftp)"
            if ("piman", label) not in cells:
                continue
            c = cells[("piman", label)]
            mbps = FILES[name] * clients / c.wall / 1e6
            print(f"{label:44s} {c.wall:8.3f} ({c.best:5.3f}) {mbps:7.1f} "
                  f"{base.wall / c.wall:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
