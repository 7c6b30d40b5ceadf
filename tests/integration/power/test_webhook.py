"""The webhook driver against a real HTTP server on 127.0.0.1, through the controller."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from piman.config.models import Config
from piman.power.controller import PowerController


class Hook:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[int] = []  # statuses to answer, in order; then 204


@pytest.fixture
def hook() -> Iterator[tuple[Hook, str]]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((self.headers.get("Authorization", ""), json.loads(body)))
            self.send_response(state.statuses.pop(0) if state.statuses else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/poe"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def config(tmp: Path, url: str) -> Config:
    return Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp)},
            "switches": [
                {
                    "name": "unifi",
                    "driver": "webhook",
                    "webhook_url": url,
                    "webhook_token": "s3cret-token",
                    "off_seconds": 0,
                }
            ],
            "nodes": [{"name": "pi7", "switch": "unifi", "port": 7, "ip": "198.18.0.17"}],
        }
    )


async def test_cycle_posts_off_then_on_with_the_token(
    hook: tuple[Hook, str], tmp_path: Path
) -> None:
    state, url = hook
    c = PowerController(config(tmp_path, url), retry_delays=(0.05,))
    try:
        [o] = await c.run("cycle", c.resolve(["pi7"]))
    finally:
        await c.close()
    assert o.ok, o.error
    assert [(auth, body["state"], body["port"], body["node"]) for auth, body in state.requests] == [
        ("Bearer s3cret-token", "off", 7, "pi7"),
        ("Bearer s3cret-token", "on", 7, "pi7"),
    ]


async def test_server_errors_are_retried_client_errors_are_not(
    hook: tuple[Hook, str], tmp_path: Path
) -> None:
    state, url = hook
    state.statuses = [503, 204, 403]
    c = PowerController(config(tmp_path, url), retry_delays=(0.05, 0.05))
    try:
        [ok] = await c.run("off", c.resolve(["pi7"]))
        [refused] = await c.run("on", c.resolve(["pi7"]))
    finally:
        await c.close()
    assert ok.ok, ok.error
    assert not refused.ok
    assert "403" in (refused.error or "")
    assert "s3cret" not in (refused.error or "")
    assert len(state.requests) == 3
