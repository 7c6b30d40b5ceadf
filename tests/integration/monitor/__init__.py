"""Helpers for the monitoring integration tests: run a real agent process on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

__all__ = ["free_tcp_port", "running_agent", "wait_for_port"]


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts on 127.0.0.1:port, failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"process exited with {proc.returncode}: {err.decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def running_agent(
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
) -> Iterator[int]:
    """Run ``python -m piman.monitor.agent`` (or ``command``) on a free port; yield the port."""
    port = free_tcp_port()
    base = list(command) if command else [sys.executable, "-m", "piman.monitor.agent"]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen(
        [*base, *args, "--listen", "127.0.0.1", "--port", str(port)],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
