"""``sshlab``: OpenSSH ``sshd`` "nodes" in network namespaces, for the SSH, Ansible and agentless
monitoring tests.

Layout: a :class:`~tests.integration.netlab.NetLab` (the bridge in its own namespace, the
manager's namespace ``<p>-srv`` at 198.18.0.1) whose client namespaces are the nodes; node ``i``
is ``n<i>`` at ``198.18.0.<10+i>`` and runs its own ``sshd`` on port 22 with its own ed25519
host key. Each sshd runs in a private mount namespace as well, where:

- ``/home/pimanlab`` is the node's own home (``<node dir>/home``): ``~/.ssh/authorized_keys``
  is per node, as on real Pis;
- ``/etc/ssh/sshd_config.d`` is the node's own drop-in directory, included first by its
  ``sshd_config`` (so ``PasswordAuthentication no`` written there by ``piman ssh push-key``
  wins after a reload), and ``/run`` is a private tmpfs holding its ``/run/sshd.pid``;
- ``/usr/sbin/reboot`` and ``/usr/sbin/poweroff`` are scripts that append a line to
  ``<node dir>/power.log`` instead of acting (the ``ssh-reboot`` driver's tests read it).

Login: user ``pimanlab`` (made by :func:`ensure_lab_user`: uid 0 so that a node's "sudo"
work runs in its own mount namespace without sudo installed; password :data:`LAB_PASSWORD` in
labs made with ``password_login=True`` (locked again when the lab closes), else locked)
with the lab's client key (:attr:`SshLab.client_key`) authorised unless ``authorize=False``.
Nothing of the host's own SSH configuration is touched. Needs root (the fixture checks).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netlab import SERVER_IP, NetLab
from tests.support import needs_root, needs_tool

__all__ = [
    "LAB_PASSWORD",
    "LAB_USER",
    "SERVER_IP",
    "SshLab",
    "SshNode",
    "ensure_lab_user",
    "keygen",
    "lock_lab_user",
    "sshlab",
]

LAB_USER = "pimanlab"
LAB_PASSWORD = "raspberry-lab"  # the "image's default password" of the push-key tests
LAB_HOME = Path("/home") / LAB_USER
SSHD = "/usr/sbin/sshd"

_POWER_SCRIPT = '#!/bin/sh\necho "$(basename "$0") $*" >> {log}\n'


def ensure_lab_user(password: str | None = None) -> None:
    """Create (once) the login user of the lab nodes (uid 0: see the module docstring), with
    ``password`` or with password login locked. :func:`lock_lab_user` locks it again: a uid-0
    account with a known password must not outlive the test that needs it. (The account
    itself stays, locked and with an empty home: deleting it could pull it from under another
    test run on the same machine.)"""
    if subprocess.run(["id", LAB_USER], capture_output=True, check=False).returncode != 0:
        home = str(LAB_HOME)
        argv = ["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", home, "-s", "/bin/sh", LAB_USER]
        subprocess.run(argv, check=True, capture_output=True)
    LAB_HOME.mkdir(mode=0o700, exist_ok=True)
    if password is None:
        lock_lab_user()
    else:
        subprocess.run(
            ["chpasswd"],
            input=f"{LAB_USER}:{password}\n",
            text=True,
            check=True,
            capture_output=True,
        )


def lock_lab_user() -> None:
    """No password login for the lab user (keys only, in the labs' own homes)."""
    subprocess.run(["usermod", "-p", "*", LAB_USER], capture_output=True, check=False)


def keygen(path: Path, comment: str = "piman-lab") -> str:
    """A new ed25519 key pair at ``path`` (private) and ``path.pub``; the public line."""
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


@dataclass
class SshNode:
    name: str
    ns: str
    ip: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key_pub(self) -> str:
        """The node's host key, as ``ssh-ed25519 AAAA…`` (no comment)."""
        text = (self.dir / "ssh_host_ed25519_key.pub").read_text().split()
        return f"{text[0]} {text[1]}"

    @property
    def authorized_keys(self) -> Path:
        return self.dir / "home" / ".ssh" / "authorized_keys"

    @property
    def dropins(self) -> Path:
        return self.dir / "sshd_config.d"

    def power_log(self) -> list[str]:
        path = self.dir / "power.log"
        return path.read_text().splitlines() if path.exists() else []


class SshLab:
    """``nodes`` sshd nodes on a NetLab bridge (see the module docstring)."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        password_login: bool = False,
        authorize: bool = True,
        sshd_options: dict[str, str] | None = None,
    ) -> None:
        self.net = NetLab(clients=nodes)
        self.password_login = password_login
        self.authorize = authorize
        self.sshd_options = sshd_options or {}
        self.nodes: list[SshNode] = []
        self.client_key = self.net.tmp / "id_ed25519"
        self.client_pub = ""

    @property
    def server(self) -> str:
        """The manager's namespace (198.18.0.1): run piman there to reach the nodes."""
        return self.net.server

    def __enter__(self) -> SshLab:
        self.net.__enter__()
        try:
            self._up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.net.close()
        if self.password_login:
            lock_lab_user()

    def _up(self) -> None:
        ensure_lab_user(LAB_PASSWORD if self.password_login else None)
        self.client_pub = keygen(self.client_key, "piman-lab-client")
        for i, ns in enumerate(self.net.clients):
            ip = f"198.18.0.{10 + i}"
            subprocess.run(
                ["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"],
                check=True,
                capture_output=True,
            )
            node_dir = self.net.tmp / f"n{i}"
            (node_dir / "home" / ".ssh").mkdir(parents=True, mode=0o700)
            (node_dir / "sshd_config.d").mkdir()
            keygen(node_dir / "ssh_host_ed25519_key", f"n{i}")
            if self.authorize:
                (node_dir / "home" / ".ssh" / "authorized_keys").write_text(self.client_pub + "\n")
            for tool in ("reboot", "poweroff"):
                script = node_dir / tool
                script.write_text(_POWER_SCRIPT.format(log=node_dir / "power.log"))
                script.chmod(0o755)
            self._write_sshd_config(node_dir, ip)
            node = SshNode(f"n{i}", ns, ip, node_dir)
            self.nodes.append(node)
            self.start(node)

    def _write_sshd_config(self, node_dir: Path, ip: str) -> None:
        options = {
            "Port": "22",
            "ListenAddress": ip,
            "HostKey": str(node_dir / "ssh_host_ed25519_key"),
            "PidFile": "/run/sshd.pid",
            "PasswordAuthentication": "yes" if self.password_login else "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "yes",
            "UsePAM": "no",
            "StrictModes": "no",
            "AllowUsers": LAB_USER,
            "MaxStartups": "300:30:600",
            "LogLevel": "VERBOSE",
            **self.sshd_options,
        }
        lines = [f"Include {node_dir / 'sshd_config.d'}/*.conf"]
        lines += [f"{k} {v}" for k, v in options.items()]
        (node_dir / "sshd_config").write_text("\n".join(lines) + "\n")

    def start(self, node: SshNode) -> None:
        """Start (or restart) the node's sshd; returns once port 22 listens."""
        if node.proc is not None and node.proc.poll() is None:
            self.stop(node)
        d = node.dir
        script = " && ".join(
            [
                "mount -t tmpfs -o mode=755 none /run",
                "mkdir -p /run/sshd",
                f"mount --bind {d / 'home'} {LAB_HOME}",
                f"mount --bind {d / 'sshd_config.d'} /etc/ssh/sshd_config.d",
                f"mount --bind {d / 'reboot'} /usr/sbin/reboot",
                f"mount --bind {d / 'poweroff'} /usr/sbin/poweroff",
                f"exec {SSHD} -D -e -f {d / 'sshd_config'}",
            ]
        )
        log = (d / "sshd.log").open("ab")
        node.proc = self.net.popen(
            node.ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise AssertionError(f"sshd of {node.name} exited:\n{self.log(node)}")
            out = self.net.run(node.ns, "ss", "-Hltn", "sport", "= :22", check=False).stdout
            if out.strip():
                return
            time.sleep(0.1)
        raise AssertionError(f"sshd of {node.name} did not listen in 20 s:\n{self.log(node)}")

    def stop(self, node: SshNode) -> None:
        """Stop the node's sshd (the node is "down": nothing listens on its port 22)."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.terminate()
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        # sshd's children (sessions) are in the namespace too; only this namespace's (a network
        # namespace shares the PID space: `pkill sshd` would reach every lab's and the host's).
        listed = subprocess.run(
            ["ip", "netns", "pids", node.ns], capture_output=True, text=True, check=False
        ).stdout.split()
        for pid in listed:
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("sshd"):
                subprocess.run(["kill", pid], capture_output=True, check=False)

    def reload(self, node: SshNode) -> None:
        """SIGHUP the node's sshd (what `systemctl reload ssh` does on a Pi)."""
        assert node.proc is not None
        self.net.run(node.ns, "kill", "-HUP", str(node.proc.pid), check=False)

    def new_host_key(self, node: SshNode) -> str:
        """Give the node a new host key (as a reinstall does) and restart its sshd."""
        pub = keygen(node.dir / "ssh_host_ed25519_key", node.name)
        self.start(node)
        return pub

    def log(self, node: SshNode) -> str:
        path = node.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config(self, **overrides: Any) -> dict[str, Any]:
        """piman configuration sections for these nodes (``nodes`` and ``ssh``), to merge into
        a test's configuration; the known-hosts file is fresh (``<tmp>/known_hosts``)."""
        data: dict[str, Any] = {
            "nodes": [{"name": n.name, "ip": n.ip, "ssh_user": LAB_USER} for n in self.nodes],
            "ssh": {
                "key_file": str(self.client_key),
                "known_hosts": str(self.net.tmp / "known_hosts"),
                "connect_timeout": "5s",
                "command_timeout": "20s",
            },
        }
        data.update(overrides)
        return data

    def ssh(
        self, node: SshNode, *command: str, key: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """OpenSSH's own client from the manager's namespace (a cross-check of piman's)."""
        return self.net.run(
            self.server,
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-i",
            str(key or self.client_key),
            f"{LAB_USER}@{node.ip}",
            *command,
            check=False,
        )


@pytest.fixture
def sshlab() -> Iterator[SshLab]:
    """An :class:`SshLab` with three key-only nodes, torn down after the test."""
    needs_root()
    needs_tool("ip", "ss", "unshare", "ssh-keygen", "ssh", SSHD)
    with SshLab(nodes=3) as lab:
        yield lab
