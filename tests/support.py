"""Helpers shared by tests: skip (or, in CI, fail) when a test cannot run on this machine."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

REQUIRE_ALL = os.environ.get("PIMAN_REQUIRE_ROOT_TESTS") == "1"


def needs_root() -> None:
    """Skip unless root (network namespaces, raw sockets, privileged ports)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces); run `make test` as root")


def needs_tool(*names: str) -> None:
    """Skip unless every named program is on PATH (or in /usr/sbin, /sbin)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [n for n in names if shutil.which(n, path=path) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (installed by `make test` as root)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# The original piman's configuration, as its README gives it (with a hosts-free two-switch rack).
SEED_YAML = """\
private_number: 4
server_address: 172.30.4.1
subnet_mask: 255.255.255.0
interface: ens4
switch_count: 2
switches:
  - swtich_0_address: 172.30.4.254
    pi_addresses: [172.30.4.13, 172.30.4.14]
  - swtich_1_address: 172.30.4.128
    pi_addresses: [172.30.4.2]
"""


def api_token(url: str, user: str, password: str) -> str:
    """A new API token for ``user``, asked of a running manager with the password."""
    response = httpx.post(
        url.rstrip("/") + "/api/v1/auth/token",
        json={"username": user, "password": password, "name": "tests"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def grant(ctx: Any, role: str = "admin", name: str | None = None) -> dict[str, str]:
    """An account with ``role`` in an in-process app's context, and a bearer header for it.

    Builds the access capability on the context when the test did not.
    """
    from piman.access.service import build

    if ctx.access is None:
        ctx.access = build(ctx).handle
    name = name or role
    await ctx.access.add_user(name, role, f"password-of-{name}")
    _record, token = await ctx.access.create_token(name, "tests", None)
    return bearer(token)


def initial_admin_password(data_dir: Path) -> str:
    """What the first `piman server` wrote for `admin` (data_dir/initial-admin-password)."""
    return (data_dir / "initial-admin-password").read_text().strip()


def demo_logins(root: Path) -> dict[str, str]:
    """`piman demo`'s accounts: name → password (from root/demo-logins.txt)."""
    logins = {}
    for line in (root / "demo-logins.txt").read_text().splitlines():
        name, password, _role = line.split()
        logins[name] = password
    return logins


@contextmanager
def session_client(url: str, user: str, password: str) -> Iterator[httpx.Client]:
    """An httpx client logged in with a session cookie, as a browser would be; closed after."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        response = client.post("/api/v1/auth/login", json={"username": user, "password": password})
        assert response.status_code == 200, response.text
        yield client


def log_in(page: Any, url: str, user: str, password: str) -> None:
    """Playwright: the login form, filled in as a person would; waits for the fleet page."""
    page.goto(url.rstrip("/") + "/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("#login button[type=submit]")
    page.wait_for_url(url.rstrip("/") + "/", timeout=15_000)


CHROMIUM = "/usr/bin/chromium"
# Headless Chromium as root on an offline machine (TESTING.md): no sandbox, no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def needs_chromium() -> None:
    """Skip unless Debian's Chromium is installed."""
    if not Path(CHROMIUM).exists():
        needs_tool("chromium")


@contextmanager
def running_demo(root: Path, nodes: int) -> Iterator[str]:
    """`piman demo` as a real process with its data in ``root``; yields the UI's URL."""
    port = free_port()
    log = root.parent / f"{root.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "piman", "demo", "--nodes", str(nodes), "--port", str(port),
             "--data-dir", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
