"""A user's reservation from start to end in a real headless Chromium, on the demo fleet.

alice (role ``user``) logs in, reserves 2 virtual Pis for 30 min with the demo's environment
from the reservations page, watches the node pages until both are ``deployed`` (the virtual
Pis really run the installer against their SD card files), extends by 1 h and releases; the
nodes are then switched off on the virtual switch. bob, another user, sees alice's bookings
in the calendar but no button on them, is refused their node pages, and the API refuses him
too (403).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    demo_logins,
    needs_chromium,
    needs_tool,
    running_demo,
    session_client,
)

BOB = ("bob", "bob-password-2026")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[str]:
    with running_demo(tmp_path / "demo", nodes=4) as url:
        yield url


def log_in(page: object, url: str, user: str, password: str) -> None:
    """The login form, as a person fills it in, then the reservations page."""
    page.goto(url + "login?next=/reservations")  # type: ignore[attr-defined]
    page.fill("#username", user)  # type: ignore[attr-defined]
    page.fill("#password", password)  # type: ignore[attr-defined]
    page.click("#login button[type=submit]")  # type: ignore[attr-defined]
    page.wait_for_url(url + "reservations", timeout=15_000)  # type: ignore[attr-defined]


def wait_until(check: object, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_user_reserves_deploys_extends_and_releases_and_another_cannot_touch_it(
    demo: str, tmp_path: Path
) -> None:
    needs_chromium()
    needs_tool("busybox", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
    from playwright.sync_api import sync_playwright

    logins = demo_logins(tmp_path / "demo")
    with session_client(demo, "admin", logins["admin"]) as admin:
        made = admin.post(
            "/api/v1/users",
            json={"name": BOB[0], "role": "user", "password": BOB[1]},
            headers={"Origin": demo.rstrip("/")},
        )
        assert made.status_code == 201, made.text
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                alice = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                alice.on("dialog", lambda d: d.accept())
                log_in(alice, demo, "alice", logins["alice"])
                # The demo imports its OS image in the background: the form offers it once ready.
                deadline = time.monotonic() + 30
                while "demo-os" not in alice.locator("#reserve-form").inner_text():
                    assert time.monotonic() < deadline, "the demo environment never appeared"
                    alice.reload()
                alice.fill("#reserve-form input[name=count]", "2")
                alice.select_option("#reserve-form select[name=duration]", "30m")
                alice.select_option("#reserve-form select[name=environment]", "demo-os")
                alice.press("#reserve-form input[name=count]", "Enter")  # the keyboard submits
                alice.wait_for_function(
                    "() => document.getElementById('reserve-msg')"
                    ".textContent.startsWith('Reserved')",
                    timeout=15_000,
                )
                alice.screenshot(path=str(tmp_path / "reserved.png"), full_page=True)
                row = alice.locator("#reservation-list tbody tr[data-reservation]")
                row.first.wait_for(timeout=10_000)
                assert row.count() == 1
                ident = row.first.get_attribute("data-reservation")
                nodes = row.first.locator("td").nth(2).locator("a").all_inner_texts()
                assert len(nodes) == 2
                booked = admin.get(f"/api/v1/reservations/{ident}").json()
                assert booked["state"] == "active"
                assert sorted(booked["nodes"]) == sorted(nodes)
                ends = datetime.fromisoformat(booked["end_at"])
                start = datetime.fromisoformat(booked["start_at"])
                assert (ends - start).total_seconds() == 1800
                # Both node pages show the deployment reach `deployed`.
                for node in nodes:
                    alice.goto(f"{demo}nodes/{node}")
                    alice.wait_for_function(
                        "() => document.getElementById('node-state').textContent === 'deployed'",
                        timeout=90_000,
                    )
                    assert "held by alice" in alice.locator(".node-head").inner_text()
                    history = alice.locator("section[data-part=deployments]").inner_text()
                    assert "demo-os" in history
                # An operator powers alice's node: her open page shows it by itself.
                same = {"Origin": demo.rstrip("/")}
                for action in ("off", "on"):
                    done = admin.post(
                        f"/api/v1/nodes/{nodes[-1]}/power", json={"action": action}, headers=same
                    )
                    assert done.status_code == 200, done.text
                    alice.wait_for_function(
                        "(want) => document.getElementById('node-power').textContent"
                        " === 'power ' + want",
                        arg=action,
                        timeout=10_000,
                    )
                # Extend by 1 h from the reservations page.
                alice.goto(f"{demo}reservations")
                mine = alice.locator(f'#reservation-list tr[data-reservation="{ident}"]')
                mine.locator(".extend-by").select_option("1h")
                mine.locator("button.res-extend").click()
                alice.wait_for_function(
                    f"() => document.querySelector('tr[data-reservation=\"{ident}\"] .res-msg')"
                    ".textContent.startsWith('until')",
                    timeout=15_000,
                )
                extended = admin.get(f"/api/v1/reservations/{ident}").json()
                later = datetime.fromisoformat(extended["end_at"])
                assert (later - ends).total_seconds() == 3600

                # An operator books a node for bob: alice's open calendar shows it by itself.
                for_bob = admin.post(
                    "/api/v1/reservations",
                    json={"count": 1, "duration": "1h", "owner": "bob"},
                    headers=same,
                )
                assert for_bob.status_code == 201, for_bob.text
                (bobs,) = for_bob.json()["nodes"]
                alice.wait_for_selector(
                    f'#calendar tr[data-node="{bobs}"] .cal-bar:not(.mine)', timeout=10_000
                )
                assert (
                    alice.locator(f'#calendar tr[data-node="{bobs}"] .cal-bar').inner_text()
                    == "bob"
                )

                # bob sees the bookings in the calendar, no button on them, and is refused.
                bob = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
                log_in(bob, demo, *BOB)
                for node in nodes:
                    bar = bob.locator(f'#calendar tr[data-node="{node}"] .cal-bar')
                    assert bar.first.inner_text() == "alice"
                    assert "mine" not in (bar.first.get_attribute("class") or "")
                # bob's buttons are on his own reservation only.
                theirs = bob.locator("#reservation-list tr[data-reservation]")
                assert theirs.count() == 1
                assert theirs.first.get_attribute("data-reservation") == str(for_bob.json()["id"])
                assert bob.locator(f'tr[data-reservation="{ident}"]').count() == 0
                assert bob.locator("button.res-release").count() == 1
                assert bob.locator("#reserve-next").count() == 0
                # Two more nodes now: one is free, so the page offers the next free slot.
                bob.fill("#reserve-form input[name=count]", "2")
                bob.select_option("#reserve-form select[name=duration]", "1h")
                bob.click("#reserve-go")
                bob.wait_for_selector("#reserve-next", timeout=15_000)
                assert "reserved" in bob.locator("#reserve-msg").inner_text()
                bob.click("#reserve-next")
                bob.wait_for_function(
                    "() => document.getElementById('reserve-msg').textContent"
                    ".startsWith('Reserved')",
                    timeout=15_000,
                )
                bob.wait_for_selector("#reservation-list .res-scheduled", timeout=10_000)
                assert theirs.count() == 2
                bob.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
                refused = bob.goto(f"{demo}nodes/{nodes[0]}")
                assert refused is not None
                assert refused.status == 403
                bob.close()
                with session_client(demo, *BOB) as api:
                    for url, body in [
                        (f"/api/v1/reservations/{ident}/release", {}),
                        (f"/api/v1/reservations/{ident}/extend", {"by": "1h"}),
                        (f"/api/v1/nodes/{nodes[0]}/power", {"action": "off"}),
                        ("/api/v1/deployments", {"nodes": [nodes[0]], "environment": "demo-os"}),
                    ]:
                        got = api.post(url, json=body, headers=same)
                        assert got.status_code == 403, (url, got.status_code, got.text)

                # alice releases: the nodes are switched off on the virtual switch.
                alice.goto(f"{demo}reservations")
                alice.locator(f'tr[data-reservation="{ident}"] button.res-release').click()
                alice.wait_for_function(
                    f"() => !document.querySelector('tr[data-reservation=\"{ident}\"]')",
                    timeout=20_000,
                )
                assert "released" in alice.locator("#reserve-msg").inner_text()
                alice.screenshot(path=str(tmp_path / "reservations.png"), full_page=True)
            finally:
                browser.close()

        def off() -> bool:
            states = []
            for node in nodes:
                got = admin.get(f"/api/v1/nodes/{node}/power")
                states.append(got.json().get("state") if got.status_code == 200 else None)
            return states == ["off", "off"]

        wait_until(off, "the released nodes were not switched off", 30)
        ended = admin.get(f"/api/v1/reservations/{ident}").json()
        assert ended["state"] == "released"
