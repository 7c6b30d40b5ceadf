"""The reservations page as a browser gets it: the calendar of nodes × time, the reserve form
for those who may reserve, Extend and Release on one's own reservations (any, for operators),
nothing to press for a viewer, and the live parts for the page's script.

The app is the real one on a real SQLite store with 60 nodes on two switches and the real
reservations service (power records what it is asked).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.access.reservations_service import ReservationService
from piman.config.models import Config
from piman.context import AppContext
from piman.fleet.reservations import Booking, NodeAvailability
from piman.store import Store, reconcile
from piman.web.app import create_app
from piman.web.ui.reservations_page import bars
from tests.integration.web.test_access_table import FakePower
from tests.support import grant

Rig = tuple[httpx.AsyncClient, dict[str, dict[str, str]], AppContext]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "switches": [{"name": f"rack{i}", "driver": "manual"} for i in (1, 2)],
            "nodes": [
                {
                    "name": f"rack{i % 2 + 1}-n{i:02d}",
                    "switch": f"rack{i % 2 + 1}",
                    "port": i // 2 + 1,
                    "model": "pi4" if i % 3 else "pi5",
                }
                for i in range(60)
            ],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    ctx.power = FakePower(config)
    ctx.reservations = ReservationService(config, store, power=ctx.power)
    headers = {}
    for name, role in (("ann", "user"), ("bob", "user"), ("vic", "viewer"), ("olga", "operator")):
        headers[name] = await grant(ctx, role, name)
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            yield client, headers, ctx
    finally:
        await store.close()


def calendar_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-node="([^"]+)"', html)


def buttons(html: str, kind: str) -> list[str]:
    """The reservation ids that carry a ``res-<kind>`` button."""
    return re.findall(rf'class="res-{kind}" data-id="(\d+)"', html)


async def reserve(client: httpx.AsyncClient, who: dict[str, str], **body: Any) -> dict[str, Any]:
    got = await client.post("/api/v1/reservations", json=body, headers=who)
    assert got.status_code == 201, got.text
    result: dict[str, Any] = got.json()
    return result


async def test_a_user_sees_the_calendar_the_form_and_buttons_on_their_own_only(rig: Rig) -> None:
    client, h, _ = rig
    ann = await reserve(client, h["ann"], count=2, model="pi5", duration="30m")
    bob = await reserve(client, h["bob"], count=1, switch="rack2", duration="2h")
    page = await client.get("/reservations", headers=h["ann"])
    assert page.status_code == 200
    html = page.text
    assert 'id="reserve-form"' in html
    assert "<option>pi5</option>" in html
    assert "<option>rack2</option>" in html
    assert 'name="owner"' not in html  # only operators book for someone else
    assert buttons(html, "extend") == [str(ann["id"])]
    assert buttons(html, "release") == [str(ann["id"])]
    assert f'data-reservation="{bob["id"]}"' not in html  # a user lists their own only
    # The calendar shows everyone's bookings: ann's as hers, bob's as someone else's.
    for node in ann["nodes"]:
        row = re.search(rf'<tr data-node="{node}".*?</tr>', html, re.S)
        assert row is not None
        assert 'class="cal-bar mine res-active"' in row.group(0)
        assert ">ann</span>" in row.group(0)
    (held,) = bob["nodes"]
    rack2 = (await client.get("/reservations?switch=rack2", headers=h["ann"])).text
    other = re.search(rf'<tr data-node="{held}".*?</tr>', rack2, re.S)
    assert other is not None
    assert 'class="cal-bar res-active"' in other.group(0)
    assert ">bob</span>" in other.group(0)
    # bob gets the buttons of his reservation, not ann's.
    theirs = (await client.get("/reservations", headers=h["bob"])).text
    assert buttons(theirs, "release") == [str(bob["id"])]


async def test_a_viewer_sees_availability_but_no_form_and_no_button(rig: Rig) -> None:
    client, h, _ = rig
    made = await reserve(client, h["ann"], count=1, duration="1h")
    html = (await client.get("/reservations", headers=h["vic"])).text
    assert 'id="reserve-form"' not in html
    assert "res-extend" not in html
    assert "res-release" not in html
    assert "<th>Actions</th>" not in html
    assert f'data-reservation="{made["id"]}"' in html  # readers see every reservation
    assert ">ann</span>" in html  # and the calendar


async def test_an_operator_gets_buttons_on_everyones_and_books_for_a_user(rig: Rig) -> None:
    client, h, _ = rig
    a = await reserve(client, h["ann"], count=1, duration="1h")
    b = await reserve(client, h["bob"], count=1, duration="1h")
    html = (await client.get("/reservations", headers=h["olga"])).text
    assert sorted(buttons(html, "release")) == sorted([str(a["id"]), str(b["id"])])
    assert 'name="owner"' in html


async def test_the_calendar_shows_a_page_of_nodes_filtered_and_the_live_parts_match(
    rig: Rig,
) -> None:
    client, h, _ = rig
    first = calendar_rows((await client.get("/reservations", headers=h["vic"])).text)
    assert len(first) == 25
    third = (await client.get("/reservations?page=3", headers=h["vic"])).text
    assert len(calendar_rows(third)) == 10
    assert "page 3 of 3" in third
    assert not set(calendar_rows(third)) & set(first)
    rack2 = (await client.get("/reservations?switch=rack2&model=pi5", headers=h["vic"])).text
    shown = calendar_rows(rack2)
    assert shown
    assert all(n.startswith("rack2-") for n in shown)
    assert "<strong>10</strong> of 60 nodes" in rack2  # odd i, i % 3 == 0: 3, 9, …, 57
    assert "<option selected>rack2</option>" in rack2
    parts = (await client.get("/ui/reservations?switch=rack2&model=pi5", headers=h["vic"])).text
    assert calendar_rows(parts) == shown
    assert 'data-part="calendar"' in parts
    assert 'data-part="mine"' in parts
    assert "<html" not in parts


async def test_anonymous_goes_to_login_and_a_cross_origin_booking_is_refused(rig: Rig) -> None:
    client, _h, _ = rig
    page = await client.get("/reservations?days=7", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/reservations%3Fdays%3D7"
    # The form posts with the session cookie; from another origin the API refuses it.
    login = await client.post(
        "/api/v1/auth/login", json={"username": "ann", "password": "password-of-ann"}
    )
    assert login.status_code == 200, login.text
    evil = await client.post(
        "/api/v1/reservations",
        json={"count": 1, "duration": "1h"},
        headers={"Origin": "http://evil.example"},
    )
    assert evil.status_code == 403
    same = await client.post(
        "/api/v1/reservations",
        json={"count": 1, "duration": "1h"},
        headers={"Origin": "http://127.0.0.1"},
    )
    assert same.status_code == 201, same.text
    html = (await client.get("/reservations")).text  # the session cookie, as a browser
    assert buttons(html, "release") == [str(same.json()["id"])]


def test_calendar_bars_are_clipped_to_the_window() -> None:
    start = datetime(2026, 12, 5, tzinfo=UTC)
    end = start + timedelta(days=1)
    node = NodeAvailability(
        name="n",
        model=None,
        switch=None,
        port=None,
        tags=(),
        state="allocated",
        reservable=True,
        bookings=(
            Booking(1, "ann", start - timedelta(hours=2), start + timedelta(hours=6), "active"),
            Booking(2, "bob", start + timedelta(hours=18), end + timedelta(days=2), "scheduled"),
            Booking(3, "cat", end + timedelta(hours=1), end + timedelta(hours=2), "scheduled"),
        ),
    )
    got = bars(node, start, end, me="bob")
    assert [(b["id"], b["left"], b["width"], b["mine"]) for b in got] == [
        (1, "0.00", "25.00", False),
        (2, "75.00", "25.00", True),
    ]


async def test_odd_query_strings_fall_back_to_the_defaults(rig: Rig) -> None:
    client, h, _ = rig
    for query in ("days=abc&page=-1", "days=5&page=99999999999", "page=0&switch=" + "x" * 500):
        got = await client.get(f"/reservations?{query}", headers=h["vic"])
        assert got.status_code == 200, query
        assert "<option selected>3</option>" in got.text  # three days unless 1, 3 or 7
    last = (await client.get("/reservations?page=99", headers=h["vic"])).text
    assert "page 3 of 3" in last  # clamped to the last page
    one_day = (await client.get("/reservations?days=1", headers=h["vic"])).text
    assert "<option selected>1</option>" in one_day
    assert one_day.count('class="tick"') == 4  # every 6 h
