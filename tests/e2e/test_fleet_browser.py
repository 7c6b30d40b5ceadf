"""The fleet and node pages in a real headless Chromium, over a 2,000-node manager.

A real `piman server` over 2,000 declared nodes (tests/e2e/bigfleet.py; power by the
``command`` driver, the first node's agent a real `piman agent`): the fleet page carries one
page of rows, a filter typed at the keyboard narrows them on the server, the node page draws
its charts from the collector's store, and power changes made elsewhere (another client of the
API) reach the open page by themselves, also after the manager was restarted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.bigfleet import Fleet, running_fleet
from tests.support import CHROMIUM, CHROMIUM_ARGS, api_token, bearer, log_in, needs_chromium


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    needs_chromium()
    with running_fleet(tmp_path / "fleet", 2000, agent=True) as running:
        yield running


def power(fleet: Fleet, token: str, node: str, action: str) -> None:
    response = httpx.post(
        f"{fleet.url}/api/v1/nodes/{node}/power",
        json={"action": action},
        headers=bearer(token),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def test_fleet_and_node_pages_of_2000_nodes_stay_live(fleet: Fleet, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    token = api_token(fleet.url, "admin", fleet.password)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("dialog", lambda dialog: dialog.accept())
            log_in(page, fleet.url, "admin", fleet.password)
            rows = page.locator("#nodes tbody tr[data-node]")
            assert rows.count() == 50  # one page of the 2,000
            assert page.inner_text("#fleet .count") == "2000 nodes, rows 1–50"
            expect(page.locator("#live")).to_have_text("live")

            # Filter from the keyboard: a switch, then a search, each answered by the server.
            page.select_option("select[name=switch]", "rack07")
            page.focus("input[name=q]")
            page.keyboard.type("p1")
            page.keyboard.press("Enter")
            page.wait_for_url(re.compile(r".*switch=rack07.*"))
            names = rows.locator("td.name").all_inner_texts()
            assert names == [f"rack07-p{i}" for i in range(10, 20)]
            assert page.inner_text("#fleet .count") == "10 of 2000 nodes"

            # A change made elsewhere reaches the open fleet page by itself.
            row = page.locator('#nodes tr[data-node="rack07-p12"]')
            power(fleet, token, "rack07-p12", "off")
            expect(row.locator(".power")).to_have_text("off", timeout=5_000)
            page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)

            # The node page of the node with an agent: charts fill in as the collector scrapes.
            page.goto(fleet.url + "/?q=rack01-p01")
            page.click('#nodes a[href="/nodes/rack01-p01"]')
            page.wait_for_url(fleet.url + "/nodes/rack01-p01")
            cpu = page.locator('svg.chart[data-metric="cpu_percent"]')
            expect(cpu).to_have_count(1)
            page.wait_for_function(
                """() => Number(document.querySelector('svg.chart[data-metric="cpu_percent"]')
                   .dataset.points) >= 1""",
                timeout=15_000,
            )  # drawn from the store's samples (the page re-fetches them after each scrape)
            assert page.locator("svg.chart").count() == 5
            # Its own buttons act, and the outcome shows; the audit log lists it.
            page.click('button.power-btn[data-action="off"]')
            expect(page.locator("#node-power")).to_have_text("power off", timeout=5_000)
            expect(page.locator("#audit")).to_contain_text("port.off", timeout=5_000)
            page.screenshot(path=str(tmp_path / "node.png"), full_page=True)

            # The manager restarts: the page reconnects by itself and shows what changed.
            fleet.stop()
            expect(page.locator("#live")).to_have_text("reconnecting…", timeout=10_000)
            fleet.start()
            power(fleet, token, "rack01-p01", "on")
            expect(page.locator("#node-power")).to_have_text("power on", timeout=15_000)
            expect(page.locator("#live")).to_have_text("live")

            # Readable on a phone: nothing wider than the screen but the table's own scroller.
            page.set_viewport_size({"width": 390, "height": 844})
            page.goto(fleet.url + "/")
            wide = page.evaluate(
                """() => [...document.querySelectorAll("body *")]
                   .filter(e => e.getBoundingClientRect().right > 390 && !e.closest(".table-wrap"))
                   .map(e => e.tagName + "." + e.className)"""
            )
            assert wide == []
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
            foreign = [u for u in requests if not u.startswith(fleet.url)]
            assert foreign == [], "the pages loaded something from elsewhere"
        finally:
            browser.close()
