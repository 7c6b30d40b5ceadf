"""`piman config check` and the CLI's promises: exit codes, one-line errors, help with examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from piman.cli.app import app
from tests.support import SEED_YAML as SEED

runner = CliRunner()


def piman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piman", *args],
        capture_output=True,
        text=True,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_seed_config_prints_switches_and_nodes(tmp_path: Path) -> None:
    (tmp_path / "piman.yaml").write_text(SEED)
    (tmp_path / "hosts.csv").write_text("dc:a6:32:00:00:0d,172.30.4.13\n")
    result = piman(
        "config", "check", str(tmp_path / "piman.yaml"), "--hosts", str(tmp_path / "hosts.csv")
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 switches" in out
    assert "3 nodes" in out
    for text in ["switch0-pi01", "172.30.4.254", "172.30.4.13", "dc:a6:32:00:00:0d"]:
        assert text in out


def test_yaml_option_shows_the_equivalent_new_form(tmp_path: Path) -> None:
    (tmp_path / "seed.yaml").write_text(SEED)
    result = piman("config", "check", str(tmp_path / "seed.yaml"), "--yaml")
    assert result.returncode == 0
    assert "name: switch1-pi01" in result.stdout
    assert "address: 172.30.4.1" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "piman.yaml: is empty"),
        (b"\x00\x01\x02\xff", "piman.yaml: is a binary file"),
        (SEED.replace("172.30.4.2]", "172.30.4.1, 172.30.4.2]").encode(), "manager's own address"),
        (
            b"manager: {address: 198.18.0.1}\nswitches:\n - {name: a, address: 198.18.0.2}\n"
            b" - {name: b, address: '172.30.4.'}\n",
            "piman.yaml: switches[1].address: '172.30.4.' is not an IPv4 address",
        ),
    ],
)
def test_bad_config_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "piman.yaml"
    path.write_bytes(content)
    result = piman("config", "check", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(tmp_path) in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = piman("config", "check", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("absent.yaml: no such file")


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found += _commands(cmd, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def test_every_command_has_help_with_an_example() -> None:
    root = typer.main.get_command(app)
    commands = _commands(root)
    assert {("server",), ("demo",), ("nodes",), ("config", "check")} <= set(commands)
    for command in commands:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, command
        assert "Example" in result.output, f"piman {' '.join(command)} --help has no example"


def test_boot_files_too_big_for_pi_tftp_give_a_warning(tmp_path: Path) -> None:
    boot = tmp_path / "data" / "boot"
    boot.mkdir(parents=True)
    (boot / "kernel8.img").write_bytes(b"\0" * 1024)
    with (boot / "initramfs8").open("wb") as big:
        big.truncate(70 * 1024 * 1024)  # sparse: > 65535 blocks of 1024
    path = tmp_path / "piman.yaml"
    path.write_text(
        f"manager: {{address: 198.18.0.1, data_dir: {tmp_path / 'data'}}}\n"
        "tftp: {enabled: true}\n"
    )
    result = piman("config", "check", str(path))
    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "initramfs8" in warnings[0]
    assert "65535 blocks" in warnings[0]


def test_ssh_and_healing_are_summarised_and_what_cannot_work_is_warned(tmp_path: Path) -> None:
    path = tmp_path / "piman.yaml"
    path.write_text(
        f"manager: {{address: 198.18.0.1, data_dir: {tmp_path / 'data'}}}\n"
        "ssh: {user: ops, host_keys: strict}\n"
        "nodes:\n"
        "  - {name: lab-pi, ip: 198.18.0.7, monitor: ssh}\n"
        "  - {name: far-pi, monitor: ssh}\n"
        "healing:\n"
        "  policies: [{name: racks, nodes: [all]}]\n"
    )
    result = piman("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "host keys strict" in result.stdout
    assert "user ops" in result.stdout
    assert "2 nodes watched over SSH" in result.stdout
    assert "healing on (policies racks; 2 nodes at once)" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, result.stderr
    assert "monitoring is off" in warnings[0]
    assert "no `deploy:` section" in warnings[1]
    assert "far-pi" in warnings[2]
    assert "lab-pi" not in warnings[2]
