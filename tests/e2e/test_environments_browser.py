"""The environments page's upload in a real headless Chromium, on the demo: an operator picks
the demo's OS image file, the progress bar fills (XMLHttpRequest upload events) and the new
environment is listed; a viewer gets the list without the form."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from piman.sim.image import build_demo_image
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    demo_logins,
    needs_chromium,
    needs_tool,
    running_demo,
)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    with running_demo(tmp_path / "demo", nodes=1) as url:
        yield url


def log_in(page: object, url: str, user: str, password: str) -> None:
    page.goto(url + "login?next=/environments")  # type: ignore[attr-defined]
    page.fill("#username", user)  # type: ignore[attr-defined]
    page.fill("#password", password)  # type: ignore[attr-defined]
    page.click("#login button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(url + "environments", timeout=15_000)  # type: ignore[attr-defined]


def test_an_operator_uploads_an_image_with_a_progress_bar_and_it_is_listed(
    demo: str, tmp_path: Path
) -> None:
    needs_chromium()
    needs_tool("sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
    from playwright.sync_api import sync_playwright

    root = tmp_path / "demo"
    image = build_demo_image(tmp_path / "demo-os.img")  # the demo's OS, as a file to pick
    logins = demo_logins(root)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            log_in(page, demo, "operator", logins["operator"])
            page.set_input_files("#upload-file", str(image))
            assert page.input_value("#upload-name") == "demo-os"  # named after the file
            page.fill("#upload-name", "lab-os")
            page.fill("#upload-form input[name=description]", "uploaded from a browser")
            page.press("#upload-name", "Enter")
            page.wait_for_function(
                "() => document.getElementById('upload-msg').textContent"
                ".startsWith('lab-os added')",
                timeout=60_000,
            )
            assert page.locator("#upload-progress").get_attribute("value") is not None
            assert page.eval_on_selector("#upload-progress", "p => p.value") == 100
            row = page.locator('#environment-list tr[data-environment="lab-os"]')
            row.wait_for(timeout=10_000)
            assert "uploaded from a browser" in row.inner_text()
            assert "operator" in row.inner_text()
            viewer = browser.new_page()
            log_in(viewer, demo, "viewer", logins["viewer"])
            assert viewer.locator('tr[data-environment="lab-os"]').count() == 1
            assert viewer.locator("#upload-form").count() == 0
        finally:
            browser.close()
