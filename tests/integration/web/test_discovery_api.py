"""``/api/v1/discovered``: what the netboot servers listed, and an operator accepting one device
as a node (named, audited), with the refusals a client gets for the wrong MAC, name or role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.access.service import build as build_access
from piman.config.models import Config
from piman.context import AppContext
from piman.inventory.sightings import Sightings
from piman.store import Store, reconcile
from piman.web.app import create_app

PI = "dc:a6:32:00:00:42"
OTHER = "e4:5f:01:00:00:43"


@dataclass
class Rig:
    client: httpx.AsyncClient
    store: Store
    sightings: Sightings
    operator: dict[str, str]
    viewer: dict[str, str]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "nodes": [{"name": "rack1-01", "mac": "dc:a6:32:00:00:01"}],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    sightings = Sightings(store.nodes)
    await sightings.load()
    ctx.inventory = sightings
    access = build_access(ctx).handle
    ctx.access = access
    tokens = {}
    for role in ("operator", "viewer"):
        await access.add_user(role, role, f"password-of-{role}")
        _, token = await access.create_token(role, "t", None)
        tokens[role] = {"Authorization": f"Bearer {token}"}
    sightings.note(PI, ip="198.18.0.100", serial="5e1f0c2a", model="pi4", vendor_class="PXEClient")
    sightings.note(OTHER, ip="198.18.0.101", model="pi4")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(ctx)), base_url="http://127.0.0.1"
        ) as client:
            yield Rig(client, store, sightings, tokens["operator"], tokens["viewer"])
    finally:
        await store.close()


async def test_readers_see_the_discovered_devices_most_recent_first(rig: Rig) -> None:
    got = await rig.client.get("/api/v1/discovered", headers=rig.viewer)
    assert got.status_code == 200
    rows = got.json()
    assert [(r["mac"], r["ip"], r["serial"], r["model"], r["sightings"]) for r in rows] == [
        (OTHER, "198.18.0.101", None, "pi4", 1),
        (PI, "198.18.0.100", "5e1f0c2a", "pi4", 1),
    ]
    assert rows[1]["vendor_class"] == "PXEClient"
    assert rows[1]["first_seen"].endswith(("Z", "+00:00"))


async def test_an_operator_accepts_a_device_as_a_named_new_node_and_it_is_audited(
    rig: Rig,
) -> None:
    made = await rig.client.post(
        f"/api/v1/discovered/{PI.upper()}/accept", json={"name": "rack2-07"}, headers=rig.operator
    )
    assert made.status_code == 201, made.text
    node = made.json()
    assert (node["name"], node["mac"], node["ip"], node["serial"], node["state"]) == (
        "rack2-07", PI, "198.18.0.100", "5e1f0c2a", "new",
    )  # fmt: skip
    assert node["declared"] is False
    assert (await rig.store.nodes.get("rack2-07")).mac == PI
    listed = (await rig.client.get("/api/v1/discovered", headers=rig.viewer)).json()
    assert [r["mac"] for r in listed] == [OTHER]
    (entry,) = [a for a in await rig.store.audit.list() if a.action == "node.accept"]
    assert (entry.target, entry.result, entry.detail) == ("rack2-07", "ok", f"mac {PI}")
    assert entry.actor.startswith("operator (token ")  # the principal, not a name it sent
    # No body: the default name.
    default = await rig.client.post(f"/api/v1/discovered/{OTHER}/accept", headers=rig.operator)
    assert default.status_code == 201, default.text
    assert default.json()["name"] == "pi-e45f01000043"


@pytest.mark.parametrize(
    ("mac", "body", "status", "detail"),
    [
        ("dc:a6:32:00:00:99", {}, 404, "no discovered device with MAC dc:a6:32:00:00:99"),
        (PI, {"name": "rack1-01"}, 409, "a node named 'rack1-01' exists already"),
        (PI, {"name": "bad name!"}, 422, "'bad name!' is not a valid name"),
        ("not-a-mac", {}, 422, "'not-a-mac' is not a MAC address"),
        (PI, {"name": "x" * 64}, 422, "at most 63 characters"),
    ],
)
async def test_refusals_say_what_is_wrong_and_change_nothing(
    rig: Rig, mac: str, body: dict[str, str], status: int, detail: str
) -> None:
    got = await rig.client.post(f"/api/v1/discovered/{mac}/accept", json=body, headers=rig.operator)
    assert got.status_code == status, got.text
    assert detail in got.text
    assert [n.name for n in await rig.store.nodes.list()] == ["rack1-01"]
    assert len(rig.sightings.discovered()) == 2


async def test_a_viewer_may_not_accept(rig: Rig) -> None:
    got = await rig.client.post(f"/api/v1/discovered/{PI}/accept", json={}, headers=rig.viewer)
    assert got.status_code == 403
    assert len(rig.sightings.discovered()) == 2
