"""Reservations through the HTTP API, in process, on a real store with an injected clock:
booking by name and by filter, refusals that name the holder and the next free slot, limits,
extending, releasing, who sees and acts on what, the timers (warning mail queued once, end,
unused release) and a restart that neither repeats nor skips them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.access.reservations_service import ReservationService
from piman.access.service import AccessService
from piman.access.service import build as build_access
from piman.config.models import Config
from piman.config.reservations import OWNER_MAIL_RECEIVER
from piman.context import AppContext
from piman.deploy.service import build as build_deploy
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading, PowerAction, PowerResult, PowerTarget
from piman.power.targets import resolve
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.support import bearer

BASE = "http://127.0.0.1:8000"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingPower:
    """A power handle that records what it was asked (the real switch path is tested with
    snmpsim in tests/integration/manager/test_reservations_expiry.py)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.calls: list[tuple[str, list[str], str]] = []

    def resolve(self, specs: Sequence[str]) -> list[PowerTarget]:
        return resolve(self.config, specs)

    async def run(
        self, action: PowerAction, targets: Sequence[PowerTarget], *, actor: str
    ) -> list[PowerResult]:
        self.calls.append((action, [t.label for t in targets], actor))
        state = PowerState.OFF if action == "off" else PowerState.ON
        return [PowerResult(t, action, True, PortReading(state)) for t in targets]


@dataclass
class Rig:
    client: httpx.AsyncClient
    service: ReservationService
    store: Store
    clock: Clock
    power: RecordingPower
    headers: dict[str, dict[str, str]]
    db: Path

    async def call(
        self, who: str, method: str, path: str, body: Any = None, **kw: Any
    ) -> httpx.Response:
        return await self.client.request(
            method, "/api/v1" + path, json=body, headers=self.headers[who], **kw
        )

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.db)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()


SETTINGS: dict[str, Any] = {
    "buffer": "15m",
    "warnings": ["10m"],
    "unused_after": "30m",
    "limits": {"max_nodes": 2, "max_duration": "4h", "max_extensions": 1},
}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [
                {"name": "pi1", "switch": "rack1", "port": 1, "model": "pi4", "tags": ["cam"]},
                {"name": "pi2", "switch": "rack1", "port": 2, "model": "pi4"},
                {"name": "pi3", "switch": "rack1", "port": 3, "model": "pi3"},
                {"name": "pi4", "switch": "rack1", "port": 4, "model": "pi4"},
            ],
            "monitoring": {"notify": ["mailto://127.0.0.1:2525?from=piman@lab.org"]},
            "deploy": {"check_address": False},
            "reservations": SETTINGS,
        }
    )
    db = tmp_path / "piman.db"
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    power = RecordingPower(config)
    ctx.power = power
    deploy = build_deploy(ctx)  # the real service; its engine and image stream are not started
    assert deploy is not None
    ctx.deploy = deploy.handle
    clock = Clock()
    service = ReservationService(
        config, store, power=power, deploy=ctx.deploy, clock=clock, owner="test-manager"
    )
    ctx.reservations = service
    access = build_access(ctx).handle
    assert isinstance(access, AccessService)
    access.clock = clock  # token uses and sessions on the same clock as the timers
    ctx.access = access
    headers = {}
    for name, role in [("ann", "user"), ("bob", "user"), ("olga", "operator"),
                       ("vic", "viewer"), ("root", "admin")]:  # fmt: skip
        await store.users.add(name, role, "no-password-login-in-these-tests")  # no Argon2: fast
        _, token = await access.create_token(name, "tests", None)
        headers[name] = bearer(token)
    await access.set_email("ann", "ann@lab.org")
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            yield Rig(c, service, store, clock, power, headers, db)
    finally:
        await store.close()


async def reserve(rig: Rig, who: str, **body: Any) -> httpx.Response:
    return await rig.call(who, "POST", "/reservations", body)


async def test_a_user_reserves_by_filter_acts_on_those_nodes_only_and_releases(rig: Rig) -> None:
    made = await reserve(rig, "ann", count=2, model="pi4", duration="2h")
    assert made.status_code == 201, made.text
    r = made.json()
    assert (r["owner"], r["nodes"], r["state"]) == ("ann", ["pi1", "pi2"], "active")
    nodes = {n["name"]: n["state"] for n in (await rig.call("root", "GET", "/nodes")).json()}
    assert nodes == {"pi1": "allocated", "pi2": "allocated", "pi3": "ready", "pi4": "ready"}

    # Her nodes: details, power; another node, the whole fleet: no.
    assert (await rig.call("ann", "GET", "/nodes/pi1")).status_code == 200
    assert (await rig.call("ann", "GET", "/nodes/pi3")).status_code == 403
    assert (await rig.call("ann", "GET", "/nodes")).status_code == 403
    on = await rig.call("ann", "POST", "/nodes/pi2/power", {"action": "cycle"})
    assert on.status_code == 200, on.text
    assert rig.power.calls[-1] == ("cycle", ["pi2"], "ann (token " + _prefix(rig, "ann") + ")")
    refused = await rig.call("ann", "POST", "/nodes/pi3/power", {"action": "off"})
    assert refused.status_code == 403
    assert "you do not hold it" in refused.json()["detail"]
    bulk = await rig.call("ann", "POST", "/power", {"action": "off", "targets": ["pi1", "pi3"]})
    assert bulk.status_code == 403
    assert len(rig.power.calls) == 1  # nothing was switched for the refused ones
    deploy = await rig.call("ann", "POST", "/deployments", {"nodes": ["pi1", "pi3"]})
    assert deploy.status_code == 403
    assert "may not deploy pi3" in deploy.json()["detail"]
    # Her own node passes the check (and fails later: no installer is built here).
    deploy = await rig.call("ann", "POST", "/deployments", {"nodes": ["pi1"], "environment": "x"})
    assert deploy.status_code == 422, deploy.text

    # Bob sees who holds what, but not her reservation's details, and cannot end it.
    fleet = (await rig.call("bob", "GET", "/availability")).json()
    held = {a["name"]: a["held_by"] for a in fleet}
    assert held == {"pi1": "ann", "pi2": "ann", "pi3": None, "pi4": None}
    assert (await rig.call("bob", "GET", f"/reservations/{r['id']}")).status_code == 403
    assert (await rig.call("bob", "GET", "/reservations")).json() == []
    assert (await rig.call("bob", "POST", f"/reservations/{r['id']}/release")).status_code == 403
    assert (await rig.call("vic", "GET", f"/reservations/{r['id']}")).status_code == 200

    released = await rig.call("ann", "POST", f"/reservations/{r['id']}/release")
    assert released.status_code == 200, released.text
    assert released.json()["state"] == "released"
    assert released.json()["reason"].startswith("released by ann")
    assert rig.power.calls[-1] == ("off", ["pi1", "pi2"], f"reservation#{r['id']}")
    nodes = {n["name"]: n["state"] for n in (await rig.call("root", "GET", "/nodes")).json()}
    assert set(nodes.values()) == {"ready"}
    assert (await rig.call("ann", "GET", "/nodes/pi1")).status_code == 403  # not hers any more
    again = await rig.call("ann", "POST", f"/reservations/{r['id']}/release")
    assert again.status_code == 409
    actions = [a for (a,) in rig.rows("SELECT action FROM audit_log ORDER BY id")]
    assert [a for a in actions if a.startswith("reservation.")] == [
        "reservation.create",
        "reservation.start",
        "reservation.release",
        "reservation.end",
    ]


def _prefix(rig: Rig, who: str) -> str:
    token = rig.headers[who]["Authorization"].removeprefix("Bearer ")
    return token[:11] if token.startswith("pm_") else token[:8]


async def test_a_taken_node_is_refused_with_the_holder_and_the_next_free_slot(rig: Rig) -> None:
    first = await reserve(rig, "ann", nodes=["pi3"], duration="1h")
    assert first.status_code == 201, first.text
    taken = await reserve(rig, "bob", nodes=["pi3"], duration="30m")
    assert taken.status_code == 409
    body = taken.json()
    end = datetime.fromisoformat(first.json()["end_at"])
    assert (body["holder"], body["reservation"]) == ("ann", first.json()["id"])
    assert datetime.fromisoformat(body["next_free"]) == end + timedelta(minutes=15)
    assert "pi3 is reserved by ann" in body["detail"]
    assert "the next free slot for pi3 starts" in body["detail"]

    # At the slot it names, it fits: scheduled for later.
    later = await reserve(rig, "bob", nodes=["pi3"], duration="30m", start=body["next_free"])
    assert later.status_code == 201, later.text
    assert later.json()["state"] == "scheduled"
    slot = await rig.call(
        "bob", "GET", "/availability/next", params={"nodes": "pi3", "duration": "1h"}
    )
    assert datetime.fromisoformat(slot.json()["start"]) == datetime.fromisoformat(
        later.json()["end_at"]
    ) + timedelta(minutes=15)

    # Ann cannot extend into Bob's time (he starts right after her buffer): it says so.
    rid = first.json()["id"]
    stuck = await rig.call("ann", "POST", f"/reservations/{rid}/extend", {"by": "1h"})
    assert stuck.status_code == 409
    assert stuck.json()["holder"] == "bob"
    assert stuck.json()["detail"].endswith(f"reservation {rid} cannot run longer")


BAD = [
    ({"count": 3, "model": "pi4", "duration": "1h"}, 422, "more than the 2 one user may hold"),
    ({"nodes": ["pi1"], "duration": "5h"}, 422, "longer than the 4 h"),
    ({"nodes": ["nope"], "duration": "1h"}, 404, "no node named 'nope'"),
    ({"count": 1, "model": "pi5", "duration": "1h"}, 422, "only 0 reservable nodes match"),
    ({"nodes": ["pi1"], "duration": "soon"}, 422, "is not a duration"),
    ({"nodes": ["pi1"], "duration": "1h", "start": "2020-01-01T00:00:00Z"}, 422, "past"),
    ({"nodes": ["pi1"], "duration": "1h", "start": "2030-01-01T00:00:00"}, 422, "time zone"),
    ({"nodes": ["pi1"], "duration": "1h", "ssh_keys": ["hello"]}, 422, "not an SSH public"),
    ({"nodes": ["pi1"], "duration": "1h", "owner": "bob"}, 403, "operators and admins"),
    ({"nodes": ["pi1"], "duration": "1h", "environment": "x"}, 404, "no environment named"),
    ({"nodes": ["pi1"], "count": 1, "duration": "1h"}, 422, "not both"),
    ({"nodes": ["pi1"], "duration": 1e300}, 422, "at most ten years"),
    ({"nodes": ["pi1"], "duration": "1h", "start": "9999-12-31T00:00:00Z"}, 422, "ten years"),
    ({"nodes": ["x" * 65], "duration": "1h"}, 422, "at most 64 characters"),
]


async def test_bad_or_excessive_requests_say_why_and_book_nothing(rig: Rig) -> None:
    wrong = []
    for body, status, says in BAD:  # one rig for the whole table (accounts are slow to make)
        got = await reserve(rig, "ann", **body)
        detail = got.json()["detail"]
        text = detail if isinstance(detail, str) else json.dumps(detail)
        if got.status_code != status or says not in text:
            wrong.append(f"{body}: {got.status_code} {text}")
    assert wrong == []
    assert rig.rows("SELECT count(*) FROM reservations") == [(0,)]


async def test_operators_book_for_others_without_limits_and_end_any(rig: Rig) -> None:
    big = await reserve(rig, "olga", count=3, model="pi4", duration="8h", owner="bob")
    assert big.status_code == 201, big.text
    rid = big.json()["id"]
    assert big.json()["owner"] == "bob"
    assert big.json()["created_by"].startswith("olga")
    assert (await rig.call("vic", "POST", "/reservations", {"nodes": ["pi3"], "duration": 60})
            ).status_code == 403  # fmt: skip
    assert [r["id"] for r in (await rig.call("bob", "GET", "/reservations")).json()] == [rid]
    ext = await rig.call("bob", "POST", f"/reservations/{rid}/extend", {"by": "1h"})
    assert ext.status_code == 200, ext.text  # his first extension: within max_extensions 1
    ext = await rig.call("bob", "POST", f"/reservations/{rid}/extend", {"by": "1h"})
    assert ext.status_code == 422
    assert "the limit is 1" in ext.json()["detail"]
    ext = await rig.call("olga", "POST", f"/reservations/{rid}/extend", {"by": "1h"})
    assert ext.status_code == 200  # operators are not limited
    assert ext.json()["extensions"] == 2
    end = await rig.call("olga", "POST", f"/reservations/{rid}/release")
    assert end.json()["state"] == "released"


async def test_cross_origin_booking_with_a_session_is_refused(rig: Rig) -> None:
    response = await rig.client.post(
        "/api/v1/reservations",
        json={"nodes": ["pi1"], "duration": "1h"},
        headers={**rig.headers["ann"], "Origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert response.json()["error"] == "cross_origin"


async def test_warning_is_queued_once_then_the_end_powers_off_even_across_a_restart(
    rig: Rig,
) -> None:
    made = await reserve(rig, "ann", nodes=["pi1"], duration="1h")
    rid = made.json()["id"]
    rig.clock.tick(61)
    await rig.call("ann", "GET", "/nodes/pi1")  # she uses it (a token call after the start)
    rig.clock.tick(49 * 60)  # 10 min before the end
    assert await rig.service.tick() == 2  # the unused check (in use) and the warning
    outbox = rig.rows("SELECT receiver, key, payload FROM alert_outbox")
    assert len(outbox) == 1
    receiver, key, payload = outbox[0]
    assert receiver == OWNER_MAIL_RECEIVER
    assert key.startswith(f"reservation-{rid}-warn-600-")
    mail = json.loads(payload)
    assert mail["to"] == "ann@lab.org"
    assert mail["title"] == f"piman: reservation {rid} ends in 10 min"

    # A new manager over the same store (the first one died): nothing is sent twice.
    restarted = ReservationService(
        rig.service.config, rig.store, power=rig.power, clock=rig.clock, owner="test-manager"
    )
    assert await restarted.tick() == 0
    rig.clock.tick(10 * 60)
    assert await restarted.tick() == 1  # the end
    assert len(rig.rows("SELECT id FROM alert_outbox")) == 1
    r = (await rig.call("ann", "GET", f"/reservations/{rid}")).json()
    assert (r["state"], r["reason"]) == ("released", "ended")
    assert rig.power.calls[-1] == ("off", ["pi1"], f"reservation#{rid}")
    assert [(t["kind"], t["outcome"].split(":")[0]) for t in r["timers"]] == [
        ("start", "started"),
        ("unused", "in use"),
        ("warn", "warned ann@lab.org (10 min before the end)"),
        ("end", "released"),
    ]


async def test_a_reservation_nobody_uses_is_released(rig: Rig) -> None:
    made = await reserve(rig, "bob", nodes=["pi4"], duration="2h")
    rid = made.json()["id"]
    rig.clock.tick(30 * 60 + 1)
    assert await rig.service.tick() == 1
    r = (await rig.call("root", "GET", f"/reservations/{rid}")).json()
    assert r["state"] == "released"
    assert r["reason"].startswith("unused: no login, API call or deployment by bob in 30 min")
    assert rig.power.calls[-1] == ("off", ["pi4"], f"reservation#{rid}")
    # Bob has no e-mail address: the warning would have said so in the audit log; none is due.
    assert rig.rows("SELECT count(*) FROM alert_outbox") == [(0,)]


async def test_a_manager_down_for_the_whole_reservation_cancels_it_unstarted(rig: Rig) -> None:
    start = (rig.clock.now + timedelta(hours=1)).isoformat()
    made = await reserve(rig, "ann", nodes=["pi3"], duration="1h", start=start)
    rid = made.json()["id"]
    rig.clock.tick(3 * 3600)
    await rig.service.tick()
    r = (await rig.call("ann", "GET", f"/reservations/{rid}")).json()
    assert r["state"] == "cancelled"
    assert r["reason"].startswith("missed")
    assert rig.power.calls == []
    nodes = {n["name"]: n["state"] for n in (await rig.call("root", "GET", "/nodes")).json()}
    assert nodes["pi3"] == "ready"


async def test_the_api_document_names_what_the_routes_answer(rig: Rig) -> None:
    spec = (await rig.call("vic", "GET", "/openapi.json")).json()
    post = spec["paths"]["/api/v1/reservations"]["post"]
    assert {"201", "403", "404", "409", "422"} <= set(post["responses"])
    conflict = post["responses"]["409"]["content"]["application/json"]["schema"]
    assert conflict["$ref"].endswith("/ConflictOut")
    assert {"holder", "reservation", "next_free"} <= set(
        spec["components"]["schemas"]["ConflictOut"]["properties"]
    )
    extend = spec["paths"]["/api/v1/reservations/{reservation_id}/extend"]["post"]
    assert {"200", "403", "404", "409", "422"} <= set(extend["responses"])
    release = spec["paths"]["/api/v1/reservations/{reservation_id}/release"]["post"]
    assert {"200", "403", "404", "409"} <= set(release["responses"])
    assert "/api/v1/availability" in spec["paths"]
