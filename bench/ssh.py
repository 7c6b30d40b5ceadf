"""`uptime` on 50 and 200 nodes over SSH: piman vs Debian's parallel-ssh vs Ansible ad-hoc.

The nodes are one OpenSSH ``sshd`` (``MaxStartups 300:30:600``) in a network namespace of this
process's own, reached as 127.0.0.1 … 127.0.0.N: every address of 127/8 is local, so each target
is a distinct host to every tool (its own TCP connection, key exchange, login, session), while
the machine runs one server for all. The login is the SSH tests' user (``pimanlab``: uid 0,
``/bin/sh``, an empty home, so a session costs what it costs on a Pi, not root's shell start-up
here) with a key pair made for the run (``AuthorizedKeysFile`` in a temporary directory: nothing
of the machine's own SSH setup is read or touched) and host keys known in advance (a known_hosts
file of all N addresses, checked strictly by every tool). Everything is removed after.

Each tool runs as a subprocess, side by side in one run, on the same nodes:

- piman: ``piman ssh run uptime all`` with a configuration of N nodes (``ssh.concurrency`` N),
  a whole CLI process (start-up, store, SSH);
- piman through a running manager: ``POST /api/v1/ssh/run`` (what ``piman ssh run --url`` sends)
  to one ``piman server`` of all the nodes; wall from the request to the stream's last line, CPU
  the manager process's own (``/proc/PID/stat``) over that time;
- parallel-ssh (``parallel-ssh -h HOSTS -p 200 -i uptime``, Debian's pssh 2.3);
- Ansible: ``ansible all -i INV -m command -a uptime -f 50`` (ansible-core from the venv), given
  its fastest settings: pipelining on, the interpreter named (no discovery), ControlPersist.

By default sshd runs on one half of the CPUs and the tools (the manager too) on the other, as on
a fleet, where the nodes' CPUs are not the manager's: a tool's wall time is then its own cost
and the nodes', not its scheduler share among 200 sshd processes (``--no-pin``: shared CPUs).

Measured per run: wall time from exec to exit, and CPU (user + system) of the tool and all its
descendants, from ``getrusage(RUSAGE_CHILDREN)`` deltas. This process is a child subreaper, so
processes a tool leaves behind (Ansible's ControlPersist masters) are reaped here after the
run and their CPU counted too. The nodes' side (sshd, the sessions, Ansible's Python module)
is shown apart: ``sshd CPU s``, from the sshd's own and its reaped children's times.
``ok`` is the hosts whose ``uptime`` output came back. One untimed warm-up of each tool on one
host first (page cache, piman's database). The machine's load average is printed before each run.

Needs root (a network namespace, sshd on port 22 inside it).
Usage: python bench/ssh.py [--targets 50 200] [--runs 1] [--no-pin]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.sshlab import LAB_USER, ensure_lab_user
from tests.support import api_token, free_port, initial_admin_password

SSHD = "/usr/sbin/sshd"
CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
VENV_BIN = Path(sys.executable).parent
KEEP: set[int] = set()  # this process's own long-lived children (sshd, the manager)
SERVER_CPUS: set[int] = set()  # --pin: where sshd (the "nodes") runs; the tools get the rest


def enter_own_netns() -> None:
    """Move this process (and so every child) into a new network namespace with ``lo`` up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", "bench", "-f", str(path)],
        check=True,
    )
    pub = path.with_name(path.name + ".pub").read_text().split()
    return f"{pub[0]} {pub[1]}"


def address(i: int) -> str:
    """The i-th target (0-based): 127.0.0.1, 127.0.0.2, …"""
    return f"127.0.{(i + 1) // 256}.{(i + 1) % 256}"


@dataclass
class Nodes:
    """One sshd in this namespace, its keys and the files each tool reads."""

    tmp: Path
    count: int
    key: Path
    known_hosts: Path
    sshd: subprocess.Popen[bytes]


@contextmanager
def nodes(count: int) -> Iterator[Nodes]:
    with tempfile.TemporaryDirectory(prefix="piman-bench-ssh-") as name:
        tmp = Path(name)
        host_pub = keygen(tmp / "host_ed25519")
        client_pub = keygen(tmp / "id_ed25519")
        (tmp / "authorized_keys").write_text(client_pub + "\n")
        known = tmp / "known_hosts"
        known.write_text("".join(f"{address(i)} {host_pub}\n" for i in range(count)))
        known.chmod(0o600)
        config = tmp / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "Port 22",
                    "ListenAddress 0.0.0.0",
                    f"HostKey {tmp / 'host_ed25519'}",
                    f"PidFile {tmp / 'sshd.pid'}",
                    f"AuthorizedKeysFile {tmp / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {LAB_USER}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "MaxStartups 300:30:600",
                    "MaxSessions 20",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        made_run = not Path("/run/sshd").exists()  # sshd's privilege-separation directory
        if made_run:
            Path("/run/sshd").mkdir(mode=0o755)
        log = (tmp / "sshd.log").open("wb")
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=log,
            preexec_fn=(lambda: os.sched_setaffinity(0, SERVER_CPUS)) if SERVER_CPUS else None,
        )
        KEEP.add(sshd.pid)
        made = Nodes(tmp, count, tmp / "id_ed25519", known, sshd)
        try:
            wait_port(sshd, tmp / "sshd.log")
            yield made
        finally:
            manager = _managers.pop(id(made), None)
            if manager is not None:
                manager.close()
            KEEP.discard(sshd.pid)
            sshd.terminate()
            sshd.wait(10)
            reap_orphans()
            log.close()
            if made_run:
                shutil.rmtree("/run/sshd", ignore_errors=True)


def wait_port(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"sshd exited: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", 22)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("sshd did not listen in 10 s")


def reap_orphans() -> None:
    """End and reap what a tool left behind (re-parented to this subreaper), so their CPU
    counts in RUSAGE_CHILDREN."""
    me = str(os.getpid())
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        pid = int(status.parent.name)
        if fields.get("PPid", "").strip() != me or pid in KEEP:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            continue


@dataclass
class Row:
    targets: int
    tool: str
    wall: float
    cpu: float
    ok: int
    sshd: float = 0.0  # the server's CPU over the run (the same work for every tool)


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and of its waited-for children) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``argv`` and its descendants, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    wall = time.perf_counter() - t0
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        print(f"  {Path(argv[0]).name} exited {result.returncode}: {' | '.join(tail)}", flush=True)
    return wall, cpu, result.stdout


def ok_count(output: str) -> int:
    return output.count("load average")


# The three tools -----------------------------------------------------------------------------


def piman_config(n: Nodes, count: int) -> Path:
    directory = n.tmp / f"piman-{count}"
    directory.mkdir(exist_ok=True)
    lines = [
        "manager: {address: 127.255.255.254, network: 127.0.0.0/8,",
        f"          data_dir: {directory / 'data'}}}",
        "ssh:",
        f"  user: {LAB_USER}",
        f"  key_file: {n.key}",
        f"  known_hosts: {n.known_hosts}",
        "  host_keys: strict",
        "  connect_timeout: 30s",
        "  command_timeout: 60s",
        f"  concurrency: {max(count, 1)}",
        "nodes:",
        *(f"  - {{name: n{i:03d}, ip: {address(i)}, monitor: none}}" for i in range(count)),
    ]
    path = directory / "piman.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_piman(n: Nodes, count: int) -> tuple[float, float, str]:
    config = piman_config(n, count)
    return measure(
        [sys.executable, "-m", "piman", "ssh", "run", "uptime", "all", "-c", str(config)]
    )


def run_pssh(n: Nodes, count: int) -> tuple[float, float, str]:
    hosts = n.tmp / f"hosts-{count}"
    hosts.write_text("".join(address(i) + "\n" for i in range(count)))
    return measure(
        [
            "parallel-ssh",
            "-h", str(hosts),
            "-p", "200",
            "-l", LAB_USER,
            "-t", "60",
            "-i",
            "-x", "-F /dev/null",
            "-O", f"IdentityFile={n.key}",
            "-O", "IdentitiesOnly=yes",
            "-O", f"UserKnownHostsFile={n.known_hosts}",
            "-O", "StrictHostKeyChecking=yes",
            "-O", "BatchMode=yes",
            "uptime",
        ]
    )  # fmt: skip


def run_ansible(n: Nodes, count: int) -> tuple[float, float, str]:
    inventory = n.tmp / f"inventory-{count}.ini"
    common = f"-F /dev/null -o UserKnownHostsFile={n.known_hosts} -o StrictHostKeyChecking=yes"
    inventory.write_text(
        "[nodes]\n"
        + "".join(address(i) + "\n" for i in range(count))
        + f"[all:vars]\nansible_user={LAB_USER}\n"
        + f"ansible_ssh_private_key_file={n.key}\n"
        + f"ansible_ssh_common_args='{common}'\n"
        + "ansible_python_interpreter=/usr/bin/python3\n"
    )
    home = n.tmp / "ansible-home"
    control = Path(tempfile.mkdtemp(prefix="cp", dir=n.tmp))  # fresh: no master reused
    env = {
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_CONFIG": str(n.tmp / "ansible.cfg"),
    }
    (n.tmp / "ansible.cfg").write_text("[defaults]\n")
    argv = [str(VENV_BIN / "ansible"), "all", "-i", str(inventory), "-m", "command",
            "-a", "uptime", "-f", "50"]  # fmt: skip
    return measure(argv, env)


class Manager:
    """``piman server`` with every node, asked ``POST /api/v1/ssh/run`` as ``piman ssh run
    --url`` asks it; started once, on first use."""

    def __init__(self, n: Nodes) -> None:
        config = piman_config(n, n.count)
        self.port = free_port()
        text = config.read_text().replace(
            "          data_dir:", f'          http: "127.0.0.1:{self.port}", data_dir:'
        )
        config.write_text(text)
        self.log = (n.tmp / "manager.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "server", "-c", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        KEEP.add(self.proc.pid)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"piman server exited: {(n.tmp / 'manager.log').read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("piman server did not answer in 60 s")
            time.sleep(0.2)
        data_dir = n.tmp / f"piman-{n.count}" / "data"
        self.token = api_token(self.url, "admin", initial_admin_password(data_dir))

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def run(self, specs: list[str], concurrency: int) -> tuple[float, float, str]:
        body = {"command": "uptime", "targets": specs, "concurrency": concurrency}
        before = self.cpu()
        t0 = time.perf_counter()
        with httpx.stream(
            "POST",
            self.url + "/api/v1/ssh/run",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx.Timeout(30, read=None),
        ) as response:
            text = "".join(response.iter_text())
        wall = time.perf_counter() - t0
        if response.status_code != 200:
            print(f"  manager answered {response.status_code}: {text[:300]}", flush=True)
        return wall, self.cpu() - before, text

    def close(self) -> None:
        KEEP.discard(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


_managers: dict[int, Manager] = {}


def run_manager(n: Nodes, count: int) -> tuple[float, float, str]:
    manager = _managers.get(id(n))
    if manager is None:
        manager = _managers[id(n)] = Manager(n)
    specs = ["all"] if count == n.count else [f"n{i:03d}" for i in range(count)]
    return manager.run(specs, count)


TOOLS: list[tuple[str, Callable[[Nodes, int], tuple[float, float, str]]]] = [
    ("piman ssh run", run_piman),
    ("piman API (manager)", run_manager),
    ("parallel-ssh -p 200", run_pssh),
    ("ansible -f 50", run_ansible),
]


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(rows: list[Row], title: str) -> None:
    print(title)
    header = (
        f"{'targets':>7} {'tool':<20} {'wall s':>7} {'CPU s':>7} {'ok':>5} "
        f"{'wall x piman':>12} {'CPU x piman':>11} {'sshd CPU s':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        base = next(b for b in rows if b.targets == r.targets and b.tool == TOOLS[0][0])
        print(
            f"{r.targets:>7} {r.tool:<20} {r.wall:>7.2f} {r.cpu:>7.2f} {r.ok:>5} "
            f"{r.wall / base.wall:>12.2f} {r.cpu / base.cpu:>11.2f} {r.sshd:>10.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="Let sshd and the tools share every CPU (default: sshd on half of them)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/ssh.py needs root (a network namespace and sshd on port 22)")
    for tool in ("parallel-ssh", SSHD, "ssh-keygen", "ip"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
            raise SystemExit(f"bench/ssh.py needs {tool}")
    if max(args.targets) > 254 * 256:
        raise SystemExit("at most 65,000 targets")
    ensure_lab_user()  # password login locked: keys only
    bench(args)


def bench(args: argparse.Namespace) -> None:
    """Every run of every tool at every target count, and the tables."""
    enter_own_netns()
    cpus = sorted(os.sched_getaffinity(0))
    where = f"sshd and the tools on CPUs {cpus}"
    if not args.no_pin and len(cpus) >= 2:
        half = len(cpus) // 2
        SERVER_CPUS.update(cpus[half:])
        os.sched_setaffinity(0, cpus[:half])  # this process, the tools and the manager
        where = f"the tools on CPUs {cpus[:half]}, sshd (the nodes) on {cpus[half:]}"
    all_rows: list[Row] = []
    with nodes(max(args.targets)) as n:
        for name, run in TOOLS:  # warm-up: one host each, untimed
            if ok_count(run(n, 1)[2]) != 1:
                raise SystemExit(f"{name} did not run uptime on one host: see above")
        for run_index in range(args.runs):
            rows: list[Row] = []
            for count in args.targets:
                print(f"run {run_index + 1}, {count} targets, load average {load()}", flush=True)
                for name, run in TOOLS:
                    server = proc_cpu(n.sshd.pid, children=True)
                    wall, cpu, out = run(n, count)
                    time.sleep(1.0)  # let sshd's sessions end (and be counted)
                    server = proc_cpu(n.sshd.pid, children=True) - server
                    rows.append(Row(count, name, wall, cpu, ok_count(out), server))
            table(rows, f"\nrun {run_index + 1}: uptime over SSH to 127.0.0.x; {where}")
            all_rows += rows
    if args.runs > 1:
        for label, pick in (("median", statistics.median), ("best (least disturbed)", min)):
            summary = []
            for count in args.targets:
                for name, _ in TOOLS:
                    mine = [r for r in all_rows if (r.targets, r.tool) == (count, name)]
                    summary.append(
                        Row(
                            count,
                            name,
                            pick(r.wall for r in mine),
                            pick(r.cpu for r in mine),
                            min(r.ok for r in mine),
                            pick(r.sshd for r in mine),
                        )
                    )
            table(summary, f"\n{label} of {args.runs} runs, each column apart (ok: the fewest)")
    print(
        "\nwall: exec to exit of the tool; CPU: user+system of the tool and its descendants "
        "(ssh processes, Ansible's workers and ControlPersist masters); sshd CPU: the server's "
        "over the same run (not in CPU s). "
        "Goals at 200: piman >= 1.0x parallel-ssh and >= 3x Ansible (the x columns: tool / piman)."
    )


if __name__ == "__main__":
    main()
