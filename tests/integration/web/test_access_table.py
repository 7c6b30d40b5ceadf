"""Every route of the live app against every kind of principal: who may call what.

The table below is the access decision for each route. A route the app has and the table does
not (a new endpoint nobody decided about) fails the test, as does a table entry the app lacks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client import CollectorRegistry
from starlette.routing import Mount

from piman.access.reservations_service import ReservationService
from piman.access.secrets import new_token
from piman.access.service import build as build_access
from piman.config.models import Config
from piman.context import AppContext
from piman.deploy.service import build as build_deploy
from piman.errors import NotFoundError
from piman.fleet.lifecycle import PowerState
from piman.fleet.metrics import NodeSnapshot, Series
from piman.fleet.power import PortReading, PowerAction, PowerResult, PowerTarget
from piman.fleet.records import AlertHistoryRecord, AlertRecord, SilenceRecord
from piman.inventory.sightings import Sightings
from piman.monitor.alerting.silences import make_silence
from piman.power.targets import resolve
from piman.store import Store, reconcile
from piman.web.app import create_app

PRINCIPALS = ("anonymous", "expired", "revoked", "user", "viewer", "operator", "admin")
SIGNED_IN_OK = {
    # rule: the principals that get through (everyone else: 401 without valid credentials,
    # 403 with them)
    "open": set(PRINCIPALS),
    "anyone": {"user", "viewer", "operator", "admin"},
    "read": {"viewer", "operator", "admin"},
    "operate": {"operator", "admin"},
    "admin": {"admin"},
    "own": {"user", "viewer", "operator", "admin"},
    "reserve": {"user", "operator", "admin"},
}
# (method, path) → (rule, JSON body or None)
TABLE: Mapping[tuple[str, str], tuple[str, Any]] = {
    ("GET", "/healthz"): ("open", None),
    ("GET", "/metrics"): ("open", None),  # manager.metrics_token unset (see the next test)
    ("GET", "/login"): ("open", None),
    ("GET", "/"): ("page", None),
    ("GET", "/ui/nodes"): ("read", None),
    ("GET", "/ui/alerts"): ("read", None),
    # The node page: a user sees the page of a node they hold (pi1 is held by nobody here).
    ("GET", "/nodes/{name}"): ("page", None),
    ("GET", "/ui/nodes/{name}"): ("read", None),
    # The live pages' change stream (node names only); 406 unless Accept: text/event-stream.
    ("GET", "/ui/events"): ("anyone", None),
    # The reservations page: every signed-in principal sees availability (users too).
    ("GET", "/reservations"): ("anypage", None),
    ("GET", "/ui/reservations"): ("anyone", None),
    ("GET", "/environments"): ("page", None),
    ("GET", "/ui/environments"): ("read", None),
    ("GET", "/alerts"): ("page", None),
    ("GET", "/ui/alert-list"): ("read", None),
    ("GET", "/admin/users"): ("adminpage", None),
    ("GET", "/ui/users"): ("admin", None),
    ("GET", "/api/v1/openapi.json"): ("read", None),
    ("GET", "/api/v1/docs"): ("read", None),
    ("POST", "/api/v1/auth/login"): ("open", {"username": "login", "password": "login-pass"}),
    ("POST", "/api/v1/auth/token"): ("open", {"username": "login", "password": "login-pass"}),
    ("POST", "/api/v1/auth/logout"): ("open", None),
    ("GET", "/api/v1/auth/me"): ("anyone", None),
    ("GET", "/api/v1/tokens"): ("anyone", None),
    ("POST", "/api/v1/tokens"): ("anyone", {"name": "table"}),
    ("DELETE", "/api/v1/tokens/{token_id}"): ("anyone", None),
    ("GET", "/api/v1/users"): ("admin", None),
    ("POST", "/api/v1/users"): ("admin", {"name": "new", "role": "viewer", "password": "p" * 12}),
    ("PATCH", "/api/v1/users/{name}"): ("admin", {"role": "viewer"}),
    # Your own password (with the current one): {name} is the principal's own name here.
    ("POST", "/api/v1/users/{name}/password"): ("own", None),
    ("DELETE", "/api/v1/users/{name}"): ("admin", None),
    ("GET", "/api/v1/nodes"): ("read", None),
    ("GET", "/api/v1/nodes/{name}"): ("read", None),
    ("GET", "/api/v1/switches"): ("read", None),
    # The Ansible inventory: readers get the fleet; a user gets the nodes they hold (none here:
    # an empty inventory) and 403 for ?host= of another node (tests/integration/inventory).
    ("GET", "/api/v1/inventory"): ("anyone", None),
    # Devices the netboot servers saw that are not nodes; accepting one makes it a node.
    ("GET", "/api/v1/discovered"): ("read", None),
    ("POST", "/api/v1/discovered/{mac}/accept"): ("operate", {"name": "table-pi"}),
    ("POST", "/api/v1/nodes/{name}/power"): ("operate", {"action": "off"}),
    ("GET", "/api/v1/nodes/{name}/power"): ("read", None),
    ("POST", "/api/v1/power"): ("operate", {"action": "on", "targets": ["pi1"]}),
    # Commands over SSH: operators and admins on any node, a user on the nodes they hold,
    # viewers never (tests/integration/web/test_ssh_api.py). Rows run in sorted order: by this
    # one the user holds pi1 (the POST /api/v1/reservations row booked it), so "reserve".
    ("POST", "/api/v1/ssh/run"): ("reserve", {"command": "uptime", "targets": ["pi1"]}),
    ("GET", "/api/v1/query_range"): ("read", None),
    ("GET", "/api/v1/nodes/{name}/events"): ("read", None),
    ("GET", "/api/v1/alerts"): ("read", None),
    ("GET", "/api/v1/silences"): ("read", None),
    ("POST", "/api/v1/silences"): ("operate", {"matchers": ["node=pi1"], "duration": "1h"}),
    ("DELETE", "/api/v1/silences/{silence_id}"): ("operate", None),
    ("GET", "/api/v1/alerts/outbox"): ("read", None),
    ("POST", "/api/v1/alerts/outbox/retry"): ("operate", {"ids": []}),
    ("GET", "/api/v1/environments"): ("read", None),
    ("GET", "/api/v1/environments/{name}"): ("read", None),
    # An image upload (the body is the file; an empty one is a 422 past the role check).
    ("POST", "/api/v1/environments"): ("operate", None),
    ("GET", "/api/v1/deployments"): ("read", None),
    ("POST", "/api/v1/deployments"): ("operate", {"nodes": ["pi1"], "environment": "nope"}),
    ("GET", "/api/v1/deployments/{deployment_id}"): ("read", None),
    ("GET", "/api/v1/deployments/{deployment_id}/history"): ("read", None),
    ("GET", "/api/v1/deployments/{deployment_id}/events"): ("read", None),
    ("POST", "/api/v1/deployments/{deployment_id}/cancel"): ("operate", None),
    # The installer's conversation: no account opens it, only a deployment's own secrets.
    ("POST", "/boot/v1/hello"): ("installer", {"node": "pi1"}),
    ("POST", "/boot/v1/deployments/{deployment_id}/progress"): (
        "installer",
        {"step": "write_image"},
    ),
    ("POST", "/boot/v1/deployments/{deployment_id}/result"): ("installer", {"ok": True}),
    ("GET", "/boot/v1/deployments/{deployment_id}/files.tar"): ("installer", None),
    # Reservations: every signed-in principal sees the fleet's availability and their own (or,
    # for readers, everyone's) reservations; users, operators and admins book; the handle
    # decides per reservation (tests/integration/web/test_reservations_api.py).
    ("GET", "/api/v1/availability"): ("anyone", None),
    ("GET", "/api/v1/availability/next"): ("anyone", None),
    ("GET", "/api/v1/reservations"): ("anyone", None),
    ("POST", "/api/v1/reservations"): ("reserve", {"nodes": ["pi1"], "duration": "1h"}),
    ("GET", "/api/v1/reservations/{reservation_id}"): ("anyone", None),
    ("POST", "/api/v1/reservations/{reservation_id}/extend"): ("anyone", {"by": "1h"}),
    ("POST", "/api/v1/reservations/{reservation_id}/release"): ("anyone", None),
}
MOUNTS = {"/static": "/static/piman.css", "/api/v1/docs/assets": "/api/v1/docs/assets/index.css"}
PATH_VALUES = {
    "name": "pi1",
    "token_id": "999999",
    "silence_id": "nope",
    "deployment_id": "999999",
    "reservation_id": "999999",
    "mac": "dc:a6:32:00:00:99",
}


class FakePower:
    """A power handle that records what it was asked (no switch to hurt)."""

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


class FakeAlerting:
    rule_count = 0
    last_evaluated: float | None = None

    async def wait_restored(self, within: float) -> bool:
        return True

    def active(self) -> list[AlertRecord]:
        return []

    def recent(self) -> list[AlertHistoryRecord]:
        return []

    async def history(self, limit: int) -> list[AlertHistoryRecord]:
        return []

    def silenced_by(self, labels: Any, silences: Any, now: float) -> list[str]:
        return []

    async def silences(self, *, active_at: float | None = None) -> list[SilenceRecord]:
        return []

    async def add_silence(self, matchers: Any, **kw: Any) -> SilenceRecord:
        return make_silence(matchers, now=1e9, duration=kw["duration"], created_by="x")

    async def expire_silence(self, silence_id: str, *, now: float | None = None) -> SilenceRecord:
        raise NotFoundError(f"no silence with id {silence_id!r}")

    async def outbox(self, *, state: str | None = None, limit: int = 100) -> list[Any]:
        return []

    async def requeue_dead(self, ids: Any = ()) -> int:
        return 0


class FakeMonitor:
    alerting = FakeAlerting()

    async def query_range(self, metric: str, *args: Any) -> list[Series]:
        return []

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        return None

    def snapshot(self, node: str) -> NodeSnapshot | None:
        return None


@pytest.fixture
async def rig(
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, dict[str, str]]]]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "deploy": {},
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [{"name": "pi1", "switch": "rack1", "port": 1}],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    ctx.power = FakePower(config)
    ctx.monitor = FakeMonitor()
    ctx.inventory = Sightings(store.nodes)
    access = build_access(ctx).handle
    ctx.access = access
    deploy = build_deploy(ctx)  # the real service; its engine and image stream are not started
    assert deploy is not None
    ctx.deploy = deploy.handle
    ctx.reservations = ReservationService(config, store, power=ctx.power, deploy=ctx.deploy)
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    for role in ("user", "viewer", "operator", "admin"):
        await access.add_user(role, role, f"password-of-{role}")
        _, token = await access.create_token(role, "table", None)
        headers[role] = {"Authorization": f"Bearer {token}"}
    await access.add_user("login", "viewer", "login-pass")
    # An expired token: a real one whose expiry is past (set through the store).
    made = new_token()
    await store.tokens.add(
        "admin", "expired", made.prefix, made.digest, datetime.now(UTC) - timedelta(hours=1)
    )
    headers["expired"] = {"Authorization": f"Bearer {made.token}"}
    _, revoked = await access.create_token("admin", "revoked", None)
    (rec,) = [t for t in await access.tokens("admin") if t.name == "revoked"]
    await access.revoke_token(rec.id, user=None)
    headers["revoked"] = {"Authorization": f"Bearer {revoked}"}
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client, headers
    finally:
        await store.close()


def _concrete(path: str) -> str:
    for key, value in PATH_VALUES.items():
        path = path.replace("{" + key + "}", value)
    return path


async def test_every_route_is_in_the_table_and_answers_each_principal_as_decided(
    rig: tuple[httpx.AsyncClient, dict[str, dict[str, str]]],
) -> None:
    client, headers = rig
    app = client.app  # type: ignore[attr-defined]
    routes: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):  # routers included in the app, flattened
        if isinstance(route.original_route, Mount):
            assert route.path in MOUNTS, f"mount {route.path} has no access decision"
            continue
        assert isinstance(route.original_route, APIRoute), route
        assert route.path is not None
        assert route.methods is not None
        routes |= {(m, route.path) for m in route.methods if m != "HEAD"}
    missing = sorted(routes - set(TABLE))
    assert missing == [], f"routes without an access decision: {missing}"
    assert sorted(set(TABLE) - routes) == [], "the table names routes the app lacks"

    failures = []
    for (method, path), (rule, body) in sorted(TABLE.items()):
        for who in PRINCIPALS:
            url = _concrete(path)
            if rule == "own":
                url = path.replace("{name}", who)
                body = {
                    "password": f"new-password-of-{who}",
                    "current_password": f"password-of-{who}",
                }
            response = await client.request(
                method,
                url,
                json=body,
                headers=headers[who],
                follow_redirects=False,
            )
            client.cookies.clear()  # each principal speaks with its token only
            got = response.status_code
            if rule == "page":  # a page: anonymous → the login page, a user → "no access"
                wanted = {"anonymous": 303, "user": 403}.get(who, 200)
                if who in ("expired", "revoked"):
                    wanted = 303  # a bad token on a page: log in again
                ok = got == wanted
            elif rule == "anypage":  # a page for every signed-in principal
                ok = got == (303 if who in ("anonymous", "expired", "revoked") else 200)
            elif rule == "adminpage":  # an admin's page: others signed in see "no access"
                wanted = 200 if who == "admin" else 403
                ok = got == (303 if who in ("anonymous", "expired", "revoked") else wanted)
            elif rule == "installer":  # no principal is an installer: always 403
                ok = got == 403
            elif who in SIGNED_IN_OK[rule]:
                ok = got not in (401, 403)
            elif who in ("anonymous", "expired", "revoked"):
                ok = got == 401
            else:
                ok = got == 403
            if not ok:
                failures.append(f"{who:9} {method:6} {path}: {got} {response.text[:80]}")
    assert failures == []


async def test_static_files_and_docs_assets_are_open(
    rig: tuple[httpx.AsyncClient, dict[str, dict[str, str]]],
) -> None:
    client, _ = rig
    for url in MOUNTS.values():
        assert (await client.get(url)).status_code == 200, url


async def test_the_plain_http_installer_app_has_only_installer_routes(
    rig: tuple[httpx.AsyncClient, dict[str, dict[str, str]]],
) -> None:
    """What a TLS manager also serves in plain HTTP (deploy.api_listen): /boot/v1 alone."""
    from piman.web.app import create_installer_app

    client, headers = rig
    app = create_installer_app(client.app.state.ctx)  # type: ignore[attr-defined]
    routes = set()
    for route in iter_route_contexts(app.routes):
        assert isinstance(route.original_route, APIRoute), route
        assert route.path is not None
        assert route.methods is not None
        routes |= {(m, route.path) for m in route.methods if m != "HEAD"}
    assert routes
    assert {TABLE[r][0] for r in routes} == {"installer"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
    ) as plain:
        for who in ("anonymous", "admin"):
            got = await plain.post("/boot/v1/hello", json={"node": "pi1"}, headers=headers[who])
            assert got.status_code == 403, (who, got.text)
            assert (await plain.get("/api/v1/nodes", headers=headers[who])).status_code == 404
