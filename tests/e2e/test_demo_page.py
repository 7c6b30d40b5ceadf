"""The demo's web page in a real headless Chromium: the node table shows the demo's nodes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, needs_tool

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "piman",
                "demo",
                "--nodes",
                "12",
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "demo"),
            ],
            stdout=err,
            stderr=subprocess.STDOUT,
        )
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


def test_node_table_shows_the_demo_nodes_and_refreshes(demo: str, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        needs_tool("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(demo)
            rows = page.locator("#nodes tbody tr[data-node]")
            assert rows.count() == 12
            names = rows.locator("td.name").all_inner_texts()
            assert names[0] == "rack1-pi01"
            assert "rack2-pi06" in names
            first = rows.first.inner_text()
            assert "b8:27:eb" in first
            assert "pi3b+" in first
            # The table refreshes itself: wait for one refresh and check it still holds the nodes.
            page.wait_for_function(
                "() => new Promise(r => document.getElementById('nodes')"
                ".addEventListener('piman:refreshed', () => r(true), {once: true}))",
                timeout=10_000,
            )
            assert page.locator("#nodes tbody tr[data-node]").count() == 12
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            foreign = [u for u in requests if not u.startswith(demo)]
            assert foreign == [], "the page loaded something from elsewhere"
        finally:
            browser.close()
