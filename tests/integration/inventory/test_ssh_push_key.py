"""``piman ssh push-key`` with the orchestration seed's password policy, against sshd nodes that
take the image's password and do not know the fleet key yet (``SshLab(password_login=True,
authorize=False)``)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.sshlab import LAB_PASSWORD, LAB_USER, SSHD, SshLab, SshNode
from tests.support import needs_root, needs_tool

# Logs in with the password only (the fleet key is not offered): prints ok, or the refusal.
PASSWORD_LOGIN = """
import asyncio, sys, asyncssh
async def main():
    try:
        conn = await asyncssh.connect(sys.argv[1], username=sys.argv[2], password=sys.argv[3],
            known_hosts=None, client_keys=None, agent_path=None, config=[],
            preferred_auth="keyboard-interactive,password")
    except asyncssh.PermissionDenied:
        print("refused")
        return
    conn.close()
    print("ok")
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[SshLab]:
    needs_root()
    needs_tool("ip", "ss", "unshare", "ssh-keygen", "ssh", SSHD)
    with SshLab(nodes=2, password_login=True, authorize=False) as lab:
        yield lab


def piman(lab: SshLab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = ("env", "COLUMNS=200", sys.executable, "-m", "piman", *args)
    return lab.net.run(lab.server, *argv, check=False, timeout=90)


def password_login(lab: SshLab, node: SshNode) -> str:
    return lab.net.python(lab.server, PASSWORD_LOGIN, node.ip, LAB_USER, LAB_PASSWORD).strip()


def result(out: str, host: str) -> str:
    [line] = [ln for ln in out.splitlines() if re.match(rf"{host}\s+│", ln)]
    return line.split("│")[-1].strip()


def test_push_key_installs_the_key_and_turns_password_login_off(lab: SshLab) -> None:
    n0, n1 = lab.nodes
    assert lab.ssh(n0, "true").returncode != 0  # the fleet key is not authorised yet
    assert password_login(lab, n0) == "ok"  # the image's password is

    no_password = lab.net.write_config(lab.config(), "nopw.yaml")
    r = piman(lab, "ssh", "push-key", "--config", str(no_password), "n1")
    assert r.returncode == 1
    assert result(r.stdout, "n1") == (
        "refused: login refused (publickey), and no password is configured "
        "(ssh.password or ssh.password_file)"
    )

    ssh = {**lab.config()["ssh"], "password": LAB_PASSWORD}
    cfg = lab.net.write_config(lab.config(ssh=ssh))
    r = piman(lab, "ssh", "push-key", "--config", str(cfg), "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert LAB_PASSWORD not in r.stdout + r.stderr
    for node in (n0, n1):
        assert result(r.stdout, node.name) == "key installed, password login disabled"
        assert node.authorized_keys.read_text().splitlines() == [lab.client_pub]
        dropin = (node.dropins / "piman.conf").read_text()
        assert "PasswordAuthentication no\n" in dropin
        assert lab.ssh(node, "true").returncode == 0  # OpenSSH's client: the key works
        assert password_login(lab, node) == "refused"

    # again: nothing to do, nothing added twice
    again = piman(lab, "ssh", "push-key", "--config", str(cfg), "all")
    assert again.returncode == 0, again.stdout
    assert [result(again.stdout, n.name) for n in (n0, n1)] == ["key already works"] * 2
    assert n0.authorized_keys.read_text().splitlines() == [lab.client_pub]
