"""The node table's power buttons in headless Chromium, against `piman demo`'s virtual switches."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.power.snmpsim import RFC, snmpget
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    api_token,
    demo_logins,
    log_in,
    needs_chromium,
    needs_tool,
    running_demo,
)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "demo"
    with running_demo(root, nodes=4) as url:
        yield url, root / "piman.yaml"


def test_off_and_on_buttons_switch_the_port(demo: tuple[str, Path]) -> None:
    needs_chromium()
    needs_tool("snmpget")
    from playwright.sync_api import sync_playwright

    url, config_path = demo
    config = yaml.safe_load(config_path.read_text())
    rack1 = next(s for s in config["switches"] if s["name"] == "rack1")
    snmp_port = rack1["snmp"]["port"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            log_in(page, url, "operator", demo_logins(config_path.parent)["operator"])
            row = page.locator('#nodes tbody tr[data-node="rack1-pi02"]')
            with page.expect_response(lambda r: r.url.endswith("/power")) as response:
                row.locator('button[data-action="off"]').click()
            assert response.value.status == 200
            assert response.value.json()["state"] == "off"
            assert snmpget(snmp_port, "private", f"{RFC}.3.1.2") == "2"
            page.wait_for_function(
                "() => document.querySelector('tr[data-node=\"rack1-pi02\"] .power')"
                ".textContent.trim() === 'off'",
                timeout=15_000,
            )
            row = page.locator('#nodes tbody tr[data-node="rack1-pi02"]')
            with page.expect_response(lambda r: r.url.endswith("/power")) as response:
                row.locator('button[data-action="on"]').click()
            assert response.value.status == 200
            assert snmpget(snmp_port, "private", f"{RFC}.3.1.2") == "1"
        finally:
            browser.close()


def test_cli_goes_through_a_running_manager_with_url(demo: tuple[str, Path]) -> None:
    needs_tool("snmpget")
    url, config_path = demo
    config = yaml.safe_load(config_path.read_text())
    rack2 = next(s for s in config["switches"] if s["name"] == "rack2")
    piman = [sys.executable, "-m", "piman", "power"]
    token = api_token(url, "operator", demo_logins(config_path.parent)["operator"])
    env = {**os.environ, "PIMAN_TOKEN": token, "COLUMNS": "200"}
    result = subprocess.run(
        [*piman, "off", "rack2-pi01", "--url", url], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "rack2-pi01 (rack2:1): off" in result.stdout
    assert snmpget(rack2["snmp"]["port"], "private", f"{RFC}.3.1.1") == "2"
    result = subprocess.run(
        [*piman, "status", "all", "--url", url], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "rack2-pi01" in result.stdout
    result = subprocess.run(
        [*piman, "on", "nope", "--url", url], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "nope" in result.stderr
