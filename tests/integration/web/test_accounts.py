"""Accounts through the HTTP API: logins, sessions that end, tokens shown once, what the store
holds, the first admin, the audit log, and the Host/Origin guard."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.access.service import INITIAL_PASSWORD_FILE, AccessService, build
from piman.config.models import Config
from piman.context import AppContext
from piman.store import Store, reconcile
from piman.web.app import create_app
from piman.web.security import HostPolicy

BASE = "http://127.0.0.1:8000"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@dataclass
class Rig:
    client: httpx.AsyncClient
    access: AccessService
    store: Store
    clock: Clock
    data_dir: Path


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {
                "address": "198.18.0.1",
                "data_dir": str(tmp_path),
                "allowed_hosts": ["piman.lab"],
            },
            "access": {"session_idle": "30m", "session_max": "8h", "login_attempts": 3},
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    built = build(ctx)
    access = built.handle
    assert isinstance(access, AccessService)
    clock = Clock()
    access.clock = clock
    access.monotonic = lambda: clock.mono
    ctx.access = access
    for step in built.startup:
        await step()
    await access.add_user("olga", "operator", "olga-password")
    await access.add_user("vic", "viewer", "vic-password")
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
            yield Rig(c, access, store, clock, tmp_path)
    finally:
        await store.close()


async def login(rig: Rig, name: str, password: str) -> httpx.Response:
    return await rig.client.post(
        "/api/v1/auth/login",
        json={"username": name, "password": password},
        headers={"Origin": BASE},  # as a browser's login form sends it
    )


async def test_a_login_sets_a_strict_http_only_session_cookie_that_logout_ends(rig: Rig) -> None:
    response = await login(rig, "olga", "olga-password")
    assert response.status_code == 200
    assert response.json() == {"user": "olga", "role": "operator", "via": "session"}
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "secure" not in cookie  # plain HTTP here; `manager.tls` adds Secure
    assert (await rig.client.get("/api/v1/auth/me")).json()["user"] == "olga"
    out = await rig.client.post("/api/v1/auth/logout", headers={"Origin": BASE})
    assert out.status_code == 204
    assert (await rig.client.get("/api/v1/auth/me")).status_code == 401
    # The old cookie, replayed after logout, is dead on the server too.
    rig.client.cookies.set("piman_session", response.cookies["piman_session"])
    assert (await rig.client.get("/api/v1/auth/me")).status_code == 401


async def test_a_wrong_password_and_an_unknown_name_read_the_same_and_get_throttled(
    rig: Rig,
) -> None:
    wrong = await login(rig, "olga", "nope-nope")
    unknown = await login(rig, "nobody", "nope-nope")
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {
            "error": "unauthorized",
            "detail": "wrong user name or password",
        }
    )
    await login(rig, "olga", "nope-again")
    await login(rig, "olga", "and-again")  # the third failure for olga (login_attempts: 3)
    throttled = await login(rig, "olga", "olga-password")  # even the right password waits
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    assert (await login(rig, "vic", "vic-password")).status_code == 200  # others still may
    rig.clock.tick(301)  # the window (5 min) has passed
    assert (await login(rig, "olga", "olga-password")).status_code == 200


async def test_sessions_end_when_idle_and_at_their_absolute_expiry(rig: Rig) -> None:
    assert (await login(rig, "vic", "vic-password")).status_code == 200
    rig.clock.tick(29 * 60)
    assert (await rig.client.get("/api/v1/auth/me")).status_code == 200  # used: idle resets
    rig.clock.tick(29 * 60)
    assert (await rig.client.get("/api/v1/auth/me")).status_code == 200
    rig.clock.tick(31 * 60)  # idle longer than session_idle
    assert (await rig.client.get("/api/v1/auth/me")).status_code == 401

    rig.client.cookies.clear()
    assert (await login(rig, "vic", "vic-password")).status_code == 200
    logged_in = rig.clock.now
    alive = []
    for _ in range(20):  # used every 29 min, but 8 h (session_max) after login it ends anyway
        rig.clock.tick(29 * 60)
        alive.append((await rig.client.get("/api/v1/auth/me")).status_code == 200)
    ended = alive.index(False)
    assert all(alive[:ended])
    assert logged_in + timedelta(minutes=29 * ended) < logged_in + timedelta(hours=8)
    assert logged_in + timedelta(minutes=29 * (ended + 1)) >= logged_in + timedelta(hours=8)


async def test_a_forged_cookie_is_refused(rig: Rig) -> None:
    assert (await login(rig, "vic", "vic-password")).status_code == 200
    real = rig.client.cookies["piman_session"]
    sid, _, tag = real.rpartition(".")
    rig.client.cookies.set(
        "piman_session", sid[:-2] + ("AA" if sid[-2:] != "AA" else "BB") + "." + tag
    )
    assert (await rig.client.get("/api/v1/auth/me")).status_code == 401


async def test_a_token_is_shown_once_and_the_store_holds_nothing_usable(rig: Rig) -> None:
    made = await rig.client.post(
        "/api/v1/auth/token",
        json={"username": "olga", "password": "olga-password", "name": "ci"},
    )
    assert made.status_code == 201
    token = made.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    listed = (await rig.client.get("/api/v1/tokens", headers=headers)).json()
    assert [t["prefix"] for t in listed] == [made.json()["prefix"]]
    assert "token" not in listed[0]  # never shown again
    assert (await login(rig, "olga", "olga-password")).status_code == 200

    db = sqlite3.connect(rig.data_dir / "piman.db")
    try:
        dump = "\n".join(db.iterdump())
        (stored_hash,) = db.execute("SELECT password_hash FROM users WHERE name='olga'").fetchone()
    finally:
        db.close()
    wal = (
        (rig.data_dir / "piman.db-wal").read_bytes()
        if (rig.data_dir / "piman.db-wal").exists()
        else b""
    )
    for secret in (
        token,
        token.split("_", 2)[2],
        "olga-password",
        rig.client.cookies["piman_session"].split(".")[0],
    ):
        assert secret not in dump
        assert secret.encode() not in wal
    assert stored_hash.startswith("$argon2id$")


async def test_a_revoked_token_and_a_removed_user_stop_working(rig: Rig) -> None:
    _, token = await rig.access.create_token("vic", "script", None)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await rig.client.get("/api/v1/nodes", headers=headers)).status_code == 200
    (record,) = await rig.access.tokens("vic")
    await rig.access.revoke_token(record.id, user=None)
    assert (await rig.client.get("/api/v1/nodes", headers=headers)).status_code == 401
    _, token = await rig.access.create_token("vic", "again", None)
    await rig.access.remove_user("vic")
    gone = await rig.client.get("/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401


async def test_a_token_revoked_by_another_manager_stops_working_within_a_second(rig: Rig) -> None:
    # What a token resolved to is remembered for a second; a change made through another manager
    # sharing the store (here: written to the store directly) counts after that second, and an
    # expiry counts at once, whatever was remembered.
    _, token = await rig.access.create_token("vic", "script", None)
    headers = {"Authorization": f"Bearer {token}"}
    assert (await rig.client.get("/api/v1/auth/me", headers=headers)).status_code == 200
    (record,) = await rig.access.tokens("vic")
    await rig.store.tokens.revoke(record.id, rig.clock(), user=None)
    rig.clock.tick(1.01)
    assert (await rig.client.get("/api/v1/auth/me", headers=headers)).status_code == 401
    _, brief = await rig.access.create_token("vic", "brief", rig.clock() + timedelta(seconds=0.5))
    headers = {"Authorization": f"Bearer {brief}"}
    assert (await rig.client.get("/api/v1/auth/me", headers=headers)).status_code == 200
    rig.clock.tick(0.6)
    assert (await rig.client.get("/api/v1/auth/me", headers=headers)).status_code == 401


async def test_a_token_follows_its_users_role(rig: Rig) -> None:
    _, token = await rig.access.create_token("vic", "script", None)
    headers = {"Authorization": f"Bearer {token}", "Origin": BASE}
    body = {"matchers": ["node=pi1"], "duration": "1h"}
    # (alerting is off here, so a permitted call gets 404: the route does not exist; 403 is a
    # refusal by role, which comes first)
    assert (await rig.client.get("/api/v1/users", headers=headers)).status_code == 403
    await rig.access.set_role("vic", "admin")
    assert (await rig.client.get("/api/v1/users", headers=headers)).status_code == 200
    del body


async def test_the_first_start_makes_an_admin_whose_password_is_only_in_a_0600_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config.model_validate(
        {"manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)}}
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
        caplog.set_level(logging.INFO, logger="piman.access")
        built = build(ctx)
        for step in built.startup:
            await step()
        path = tmp_path / INITIAL_PASSWORD_FILE
        password = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "session.key").stat().st_mode) == 0o600
        assert str(path) in caplog.text
        assert password not in caplog.text
        user = await built.handle.check_password("admin", password, client="test")
        assert user.role == "admin"
        # A second start changes nothing.
        again = AppContext(config=config, store=store, metrics=CollectorRegistry())
        for step in build(again).startup:
            await step()
        assert path.read_text().strip() == password
        assert [u.name for u in await built.handle.users()] == ["admin"]
        (audit,) = await store.audit.list(action="user.add")
        assert (audit.actor, audit.target) == ("manager", "admin")
    finally:
        await store.close()


async def test_the_admin_password_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIMAN_ADMIN_PASSWORD", "from-the-environment")
    config = Config.model_validate(
        {"manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)}}
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        built = build(AppContext(config=config, store=store, metrics=CollectorRegistry()))
        for step in built.startup:
            await step()
        assert not (tmp_path / INITIAL_PASSWORD_FILE).exists()
        await built.handle.check_password("admin", "from-the-environment", client="t")
    finally:
        await store.close()


async def test_the_audit_log_names_the_principal_never_what_the_client_says(rig: Rig) -> None:
    made = await rig.client.post(
        "/api/v1/auth/token",
        json={"username": "olga", "password": "olga-password", "name": "ops"},
    )
    token, prefix = made.json()["token"], made.json()["prefix"]
    headers = {"Authorization": f"Bearer {token}"}
    # A client that claims to be someone else is refused outright (no such field any more).
    claimed = await rig.client.post(
        "/api/v1/tokens", json={"name": "x", "created_by": "root"}, headers=headers
    )
    assert claimed.status_code == 422
    assert (
        await rig.client.post("/api/v1/tokens", json={"name": "x"}, headers=headers)
    ).status_code == 201
    entries = await rig.store.audit.list(action="token.create")
    assert entries[0].actor == f"olga (token {prefix})"
    assert entries[1].actor == "olga"  # the password login that made the first token


async def test_the_last_admin_cannot_be_removed_or_demoted(rig: Rig) -> None:
    _, token = await rig.access.create_token("admin", "t", None)
    headers = {"Authorization": f"Bearer {token}"}
    demote = await rig.client.patch("/api/v1/users/admin", json={"role": "viewer"}, headers=headers)
    assert demote.status_code == 409
    remove = await rig.client.delete("/api/v1/users/admin", headers=headers)
    assert remove.status_code == 409
    made = await rig.client.post(
        "/api/v1/users",
        json={"name": "ann", "role": "admin", "password": "ann-password"},
        headers=headers,
    )
    assert made.status_code == 201
    assert (await rig.client.delete("/api/v1/users/admin", headers=headers)).status_code == 204
    taken = await rig.client.post(
        "/api/v1/users",
        json={"name": "olga", "role": "viewer", "password": "x" * 10},
        headers=headers,
    )
    assert taken.status_code in (401, 409)  # the token's user is gone (401) before the name clash


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 400),  # DNS rebinding: a foreign name
        ({"Host": "evil.example:8000", "Origin": BASE}, 400),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": BASE, "Content-Type": "text/plain"}, 415),
        ({"Origin": BASE, "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Origin": BASE}, 201),
        ({"Sec-Fetch-Site": "same-origin"}, 201),
        ({"Host": "piman.lab:8000", "Origin": "http://piman.lab:8000"}, 201),  # allowed_hosts
        ({"Host": "198.18.0.1:8000", "Origin": "http://198.18.0.1:8000"}, 201),  # an address
    ],
)
async def test_the_guard_refuses_foreign_hosts_origins_and_form_bodies(
    rig: Rig, headers: dict[str, str], status: int
) -> None:
    assert (await login(rig, "olga", "olga-password")).status_code == 200
    response = await rig.client.post(
        "/api/v1/tokens",
        content=b'{"name": "guarded"}',
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code == status, response.text


async def test_a_cookie_request_without_origin_or_fetch_metadata_is_refused(rig: Rig) -> None:
    assert (await login(rig, "olga", "olga-password")).status_code == 200
    bare = await rig.client.post("/api/v1/tokens", json={"name": "bare"})
    assert bare.status_code == 403
    _, token = await rig.access.create_token("olga", "script", None)
    rig.client.cookies.clear()
    scripted = await rig.client.post(
        "/api/v1/tokens", json={"name": "script2"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert scripted.status_code == 201  # a script with a token needs no Origin


async def test_bodies_are_bounded(rig: Rig) -> None:
    big = b'{"name": "' + b"x" * (1 << 20) + b'"}'
    headers = {"Origin": BASE, "Content-Type": "application/json"}
    too_large = await rig.client.post("/api/v1/auth/login", content=big, headers=headers)
    assert too_large.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "olga", '
        yield b'"password": "olga-password"}'

    chunked = await rig.client.post("/api/v1/auth/login", content=chunks(), headers=headers)
    assert chunked.status_code == 411


async def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "manager": {
                "address": "198.18.0.1",
                "data_dir": str(tmp_path),
                "metrics_token": "m-s3cret",
            }
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
        ctx.access = build(ctx).handle
        await ctx.access.add_user("vic", "viewer", "vic-password")
        await ctx.access.add_user("ula", "user", "ula-password")
        _, viewer = await ctx.access.create_token("vic", "prometheus", None)
        _, user = await ctx.access.create_token("ula", "x", None)
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            assert (await client.get("/metrics")).status_code == 401
            wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            right = await client.get("/metrics", headers={"Authorization": "Bearer m-s3cret"})
            assert right.status_code == 200
            assert "# TYPE piman_logins_total counter" in right.text
            ok = await client.get("/metrics", headers={"Authorization": f"Bearer {viewer}"})
            assert ok.status_code == 200
            no = await client.get("/metrics", headers={"Authorization": f"Bearer {user}"})
            assert no.status_code == 401
            assert (await client.get("/healthz")).status_code == 200  # always open
    finally:
        await store.close()


def test_host_policy_knows_the_machine_and_configured_names() -> None:
    config = Config.model_validate(
        {
            "manager": {
                "address": "198.18.0.1",
                "allowed_hosts": ["Piman.Lab", "fleet.example:8443"],
                "external_url": "https://pis.example.org/",
            }
        }
    )
    policy = HostPolicy.of(config, machine_names=["rackhost"])
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "rackhost", "piman.lab:1",
                 "fleet.example", "pis.example.org", "10.1.2.3:80"):  # fmt: skip
        assert policy.allows_host(host), host
    for host in ("", "evil.example", "piman.lab.evil.example", "localhost.evil", "rackhost2"):
        assert not policy.allows_host(host), host
    assert policy.same_origin("https://pis.example.org", "http", "whatever")
    assert policy.same_origin("http://rackhost:8000", "http", "rackhost:8000")
    assert not policy.same_origin("https://rackhost:8000", "http", "rackhost:8000")


def test_the_session_key_is_private(tmp_path: Path) -> None:
    from piman.access.service import load_session_key

    key = load_session_key(tmp_path)
    assert load_session_key(tmp_path) == key
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "session.key").st_mode) == 0o600
