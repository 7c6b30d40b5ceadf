"""``python -m piman.monitor.agent`` (what the systemd unit runs) refuses to start open when its
token file is empty: authentication is never turned off by an accident."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.monitor import free_tcp_port


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_an_empty_token_file_is_refused(tmp_path: Path, content: str) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    proc = subprocess.Popen(
        [sys.executable, "-m", "piman.monitor.agent", "--token-file", str(token),
         "--listen", "127.0.0.1", "--port", str(free_tcp_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the agent started (without authentication) on an empty --token-file")
    assert proc.returncode == 2, err
    assert f"--token-file {token} is empty" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
