"""``monitoring.forward_url`` may hold credentials: a failed forward is logged without them.

The peer is a real VictoriaMetrics behind HTTP basic auth; httpx's own error for a 401 quotes
the whole URL (user, password, path, query), which is what the log used to show.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from piman.monitor.export import VictoriaForwarder
from tests.support import free_port, needs_tool

SECRETS = ("hunter2", "wrongpass", "S3CRET", "T0KEN")


class Exposition:
    """What the forwarder asks of the scraper: one cycle's samples as Prometheus text."""

    def exposition(self, batches: Any) -> str:
        return "node_load1 0.75\n"


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[str]:
    """VictoriaMetrics on 127.0.0.1 that wants user ``piman``, password ``hunter2``."""
    needs_tool("victoria-metrics")
    port = free_port()
    proc = subprocess.Popen(
        [
            "victoria-metrics",
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={tmp_path / 'vm'}",
            "-httpAuth.username=piman",
            "-httpAuth.password=hunter2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1, auth=("piman", "hunter2")).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "victoria-metrics did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


async def test_a_failed_forward_is_logged_without_the_urls_secrets(
    victoria: str, caplog: pytest.LogCaptureFixture
) -> None:
    host = victoria.removeprefix("http://")
    path = "/api/v1/import/prometheus?extra_label=site%3DS3CRET&token=T0KEN"
    closed = f"127.0.0.1:{free_port()}"
    wrong = VictoriaForwarder(f"http://piman:wrongpass@{host}{path}", Exposition())  # type: ignore[arg-type]
    down = VictoriaForwarder(f"http://piman:hunter2@{closed}{path}", Exposition())  # type: ignore[arg-type]
    right = VictoriaForwarder(f"http://piman:hunter2@{host}{path}", Exposition())  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="piman"):
        await wrong.send([])
        await down.send([])
        await right.send([])
    assert (wrong.failed, down.failed, right.failed, right.sent) == (1, 1, 0, 1)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("piman")]
    assert lines == [
        f"forward to http://{host}/… failed, cycle dropped: answered 401",
        f"forward to http://{closed}/… failed, cycle dropped: ConnectError: All connection "
        "attempts failed",
    ]
    assert not [s for s in SECRETS if s in caplog.text]
