"""The demo's web page in a real headless Chromium: the node table shows the demo's nodes.

With ``PIMAN_SCREENSHOTS=DIR`` the reinstall test also saves the README's screenshots there
(``fleet.png``, ``node.png``, at 1280×800): ``PIMAN_SCREENSHOTS=docs/screenshots pytest
tests/e2e/test_demo_page.py`` remakes them from the demo."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    demo_logins,
    log_in,
    needs_chromium,
    needs_tool,
    running_demo,
)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    with running_demo(tmp_path / "demo", nodes=12) as url:
        yield url


def test_node_table_shows_the_demo_nodes_and_refreshes(demo: str, tmp_path: Path) -> None:
    needs_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            log_in(page, demo, "viewer", demo_logins(tmp_path / "demo")["viewer"])
            rows = page.locator("#nodes tbody tr[data-node]")
            assert rows.count() == 12
            names = rows.locator("td.name").all_inner_texts()
            assert names[0] == "rack1-pi01"
            assert "rack2-pi06" in names
            first = rows.first.inner_text()
            assert "pi3b+" in first
            # The MAC column shows on a wide screen (narrower ones leave it to the node page).
            page.set_viewport_size({"width": 1600, "height": 900})
            assert "b8:27:eb" in rows.first.inner_text()
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


def test_an_operator_reinstalls_a_virtual_pi_from_the_page(demo: str, tmp_path: Path) -> None:
    """Deploy → the dialog → the progress cell moves → the node comes back deployed; the
    virtual Pi ran the real installer against its SD card file."""
    needs_chromium()
    needs_tool("busybox", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
    from playwright.sync_api import sync_playwright

    root = tmp_path / "demo"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            log_in(page, demo, "operator", demo_logins(root)["operator"])
            row = page.locator('#nodes tbody tr[data-node="rack1-pi02"]')
            # The demo imports its OS image in the background: the page lists it once ready.
            deadline = time.monotonic() + 30
            while "demo-os" not in page.locator("#deploy-env").inner_text():
                assert time.monotonic() < deadline, "the demo environment never appeared"
                page.reload()
            row.locator("button.deploy-btn").click()
            dialog = page.locator("#deploy-dialog")
            assert dialog.is_visible()
            assert "rack1-pi02" in dialog.inner_text()
            page.fill("#deploy-hostname", "lab-02")
            page.click("#deploy-go")
            # The progress cell shows a bar while it runs, then the outcome.
            page.wait_for_selector(
                '#nodes tr[data-node="rack1-pi02"] td.deployment progress', timeout=20_000
            )
            page.wait_for_selector(
                '#nodes tr[data-node="rack1-pi02"] td.deployment .deploy-ok', timeout=90_000
            )
            assert "demo-os: ok" in row.locator("td.deployment").inner_text()
            assert "deployed" in row.locator("td").nth(1).inner_text()
            shots = Path(os.environ.get("PIMAN_SCREENSHOTS") or tmp_path)
            shots.mkdir(parents=True, exist_ok=True)
            page.set_viewport_size({"width": 1280, "height": 800})
            # The agents' figures reach the open page by themselves (every node answers).
            page.wait_for_function(
                """() => [...document.querySelectorAll('#nodes tbody tr[data-node]')]
                   .every(r => /%/.test(r.querySelector('td.metric').textContent))""",
                timeout=60_000,
            )
            # At 1280 pixels the fleet table fits: nothing to scroll sideways to.
            widths = page.evaluate(
                "() => { const w = document.querySelector('.table-wrap');"
                " return [w.scrollWidth, w.clientWidth]; }"
            )
            assert widths[0] <= widths[1], f"the table is {widths[0]} px wide in {widths[1]} px"
            page.screenshot(path=str(shots / "fleet.png"))
            # The node's own page: its charts fill from the demo agents' samples.
            page.goto(f"{demo.rstrip('/')}/nodes/rack1-pi02")
            assert "deployed" in page.locator("#node-state").inner_text()
            page.wait_for_function(
                """() => [...document.querySelectorAll('svg.chart')]
                   .filter(c => Number(c.dataset.points) >= 2).length >= 3""",
                timeout=60_000,
            )
            page.screenshot(path=str(shots / "node.png"), full_page=True)
        finally:
            browser.close()
    # The virtual SD card holds the image's partition table and boot partition now.
    card = (root / "sim" / "sd" / "rack1-pi02.img").read_bytes()
    assert card[510:512] == b"\x55\xaa"
    assert b"bootfs" in card[1 << 20 : (1 << 20) + 4096]
