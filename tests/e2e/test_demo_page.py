"""The demo's web page in a real headless Chromium: the node table shows the demo's nodes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    demo_logins,
    log_in,
    needs_chromium,
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
