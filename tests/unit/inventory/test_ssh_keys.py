"""The fleet's known hosts (verdicts, the file), ``piman ssh keygen`` and the CLI's bad input."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from piman.cli.app import app
from piman.inventory.ssh import _host_key_algs
from piman.inventory.ssh_hostkeys import KnownHosts, host_pattern, verdict

runner = CliRunner()
OLD = "ssh-ed25519 AAAAold"
NEW = "ssh-ed25519 AAAAnew"
PRINTS = {OLD: "SHA256:old", NEW: "SHA256:new"}


def judge(known: list[str], offered: str, policy: str = "tofu") -> tuple[str, str]:
    v = verdict(
        known,
        offered,
        policy=policy,  # type: ignore[arg-type]
        who="n0 (198.18.0.10)",
        fingerprint=PRINTS,
        forget_hint="piman ssh forget n0",
    )
    return v.action, v.reason


def test_a_known_key_passes_an_unknown_one_is_learnt_only_under_tofu() -> None:
    assert judge([OLD], OLD) == ("ok", "")
    assert judge([], NEW) == ("learn", "")
    action, reason = judge([], NEW, "strict")
    assert action == "refuse"
    assert reason.startswith("unknown host key for n0 (198.18.0.10) (host_keys: strict)")


@pytest.mark.parametrize("policy", ["tofu", "strict"])
def test_a_changed_key_is_refused_whatever_the_policy(policy: str) -> None:
    assert judge([OLD], NEW, policy) == (
        "refuse",
        "host key changed for n0 (198.18.0.10): known SHA256:old, offered SHA256:new; "
        "if it was reinstalled: piman ssh forget n0",
    )


def test_known_hosts_file_is_openssh_format_private_and_forgets_by_name_or_address(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ssh" / "known_hosts"
    known = KnownHosts(path)
    assert known.lookup("198.18.0.10", "n0") == []
    known.learn(("198.18.0.10", "n0"), OLD)
    known.learn((host_pattern("198.18.0.11", 2222), "n1"), NEW)
    known.learn(("198.18.0.10", "n0"), OLD)  # once only
    assert path.read_text() == f"198.18.0.10,n0 {OLD}\n[198.18.0.11]:2222,n1 {NEW}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # another process (or a hand edit) changed it: read again
    path.write_text(path.read_text() + "# a comment\n@cert-authority * ssh-ed25519 AAAAca\n")
    fresh = KnownHosts(path)
    assert fresh.lookup("n0") == [OLD]
    assert fresh.lookup("[198.18.0.11]:2222") == [NEW]
    assert fresh.lookup("198.18.0.11") == []  # another port, another host
    assert fresh.forget("n1") == 1
    assert fresh.forget("n1") == 0
    assert KnownHosts(path).lookup("198.18.0.10") == [OLD]


def test_host_key_algorithms_follow_the_known_keys() -> None:
    assert _host_key_algs([OLD]) == ["ssh-ed25519"]
    assert _host_key_algs(["ssh-rsa AAAA"]) == ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
    assert _host_key_algs([]) == []


def config(tmp_path: Path) -> Path:
    path = tmp_path / "piman.yaml"
    data = {
        "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path / "data")},
        "nodes": [{"name": "n0", "ip": "198.18.0.10"}],
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_keygen_makes_a_private_key_openssh_reads_and_refuses_to_overwrite_it(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    r = runner.invoke(app, ["ssh", "keygen", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    key = tmp_path / "data" / "ssh" / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    public = key.with_name("id_ed25519.pub").read_text()
    assert public.startswith("ssh-ed25519 ")
    assert public in r.stdout
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
    ).stdout
    assert derived.split()[:2] == public.split()[:2]

    again = runner.invoke(app, ["ssh", "keygen", "-c", str(cfg)])
    assert again.exit_code == 1
    assert "--force" in again.output
    assert key.with_name("id_ed25519.pub").read_text() == public
    forced = runner.invoke(app, ["ssh", "keygen", "-c", str(cfg), "--force"])
    assert forced.exit_code == 0
    assert key.with_name("id_ed25519.pub").read_text() != public


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ssh", "run", "true", "--reserved"], "--reserved needs --url"),
        (["ssh", "run", "true"], "name the targets"),
        (["ssh", "run", "true", "nosuch"], "nosuch"),
        (["ssh", "push-key"], "name the targets"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    r = runner.invoke(app, [*args, "-c", str(config(tmp_path))], env={"COLUMNS": "200"})
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_run_without_a_fleet_key_says_how_to_make_one(tmp_path: Path) -> None:
    r = runner.invoke(app, ["ssh", "run", "true", "n0", "-c", str(config(tmp_path))])
    assert r.exit_code == 1
    assert "no fleet key at" in r.output
    assert "piman ssh keygen" in r.output
