"""The fleet and node pages as a browser gets them: paging, filters, sorting, role-aware buttons,
charts from the metrics store, and the change stream that keeps them live.

The app is the real one on a real SQLite store with 130 nodes on three switches; power records
what it is asked, the monitor serves snapshots and series from memory (what a collector would
have scraped).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.access.reservations_service import ReservationService
from piman.config.models import Config
from piman.context import AppContext
from piman.deploy.service import build as build_deploy
from piman.fleet.lifecycle import PowerState
from piman.fleet.metrics import NodeSnapshot, Series
from piman.fleet.records import AlertRecord
from piman.store import Store, reconcile
from piman.web.api.nodes import NodeOut
from piman.web.app import create_app
from tests.integration.web.test_access_table import FakeAlerting, FakePower
from tests.support import grant

MODELS = ("pi4", "pi3b+", "pi5")


class Alerting(FakeAlerting):
    def __init__(self) -> None:
        self.firing: list[AlertRecord] = []

    def active(self) -> list[AlertRecord]:
        return self.firing


class Monitor:
    """Snapshots for the even-numbered nodes of rack1; a CPU series for every node."""

    def __init__(self) -> None:
        self.alerting = Alerting()
        self.snapshots: dict[str, NodeSnapshot] = {}
        self.asked: list[tuple[str, dict[str, str] | None, float, float, float | None]] = []

    async def query_range(
        self,
        metric: str,
        matchers: dict[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
    ) -> list[Series]:
        self.asked.append((metric, matchers, start, end, step))
        if metric != "cpu_percent":
            return []
        node = (matchers or {}).get("node", "")
        points = [(end - 600 + 30 * i, float(10 + i)) for i in range(20)]
        return [Series(metric, {"node": node}, points)]

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        return None

    def snapshot(self, node: str) -> NodeSnapshot | None:
        return self.snapshots.get(node)


def nodes(count: int) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        switch = f"rack{i % 3 + 1}"
        out.append(
            {
                "name": f"{switch}-n{i:03d}",
                "switch": switch,
                "port": i // 3 + 1,
                "model": MODELS[i % 3],
                "mac": f"dc:a6:32:00:{i // 256:02x}:{i % 256:02x}",
            }
        )
    return out


Rig = tuple[httpx.AsyncClient, dict[str, dict[str, str]], AppContext]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "deploy": {},
            "switches": [{"name": f"rack{i}", "driver": "manual"} for i in (1, 2, 3)],
            "nodes": nodes(130),
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    ctx.power = FakePower(config)
    monitor = Monitor()
    ctx.monitor = monitor
    deploy = build_deploy(ctx)
    assert deploy is not None
    ctx.deploy = deploy.handle
    ctx.reservations = ReservationService(config, store, power=ctx.power, deploy=ctx.deploy)
    headers = {role: await grant(ctx, role) for role in ("user", "viewer", "operator")}
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            yield client, headers, ctx
    finally:
        await store.close()


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-node="([^"]+)"', html)


async def test_the_fleet_page_carries_one_page_of_rows_and_pages_through_the_fleet(
    rig: Rig,
) -> None:
    client, headers, _ = rig
    page = (await client.get("/", headers=headers["viewer"])).text
    shown = rows(page)
    assert len(shown) == 50
    assert shown[:2] == ["rack1-n000", "rack1-n003"]  # the store's order: switch, port
    assert "<strong>130</strong> nodes" in page
    assert 'rel="next"' in page
    assert "page 1 of 3" in page
    last = (await client.get("/?page=3", headers=headers["viewer"])).text
    assert len(rows(last)) == 30
    assert 'rel="next"' not in last
    assert 'rel="prev"' in last
    assert not set(rows(last)) & set(shown)
    beyond = (await client.get("/?page=99&per=100", headers=headers["viewer"])).text
    assert len(rows(beyond)) == 30  # clamped to the last page
    assert "page 2 of 2" in beyond


async def test_filters_and_search_narrow_the_rows_on_the_server(rig: Rig) -> None:
    client, headers, _ = rig
    viewer = headers["viewer"]
    by_switch = rows((await client.get("/?switch=rack2&per=100", headers=viewer)).text)
    assert len(by_switch) == 43
    assert all(name.startswith("rack2-") for name in by_switch)
    both = (await client.get("/?switch=rack2&model=pi3b%2B", headers=viewer)).text
    assert rows(both)
    assert all(n.startswith("rack2-") for n in rows(both))
    assert "<strong>43</strong> of 130 nodes" in both  # rack2 is all pi3b+ (i % 3 == 1)
    found = (await client.get("/?q=N017", headers=viewer)).text
    assert rows(found) == ["rack3-n017"]
    by_mac = (await client.get("/?q=dc:a6:32:00:00:11", headers=viewer)).text
    assert rows(by_mac) == ["rack3-n017"]
    nothing = (await client.get("/?state=broken", headers=viewer)).text
    assert rows(nothing) == []
    assert "No node matches these filters." in nothing
    # The filters' choices come from the whole fleet, and the chosen one stays selected.
    assert "<option selected>broken</option>" not in nothing
    assert "<option selected>rack2</option>" in both
    # The live fragment answers the same query with the same rows.
    fragment = (await client.get("/ui/nodes?switch=rack2&model=pi3b%2B", headers=viewer)).text
    assert rows(fragment) == rows(both)
    assert 'data-part="rows"' in fragment
    assert "<form" not in fragment


async def test_sorting_by_a_metric_puts_unknown_values_last_both_ways(rig: Rig) -> None:
    client, headers, ctx = rig
    monitor = ctx.monitor
    assert isinstance(monitor, Monitor)
    for i, name in enumerate(["rack1-n000", "rack2-n001", "rack3-n002"]):
        monitor.snapshots[name] = NodeSnapshot(up=True, time=1.0, cpu=10.0 * (i + 1))
    up = rows((await client.get("/?sort=cpu", headers=headers["viewer"])).text)
    assert up[:4] == ["rack1-n000", "rack2-n001", "rack3-n002", "rack1-n003"]
    down_page = (await client.get("/?sort=cpu&desc=1", headers=headers["viewer"])).text
    assert rows(down_page)[:3] == ["rack3-n002", "rack2-n001", "rack1-n000"]
    assert 'aria-sort="descending"' in down_page
    assert "30 %" in down_page


async def test_a_viewer_sees_no_buttons_and_an_operator_does(rig: Rig) -> None:
    client, headers, _ = rig
    viewer = (await client.get("/", headers=headers["viewer"])).text
    assert "power-btn" not in viewer
    assert "deploy-btn" not in viewer
    assert "power.js" not in viewer
    assert "<th>Actions</th>" not in viewer
    operator = (await client.get("/", headers=headers["operator"])).text
    assert operator.count('class="power-btn" data-action="off"') == 50
    assert operator.count('class="deploy-btn"') == 50
    node = (await client.get("/nodes/rack1-n000", headers=headers["viewer"])).text
    assert "power-btn" not in node
    assert "deploy-btn" not in node
    node = (await client.get("/nodes/rack1-n000", headers=headers["operator"])).text
    assert 'data-action="cycle"' in node
    assert "deploy-btn" in node


async def test_a_user_holding_a_node_sees_its_owner_column_page_and_buttons(rig: Rig) -> None:
    client, headers, _ = rig
    assert (await client.get("/nodes/rack2-n001", headers=headers["user"])).status_code == 403
    booked = await client.post(
        "/api/v1/reservations",
        json={"nodes": ["rack2-n001"], "duration": "1h"},
        headers=headers["user"],
    )
    assert booked.status_code == 201, booked.text
    page = (await client.get("/nodes/rack2-n001", headers=headers["user"])).text
    assert "held by user until" in page
    assert 'data-action="off"' in page  # a user acts on the nodes they hold
    assert (await client.get("/nodes/rack2-n004", headers=headers["user"])).status_code == 403
    fleet = (await client.get("/?q=rack2-n001", headers=headers["viewer"])).text
    (row,) = re.findall(r'<tr data-node="rack2-n001">.*?</tr>', fleet, re.S)
    assert re.search(r'<td class="owner">user <span class="muted"[^>]*>until ', row)
    by_owner = rows((await client.get("/?sort=owner", headers=headers["viewer"])).text)
    assert by_owner[0] == "rack2-n001"
    assert "rack2-n001" in rows((await client.get("/?q=USER", headers=headers["viewer"])).text)


async def test_the_node_page_draws_charts_and_shows_its_history(rig: Rig) -> None:
    client, headers, ctx = rig
    monitor = ctx.monitor
    assert isinstance(monitor, Monitor)
    await ctx.store.audit.add("operator", "port.off", "rack1-n000 (rack1:1)", "ok")
    await ctx.store.audit.add("someone", "deploy.start", "rack1-n000", "ok", "demo-os")
    await ctx.store.audit.add("someone", "deploy.start", "rack1-n003", "ok", "other")
    page = (await client.get("/nodes/rack1-n000?range=24h", headers=headers["viewer"])).text
    charts = re.findall(r'<svg class="chart"[^>]*data-metric="([^"]+)" data-points="(\d+)"', page)
    assert [m for m, _ in charts] == [
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "temperature_celsius",
        "throttled",
    ]
    assert dict(charts)["cpu_percent"] == "20"
    assert dict(charts)["memory_percent"] == "0"
    assert "no data" in page
    asked = {m: (matchers, end - start, step) for m, matchers, start, end, step in monitor.asked}
    assert asked["cpu_percent"] == ({"node": "rack1-n000"}, 86400.0, 600.0)
    assert '<a href="?range=24h" aria-current="true">24h</a>' in page
    audit = re.search(r'<table class="history" id="audit">.*?</table>', page, re.S)
    assert audit is not None
    assert "port.off" in audit.group(0)
    assert "demo-os" in audit.group(0)
    assert "other" not in audit.group(0)
    assert "Never deployed from this manager." in page
    missing = await client.get("/nodes/nope", headers=headers["viewer"])
    assert missing.status_code == 404
    assert "No such node" in missing.text


async def listen(app: Any, headers: dict[str, str], until: float) -> list[dict[str, Any]]:
    """Read /ui/events as a browser would until ``until`` (monotonic), then disconnect."""
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/ui/events",
        "raw_path": b"/ui/events",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"accept", b"text/event-stream"), *raw],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    body = bytearray()
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    done.set()
    await asyncio.wait_for(task, 5)
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields.get("event"):
            events.append({"event": fields["event"], **json.loads(fields["data"])})
    return events


async def test_the_change_stream_names_what_changed_within_two_seconds(rig: Rig) -> None:
    client, headers, ctx = rig
    app = client._transport.app  # type: ignore[attr-defined]
    assert (await client.get("/ui/events", headers=headers["viewer"])).status_code == 406
    assert (await client.get("/ui/events")).status_code == 401

    async def change() -> None:
        await asyncio.sleep(1.2)  # after the watch's first look
        await ctx.store.nodes.set_power_state("rack3-n005", PowerState.OFF)
        monitor = ctx.monitor
        assert isinstance(monitor, Monitor)
        monitor.snapshots["rack1-n009"] = NodeSnapshot(up=True, time=5.0, cpu=1.0)

    started = time.monotonic()
    changer = asyncio.create_task(change())
    events = await listen(app, headers["viewer"], started + 3.4)
    await changer
    assert events[0]["event"] == "hello"
    changes = [e for e in events if e["event"] == "change"]
    assert changes, events
    assert changes[0]["fleet"] is True  # a power change can move a node in a filtered list
    named = {n for e in changes for n in e["nodes"]}
    assert named == {"rack3-n005", "rack1-n009"}
    assert not any(e["alerts"] for e in changes)
    # The watch stops looking once nobody listens.
    await asyncio.sleep(1.5)
    watch = app.state.fleet_watch
    assert not watch.listeners
    assert watch._task is not None
    assert watch._task.done()


async def test_pages_share_one_store_read_per_second_and_never_older(rig: Rig) -> None:
    """The fast path (the shared node list) shows what the store held at most CACHE_AGE ago."""
    client, headers, ctx = rig
    app = client._transport.app  # type: ignore[attr-defined]
    now = [1000.0]
    first = (await client.get("/?q=rack1-n000", headers=headers["viewer"])).text
    cache = app.state.fleet_cache
    cache.clock = lambda: now[0]
    cache._at = now[0]  # the read above happened "now" on the fake clock
    await asyncio.gather(*(client.get("/", headers=headers["viewer"]) for _ in range(5)))
    assert cache.reads == 1
    await ctx.store.nodes.set_power_state("rack1-n000", PowerState.OFF)
    now[0] += 0.5
    cached = (await client.get("/?q=rack1-n000", headers=headers["viewer"])).text
    assert cached == first  # within CACHE_AGE: the same list, the same page
    now[0] += 0.6
    fresh = (await client.get("/?q=rack1-n000", headers=headers["viewer"])).text
    assert cache.reads == 2
    assert '<span class="power power-off">off</span>' in fresh
    assert '<span class="power power-off">off</span>' not in first


async def test_the_node_list_api_answers_from_one_read_and_reads_your_writes(rig: Rig) -> None:
    client, headers, ctx = rig
    app = client._transport.app  # type: ignore[attr-defined]
    cache = app.state.fleet_cache
    cache.clock = lambda: 1000.0  # the list never ages in this test: only writes drop it
    answers = await asyncio.gather(
        *(client.get("/api/v1/nodes", headers=headers["viewer"]) for _ in range(20))
    )
    assert cache.reads == 1
    assert {a.content for a in answers} == {answers[0].content}
    slow = [NodeOut.of(n).model_dump(mode="json") for n in await ctx.store.nodes.list()]
    assert answers[0].json() == slow  # the encoded fast path says what the models say
    before = {n["name"]: n["state"] for n in answers[0].json()}
    assert before["rack1-n000"] == "ready"
    booked = await client.post(
        "/api/v1/reservations",
        json={"nodes": ["rack1-n000"], "duration": "1h"},
        headers=headers["user"],
    )
    assert booked.status_code == 201, booked.text
    after = (await client.get("/api/v1/nodes", headers=headers["viewer"])).json()
    assert {n["name"]: n["state"] for n in after}["rack1-n000"] == "allocated"
    assert cache.reads == 2
