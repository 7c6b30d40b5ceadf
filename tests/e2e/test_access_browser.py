"""Access control in a real headless Chromium against `piman demo` and its virtual switches.

Login (a wrong password, the throttle, logout), what a viewer and an operator see, and the
attacks the control plane must stop: a page on another origin that fires ``sendBeacon``,
``fetch`` and a form at the manager through the operator's browser, and a DNS-rebinding page
(a foreign name that resolves to the manager: Chromium's resolver is told so).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.power.snmpsim import RFC, snmpget
from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    demo_logins,
    free_port,
    log_in,
    needs_chromium,
    needs_tool,
    running_demo,
)

ATTACK = """<!doctype html><html><body><p>cute cats</p>
<iframe name="sink" style="display:none"></iframe>
<form id="f" method="POST" action="{manager}/api/v1/nodes/rack1-pi03/power" target="sink"
      enctype="text/plain"><input name='{{"action":"off","x":"' value='"}}'></form>
<script>
const target = "{manager}/api/v1/nodes/rack1-pi03/power";
const body = JSON.stringify({{action: "off"}});
navigator.sendBeacon(target, body);
navigator.sendBeacon(target, new Blob([body], {{type: "text/plain"}}));
fetch(target, {{method: "POST", mode: "no-cors", credentials: "include", body,
               headers: {{"Content-Type": "text/plain"}}}}).catch(() => {{}});
fetch("{manager}/api/v1/power", {{method: "POST", mode: "no-cors", credentials: "include",
      body: JSON.stringify({{action: "off", targets: ["all"]}})}}).catch(() => {{}});
// No body, so no content type to refuse: only the Origin check stands (a CSRF logout).
fetch("{manager}/api/v1/auth/logout", {{method: "POST", mode: "no-cors",
      credentials: "include"}}).catch(() => {{}});
setTimeout(() => {{ document.getElementById("f").submit(); document.title = "fired"; }}, 500);
</script></body></html>"""


class Attacker:
    """A web page on another origin (another port of 127.0.0.1)."""

    def __init__(self, manager: str) -> None:
        page = ATTACK.format(manager=manager.rstrip("/")).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "demo"
    with running_demo(root, nodes=6) as url:
        yield url, root


def port_state(config: Path, switch: str, port: int) -> str:
    data = yaml.safe_load(config.read_text())
    snmp_port = next(s for s in data["switches"] if s["name"] == switch)["snmp"]["port"]
    return snmpget(snmp_port, "private", f"{RFC}.3.1.{port}")


def test_login_roles_and_cross_origin_attacks_in_chromium(demo: tuple[str, Path]) -> None:
    needs_chromium()
    needs_tool("snmpget")
    from playwright.sync_api import sync_playwright

    url, root = demo
    config = root / "piman.yaml"
    logins = demo_logins(root)
    manager_port = url.rstrip("/").rsplit(":", 1)[1]
    attacker = Attacker(url)
    args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.example 127.0.0.1"]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            try:
                context = browser.new_context()
                page = context.new_page()
                # Not logged in: the fleet page sends the browser to the login form.
                page.goto(url)
                assert page.url.startswith(url + "login")
                # A wrong password: one generic line, still on the form.
                page.fill("#username", "operator")
                page.fill("#password", "not-the-password")
                page.click("#login button[type=submit]")
                page.wait_for_function(
                    "() => document.querySelector('.login-msg').textContent.length > 0"
                )
                assert page.inner_text(".login-msg") == "wrong user name or password"
                assert page.url.startswith(url + "login")
                # Guessing is throttled: after 5 failures for a name, the 6th try waits.
                for _ in range(6):
                    page.fill("#username", "nobody")
                    page.fill("#password", "guess")
                    with page.expect_response(lambda r: r.url.endswith("/auth/login")) as rsp:
                        page.click("#login button[type=submit]")
                last = rsp.value
                assert last.status == 429
                page.wait_for_function(
                    "() => document.querySelector('.login-msg').textContent.includes('too many')"
                )

                # A viewer sees the fleet and no power buttons.
                log_in(page, url, "viewer", logins["viewer"])
                assert page.locator("#nodes tbody tr[data-node]").count() == 6
                assert page.locator("button.power-btn").count() == 0
                assert "viewer (viewer)" in page.inner_text("header")
                page.click("#logout")
                page.wait_for_url(url + "login", timeout=15_000)
                page.goto(url)
                assert page.url.startswith(url + "login")  # the session really ended

                # An operator's buttons switch the port on the virtual switch.
                page.on("dialog", lambda dialog: dialog.accept())
                log_in(page, url, "operator", logins["operator"])
                assert port_state(config, "rack1", 2) == "1"
                row = page.locator('#nodes tbody tr[data-node="rack1-pi02"]')
                with page.expect_response(lambda r: r.url.endswith("/power")) as response:
                    row.locator('button[data-action="off"]').click()
                assert response.value.status == 200
                assert port_state(config, "rack1", 2) == "2"

                # The same logged-in browser visits a page on another origin that fires at the
                # manager (a beacon, no-cors fetches, a form): no port moves.
                attack = context.new_page()
                attack.goto(attacker.url)
                attack.wait_for_function("() => document.title === 'fired'", timeout=15_000)
                time.sleep(2)  # beacons are sent in the background
                assert port_state(config, "rack1", 3) == "1"
                assert [port_state(config, "rack2", n) for n in (1, 2, 3)] == ["1", "1", "1"]
                assert port_state(config, "rack1", 1) == "1"
                page.goto(url)  # the operator is still logged in: the logout was refused too
                assert page.url == url
                assert page.locator("button.power-btn").count() > 0
                log = (root.parent / f"{root.name}.log").read_text()
                for path in (
                    "/api/v1/nodes/rack1-pi03/power",
                    "/api/v1/power",
                    "/api/v1/auth/logout",
                ):
                    assert f"POST {path} refused" in log, path  # they arrived, and were refused

                # DNS rebinding: a name of the attacker's that resolves to the manager.
                rebound = page.goto(f"http://rebind.example:{manager_port}/api/v1/nodes")
                assert rebound is not None
                assert rebound.status == 400
                assert "does not answer to host" in rebound.text()
            finally:
                browser.close()
    finally:
        attacker.close()
    # Outside a browser, the same foreign Host header is refused too.
    foreign = httpx.get(url + "healthz", headers={"Host": "rebind.example"})
    assert foreign.status_code == 400
