"""``piman agent`` as users start it: bearer token, TLS checked by curl, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.monitor import free_tcp_port, running_agent
from tests.support import needs_tool

PIMAN = [sys.executable, "-m", "piman"]


def curl(*args: str) -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.returncode, out.stdout


def test_bearer_token_from_the_environment(tmp_path: Path) -> None:
    needs_tool("curl")
    env = {"PIMAN_AGENT_TOKEN": "s3cret-token"}
    with running_agent(["agent"], env=env, command=PIMAN) as port:
        url = f"http://127.0.0.1:{port}"
        assert curl(f"{url}/metrics") == (0, "401")
        assert curl("-H", "Authorization: Bearer wrong", f"{url}/events") == (0, "401")
        assert curl("-H", "Authorization: Bearer s3cret-token", f"{url}/metrics") == (0, "200")
        assert curl("-H", "Authorization: Bearer s3cret-token", f"{url}/events") == (0, "200")
        # the token is not on the agent's command line
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
        assert "s3cret-token" not in ps.stdout


def test_token_file(tmp_path: Path) -> None:
    needs_tool("curl")
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    env = {k: v for k, v in os.environ.items() if k != "PIMAN_AGENT_TOKEN"}
    with running_agent(["--token-file", str(token)], env=env) as port:
        url = f"http://127.0.0.1:{port}/metrics"
        assert curl(url) == (0, "401")
        assert curl("-H", "Authorization: Bearer from-a-file", url) == (0, "200")


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    needs_tool("openssl")
    cert, key = tmp_path / "agent.pem", tmp_path / "agent.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_with_a_self_signed_certificate(self_signed: tuple[Path, Path]) -> None:
    needs_tool("curl")
    cert, key = self_signed
    args = ["agent", "--tls-cert", str(cert), "--tls-key", str(key)]
    with running_agent(args, command=PIMAN) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        assert curl("--cacert", str(cert), url) == (0, "200")
        code, _ = curl(url)  # not trusted without the CA file
        assert code == 60
        assert curl("--cacert", str(cert), f"http://127.0.0.1:{port}/metrics")[1] != "200"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIMAN, "agent", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "TLS file not found"),
        (["--port", "70000"], "65535"),
        (["--listen", "not-an-address"], "not an address"),
        (["--token-file", "/nonexistent"], "--token-file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_is_exit_1() -> None:
    port = free_tcp_port()
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        out = run_cli("--listen", "127.0.0.1", "--port", str(port))
    assert out.returncode == 1
    assert "cannot listen on 127.0.0.1" in out.stderr
    assert "Traceback" not in out.stderr


def test_systemd_unit_ships_in_the_package() -> None:
    import piman.monitor.agent

    unit = Path(piman.monitor.agent.__file__).parent / "piman-agent.service"
    text = unit.read_text()
    assert "ExecStart=" in text
    assert "piman.monitor.agent" in text
    needs_tool("systemd-analyze")
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert "piman-agent.service" not in verify.stderr  # no warnings about our unit
