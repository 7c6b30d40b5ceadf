"""``piman ssh run`` and the ssh-reboot driver against OpenSSH sshd nodes (``sshlab``).

One lab of three key-only nodes for the module; piman runs as the user would run it, from the
manager's namespace with a config written from the lab. The tests share the lab's known-hosts
file (learnt on first contact in the first test) and run in file order.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.sshlab import SSHD, SshLab
from tests.support import needs_root, needs_tool

# Prints "hello <node address>" on stdout, "warn <address>" on stderr; exits 3 on n1 only.
PER_NODE = (
    'ip=$(echo "$SSH_CONNECTION" | cut -d" " -f3); echo "hello $ip"; echo "warn $ip" >&2; '
    '[ "$ip" != 198.18.0.11 ] || exit 3'
)


@pytest.fixture(scope="module")
def lab() -> Iterator[SshLab]:
    needs_root()
    needs_tool("ip", "ss", "unshare", "ssh-keygen", "ssh", SSHD)
    with SshLab(nodes=3) as lab:
        yield lab


@pytest.fixture(scope="module")
def config(lab: SshLab) -> Path:
    return lab.net.write_config(lab.config())


def piman(lab: SshLab, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, run from the manager's namespace (tables 200 columns wide)."""
    argv = ("env", "COLUMNS=200", sys.executable, "-m", "piman", *args)
    return lab.net.run(lab.server, *argv, check=False, timeout=90)


def row(out: str, host: str) -> str:
    """The summary table's line for ``host``."""
    lines = [ln for ln in out.splitlines() if re.match(rf"{host}\s+│", ln)]
    assert len(lines) == 1, out
    return lines[0]


def cells(out: str, host: str) -> list[str]:
    return [c.strip() for c in row(out, host).split("│")]


def test_run_prefixes_output_reports_each_exit_and_fails_when_one_host_fails(
    lab: SshLab, config: Path
) -> None:
    r = piman(lab, "ssh", "run", "--config", str(config), PER_NODE, "all")
    assert r.returncode == 1, r.stderr
    for i, node in enumerate(lab.nodes):
        assert f"{node.name}: hello 198.18.0.{10 + i}\n" in r.stdout
        assert f"{node.name}: warn 198.18.0.{10 + i}\n" in r.stderr
    assert [cells(r.stdout, n)[1] for n in ("n0", "n1", "n2")] == ["0", "3", "0"]
    assert "2 of 3 hosts ok" in r.stdout
    # first contact taught the host keys (tofu), each line naming address and node, 0600
    known = lab.net.tmp / "known_hosts"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    lines = known.read_text().splitlines()
    assert sorted(lines) == [f"{n.ip},{n.name} {n.host_key_pub}" for n in lab.nodes]
    assert "learnt its host key on first contact" in r.stderr

    ok = piman(lab, "ssh", "run", "--config", str(config), "true", "n0", "n2")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 of 2 hosts ok" in ok.stdout
    assert known.read_text().splitlines() == lines  # nothing learnt twice


def test_group_prints_one_block_per_distinct_output(lab: SshLab, config: Path) -> None:
    cmd = 'case "$SSH_CONNECTION" in *198.18.0.11*) echo odd;; *) echo same;; esac'
    r = piman(lab, "ssh", "run", "--config", str(config), "--group", cmd, "all")
    assert r.returncode == 0, r.stderr
    assert "==> n0, n2 (2) <==\nsame\n" in r.stdout
    assert "==> n1 (1) <==\nodd\n" in r.stdout
    assert "n0: " not in r.stdout


def test_a_host_that_is_down_fails_alone(lab: SshLab, config: Path) -> None:
    down = lab.nodes[2]
    lab.stop(down)
    try:
        r = piman(lab, "ssh", "run", "--config", str(config), "echo up", "all")
    finally:
        lab.start(down)
    assert r.returncode == 1
    assert "n0: up" in r.stdout
    assert "n1: up" in r.stdout
    assert "n2: up" not in r.stdout
    assert cells(r.stdout, "n2")[1:4:2] == ["-", "connection refused"]


def test_a_command_past_its_deadline_is_cut_and_long_output_truncated(lab: SshLab) -> None:
    ssh = {**lab.config()["ssh"], "max_output": 1024}
    cfg = lab.net.write_config(lab.config(ssh=ssh), "small.yaml")
    cmd = (
        'case "$SSH_CONNECTION" in *198.18.0.10*) head -c 3000 /dev/zero | tr "\\0" x;; '
        "*) sleep 30;; esac"
    )
    r = piman(lab, "ssh", "run", "--config", str(cfg), "--timeout", "1", cmd, "n0", "n1")
    assert r.returncode == 1
    assert cells(r.stdout, "n1")[1:4:2] == ["-", "command timed out after 1 s"]
    # n0 exited 0 (it counts as ok) but only max_output bytes of what it said were kept
    assert "n0: " + "x" * 1024 + "\n" in r.stdout
    assert "x" * 1025 not in r.stdout
    assert cells(r.stdout, "n0")[1:4:2] == ["0", "output truncated"]
    assert "1 of 2 hosts ok" in r.stdout


def test_a_changed_host_key_is_refused_until_forgotten(lab: SshLab, config: Path) -> None:
    node = lab.nodes[1]
    old = node.host_key_pub
    lab.new_host_key(node)
    r = piman(lab, "ssh", "run", "--config", str(config), "echo in", "n1")
    assert r.returncode == 1
    assert "n1: in" not in r.stdout
    assert re.search(
        r"error: n1: host key changed for n1 \(198\.18\.0\.11\): known SHA256:\S+, offered "
        r"SHA256:\S+; if it was reinstalled: piman ssh forget n1\n",
        r.stderr,
    ), r.stderr

    forgot = piman(lab, "ssh", "forget", "--config", str(config), "n1")
    assert forgot.returncode == 0, forgot.stderr
    assert "n1 (198.18.0.11): forgot 1 host key" in forgot.stdout
    again = piman(lab, "ssh", "run", "--config", str(config), "echo in", "n1")
    assert again.returncode == 0, again.stdout
    assert "n1: in" in again.stdout
    known = (lab.net.tmp / "known_hosts").read_text()
    assert node.host_key_pub in known
    assert old not in known


def test_strict_host_keys_refuse_an_unknown_host(lab: SshLab) -> None:
    ssh: dict[str, Any] = {
        **lab.config()["ssh"],
        "host_keys": "strict",
        "known_hosts": str(lab.net.tmp / "strict_known_hosts"),
    }
    cfg = lab.net.write_config(lab.config(ssh=ssh), "strict.yaml")
    r = piman(lab, "ssh", "run", "--config", str(cfg), "echo in", "n0")
    assert r.returncode == 1
    assert "n0: in" not in r.stdout
    assert "error: n0: unknown host key for n0 (198.18.0.10) (host_keys: strict)" in r.stderr
    assert not (lab.net.tmp / "strict_known_hosts").exists()


def test_bad_targets_are_bad_input(lab: SshLab, config: Path) -> None:
    r = piman(lab, "ssh", "run", "--config", str(config), "true", "n0", "nosuch")
    assert r.returncode == 2
    assert "nosuch" in r.stderr
    assert "Traceback" not in r.stderr


def test_ssh_reboot_driver_reboots_and_powers_off_through_the_fleet_client(lab: SshLab) -> None:
    data = lab.config()
    for i, node in enumerate(data["nodes"]):
        node.update(switch="bench", port=i + 1)
    data["switches"] = [{"name": "bench", "driver": "ssh-reboot"}]
    cfg = lab.net.write_config(data, "power.yaml")
    r = piman(lab, "power", "cycle", "--config", str(cfg), "n0")
    assert r.returncode == 0, r.stdout + r.stderr
    r = piman(lab, "power", "off", "--config", str(cfg), "n2")
    assert r.returncode == 0, r.stdout + r.stderr
    logs = [[ln.strip() for ln in node.power_log()] for node in lab.nodes]
    assert logs == [["reboot"], [], ["poweroff"]]
