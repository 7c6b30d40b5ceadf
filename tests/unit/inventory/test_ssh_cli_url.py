"""``piman ssh run --url``: the request it posts and how it prints the manager's NDJSON stream
(a real HTTP server on loopback that answers as POST /api/v1/ssh/run does)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from piman.cli.app import app

runner = CliRunner()

LINES: list[dict[str, Any]] = [
    {"node": "pi10", "host": "198.18.0.20", "exit_status": None, "stdout": "", "stderr": "",
     "error": "connection refused", "elapsed": 0.01, "truncated": False},
    {"node": "pi2", "host": "198.18.0.12", "exit_status": 0, "stdout": "same\n",
     "stderr": "warning\n", "error": None, "elapsed": 0.2, "truncated": False},
    {"node": "pi1", "host": "198.18.0.11", "exit_status": 0, "stdout": "same\n",
     "stderr": "warning\n", "error": None, "elapsed": 0.3, "truncated": False},
    {"summary": {"total": 3, "ok": 2, "failed": 1}},
]  # fmt: skip


@pytest.fixture
def manager() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    posted: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posted.append({"path": self.path, "auth": self.headers["Authorization"],
                           "body": json.loads(body)})  # fmt: skip
            if self.path != "/api/v1/ssh/run":
                self.send_error(404)
                return
            if "nosuch" in json.loads(body)["targets"]:
                data = json.dumps({"detail": "no node, port or group named nosuch"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.end_headers()
            for line in LINES:
                self.wfile.write((json.dumps(line) + "\n").encode())
                self.wfile.flush()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posted
    finally:
        server.shutdown()
        server.server_close()


def run(url: str, *args: str) -> Any:
    return runner.invoke(
        app, ["ssh", "run", *args, "--url", url, "--token", "t0k"], env={"COLUMNS": "200"}
    )


def test_url_mode_posts_the_run_and_prints_each_host(
    manager: tuple[str, list[dict[str, Any]]],
) -> None:
    url, posted = manager
    r = run(url, "uptime", "pi1", "pi2", "pi10", "--timeout", "5", "--concurrency", "2")
    assert posted == [
        {
            "path": "/api/v1/ssh/run",
            "auth": "Bearer t0k",
            "body": {
                "command": "uptime",
                "targets": ["pi1", "pi2", "pi10"],
                "reserved": False,
                "command_timeout": 5.0,
                "concurrency": 2,
            },
        }
    ]
    assert r.exit_code == 1  # pi10 failed
    assert "pi2: same\npi1: same\n" in r.stdout
    assert "pi1: warning\n" in r.stderr
    assert "pi2: warning\n" in r.stderr
    assert "error: pi10: connection refused\n" in r.stderr
    table = r.stdout[r.stdout.index("2 of 3 hosts ok") :].splitlines()
    assert [ln.split("│")[0].strip() for ln in table[3:]] == ["pi1", "pi2", "pi10"]


def test_url_mode_groups_identical_output(manager: tuple[str, list[dict[str, Any]]]) -> None:
    url, posted = manager
    r = run(url, "uptime", "--reserved", "--group")
    assert posted[0]["body"]["reserved"] is True
    assert posted[0]["body"]["targets"] == []
    assert "==> pi1, pi2 (2) <==\nsame\n" in r.stdout
    assert r.stderr.count("warning\n") == 1
    assert "pi10" not in r.stdout.split("hosts ok")[0]  # it said nothing: no block


def test_url_mode_refusals_are_one_line(manager: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = manager
    r = run(url, "uptime", "nosuch")
    assert r.exit_code == 2
    assert "no node, port or group named nosuch" in r.output
    assert "Traceback" not in r.output
