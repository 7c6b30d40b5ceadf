"""The agent's threaded server against clients that hold on: a cap on connections, and a deadline
for each request head and for each connection as a whole (TLS handshake included)."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from piman.monitor.agent.app import AgentApp
from piman.monitor.agent.server import AgentServer, make_ssl_context
from tests.support import needs_tool
from tests.unit.monitor.agent.test_app import FakeSource

DEFAULT_CAP = 16  # AgentServer's default max_connections


@contextlib.contextmanager
def serving(**kwargs: object) -> Iterator[AgentServer]:
    server = AgentServer(AgentApp(FakeSource()), "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """True when the peer closed (EOF or reset) within ``wait`` seconds, after answering or not."""
    deadline = time.monotonic() + wait
    while True:
        readable, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True


def test_connections_over_the_cap_are_closed_at_once_and_served_again_later() -> None:
    with serving() as server:
        held = [_connect(server.port) for _ in range(DEFAULT_CAP)]
        try:
            with _connect(server.port) as extra:
                extra.settimeout(10)
                assert extra.recv(12) == b"HTTP/1.1 503"  # told why, then closed
                assert _closed_by_peer(extra, 10.0), "a connection over the cap was kept open"
            assert _get(held[0]).startswith(b"HTTP/1.1 200")  # those held are still served
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while True:  # the slots free up as their threads notice the closes
            with _connect(server.port) as again:
                try:
                    if _get(again).startswith(b"HTTP/1.1 200"):
                        break
                except ConnectionResetError:
                    pass
            assert time.monotonic() < deadline, "slots never freed"
            time.sleep(0.05)


def test_a_request_head_trickled_byte_by_byte_is_cut_at_the_deadline() -> None:
    """One byte now and then used to reset the per-recv timeout forever (slowloris)."""
    with serving(idle_timeout=1.0) as server, _connect(server.port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        for _ in range(80):  # 20 s of trickling, a byte every 0.25 s
            if _closed_by_peer(sock, 0.25):
                return
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                return
        pytest.fail("the server kept a trickling connection for 20 s (idle_timeout 1 s)")


def test_a_kept_alive_connection_ends_at_its_max_age() -> None:
    with serving(max_age=1.0, idle_timeout=10.0) as server, _connect(server.port) as sock:
        for _ in range(100):  # 20 s of requests, one every 0.2 s
            try:
                if not _get(sock).startswith(b"HTTP/1.1 200"):
                    return  # closed by the server
            except (BrokenPipeError, ConnectionResetError):
                return
            if _closed_by_peer(sock, 0.2):
                return
        pytest.fail("a kept-alive connection outlived max_age (1 s) by far")


@pytest.fixture
def tls(tmp_path: Path) -> ssl.SSLContext:
    needs_tool("openssl")
    cert, key = tmp_path / "agent.pem", tmp_path / "agent.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return make_ssl_context(str(cert), str(key))


def test_a_trickled_tls_handshake_is_cut_at_max_age(tls: ssl.SSLContext) -> None:
    with (
        serving(ssl_context=tls, max_age=1.0, idle_timeout=1.0) as server,
        _connect(server.port) as sock,
    ):
        hello = bytes.fromhex("16030100c8010000c40303") + bytes(200)  # a ClientHello, slowly
        for byte in hello[:80]:
            if _closed_by_peer(sock, 0.25):
                return
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return
        pytest.fail("the server kept a trickled TLS handshake for 20 s (max_age 1 s)")
