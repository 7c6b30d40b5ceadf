"""The users and tokens page (admins) as a browser gets it, and what its buttons call: add a
user with a role, set a role, reset a password, revoke a token; the forms' requests are
refused from another origin, and nobody but an admin gets the page or its parts.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.support import grant

Rig = tuple[httpx.AsyncClient, dict[str, dict[str, str]], AppContext]
SAME = {"Origin": "http://127.0.0.1"}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {"manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)}}
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    headers = {role: await grant(ctx, role) for role in ("admin", "operator", "user")}
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            yield client, headers, ctx
    finally:
        await store.close()


def role_of(html: str, user: str) -> str:
    row = re.search(rf'<tr data-user="{user}">.*?</tr>', html, re.S)
    assert row is not None, user
    chosen = re.search(r"<option selected>(\w+)</option>", row.group(0))
    assert chosen is not None
    return chosen.group(1)


async def test_an_admin_adds_a_user_sets_a_role_resets_a_password_and_revokes_a_token(
    rig: Rig,
) -> None:
    client, h, ctx = rig
    page = await client.get("/admin/users", headers=h["admin"])
    assert page.status_code == 200
    html = page.text
    assert 'id="user-form"' in html
    assert role_of(html, "operator") == "operator"
    me = re.search(r'<tr data-user="admin">.*?</tr>', html, re.S)
    assert me is not None
    assert "(you)" in me.group(0)
    tokens = re.findall(r'class="token-revoke" data-id="(\d+)"', html)
    assert len(tokens) == 3  # one per account the rig made
    # What the form and the buttons send:
    added = await client.post(
        "/api/v1/users",
        json={"name": "carol", "role": "viewer", "password": "a-long-password-1"},
        headers={**h["admin"], **SAME},
    )
    assert added.status_code == 201, added.text
    changed = await client.patch(
        "/api/v1/users/carol", json={"role": "operator"}, headers={**h["admin"], **SAME}
    )
    assert changed.status_code == 200, changed.text
    reset = await client.patch(
        "/api/v1/users/carol",
        json={"password": "another-password-2"},
        headers={**h["admin"], **SAME},
    )
    assert reset.status_code == 200, reset.text
    login = await client.post(
        "/api/v1/auth/login", json={"username": "carol", "password": "another-password-2"}
    )
    assert login.status_code == 200
    client.cookies.clear()
    (user_token,) = [t.id for t in await ctx.access.tokens("user")]  # type: ignore[union-attr]
    revoked = await client.delete(f"/api/v1/tokens/{user_token}", headers={**h["admin"], **SAME})
    assert revoked.status_code == 200
    assert (await client.get("/api/v1/auth/me", headers=h["user"])).status_code == 401
    parts = (await client.get("/ui/users", headers=h["admin"])).text
    assert role_of(parts, "carol") == "operator"
    row = re.search(rf'<tr data-token="{user_token}".*?</tr>', parts, re.S)
    assert row is not None
    assert "revoked" in row.group(0)
    assert "<button" not in row.group(0)
    assert "<html" not in parts
    assert "password_hash" not in parts
    assert "argon2" not in parts


async def test_only_admins_get_the_page_and_a_cross_origin_change_is_refused(rig: Rig) -> None:
    client, h, _ = rig
    for who in ("operator", "user"):
        assert (await client.get("/admin/users", headers=h[who])).status_code == 403
        assert (await client.get("/ui/users", headers=h[who])).status_code == 403
    assert (await client.get("/admin/users", follow_redirects=False)).status_code == 303
    login = await client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": "password-of-admin"}
    )
    assert login.status_code == 200
    evil = await client.patch(
        "/api/v1/users/user", json={"role": "admin"}, headers={"Origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    html = (await client.get("/admin/users")).text  # the session cookie, as a browser
    assert role_of(html, "user") == "user"
