"""The power REST API and the UI's power buttons, wired as the manager wires them, on snmpsim."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.power.service import PowerService, build
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.integration.power.snmpsim import RFC, Snmpsim, rfc3621_records, snmpget, start_snmpsim
from tests.support import grant, needs_tool


@pytest.fixture(scope="module")
def sim() -> Iterator[Snmpsim]:
    needs_tool("snmpsimd", "snmpget")
    s = start_snmpsim({"api": rfc3621_records(4)}, v3=False)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def client(sim: Snmpsim, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "switches": [
                {
                    "name": "rack1",
                    "address": "198.18.0.254",
                    "uplink_port": 4,
                    "off_seconds": "0.1s",
                    "snmp": {"host": "127.0.0.1", "port": sim.port, "community": "api"},
                }
            ],
            "nodes": [
                {"name": "pi1", "switch": "rack1", "port": 1, "ip": "198.18.0.11"},
                {"name": "pi2", "switch": "rack1", "port": 2, "ip": "198.18.0.12"},
                {"name": "loose", "ip": "198.18.0.50"},
            ],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    built = build(ctx)
    assert built is not None
    ctx.power = built.handle
    services = built.services
    assert [s.name for s in services] == ["power"]
    headers = await grant(ctx, "operator")
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", headers=headers
        ) as c:
            yield c
    finally:
        service = services[0]
        assert isinstance(service, PowerService)
        await service.controller.close()
        await store.close()


async def test_post_power_off_then_on_switches_the_port(
    client: httpx.AsyncClient, sim: Snmpsim
) -> None:
    r = await client.post("/api/v1/nodes/pi2/power", json={"action": "off"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "off"
    assert snmpget(sim.port, "api", f"{RFC}.3.1.2") == "2"
    assert (await client.get("/api/v1/nodes/pi2")).json()["power"] == "off"

    r = await client.post("/api/v1/nodes/pi2/power", json={"action": "cycle"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["state"], body["detection"]) == ("on", "deliveringPower")
    assert snmpget(sim.port, "api", f"{RFC}.3.1.2") == "1"

    r = await client.get("/api/v1/nodes/pi1/power")
    assert r.status_code == 200
    assert r.json()["state"] == "on"
    metrics = (await client.get("/metrics")).text
    assert 'piman_power_operations_total{action="cycle",result="ok"} 1.0' in metrics


async def test_power_api_errors(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/nodes/nope/power", json={"action": "on"})).status_code == 404
    r = await client.post("/api/v1/nodes/loose/power", json={"action": "on"})
    assert r.status_code == 409
    assert "no switch port" in r.json()["detail"]
    r = await client.post("/api/v1/nodes/pi1/power", json={"action": "explode"})
    assert r.status_code == 422


async def test_node_rows_have_power_buttons_and_script(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    assert 'data-node="pi1"' in page
    assert 'data-action="cycle"' in page
    assert "/static/power.js" in page
    js = await client.get("/static/power.js")
    assert js.status_code == 200
    assert "/api/v1/nodes/" in js.text


async def test_bulk_power_runs_one_command_on_many_targets(
    client: httpx.AsyncClient, sim: Snmpsim
) -> None:
    r = await client.post("/api/v1/power", json={"action": "off", "targets": ["pi1", "rack1:3"]})
    assert r.status_code == 200, r.text
    assert [(x["node"], x["port"], x["state"], x["ok"]) for x in r.json()] == [
        ("pi1", 1, "off", True),
        (None, 3, "off", True),
    ]
    assert snmpget(sim.port, "api", f"{RFC}.3.1.1") == "2"
    assert snmpget(sim.port, "api", f"{RFC}.3.1.3") == "2"
    r = await client.post("/api/v1/power", json={"action": "on", "targets": ["all"]})
    assert [x["ok"] for x in r.json()] == [True, True]
    r = await client.post("/api/v1/power", json={"action": "on", "targets": ["nosuch"]})
    assert r.status_code == 404
