"""The environments page and its upload: the list as a browser gets it, the upload form for
operators and admins only, and ``POST /api/v1/environments`` importing a real disk image (the
demo's, built with sfdisk, mkfs.vfat and mke2fs) as ``piman env add`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.deploy.service import build as build_deploy
from piman.sim.image import build_demo_image
from piman.store import Store, reconcile
from piman.web.app import create_app
from tests.support import grant

Rig = tuple[httpx.AsyncClient, dict[str, dict[str, str]], AppContext, Path]
LIMIT = 64 << 20


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_image(tmp_path_factory.mktemp("image") / "demo-os.img")


@pytest.fixture
async def rig(tmp_path: Path, image: Path) -> AsyncIterator[Rig]:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "deploy": {"max_upload": LIMIT},
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    deploy = build_deploy(ctx)
    assert deploy is not None
    ctx.deploy = deploy.handle
    headers = {role: await grant(ctx, role) for role in ("user", "viewer", "operator")}
    app = create_app(ctx)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            yield client, headers, ctx, image
    finally:
        await store.close()


def upload(
    client: httpx.AsyncClient, who: dict[str, str], body: bytes, **params: str
) -> httpx.Request:
    return client.build_request(
        "POST",
        "/api/v1/environments",
        params=params,
        content=body,
        headers={**who, "Content-Type": "application/octet-stream", "Origin": "http://127.0.0.1"},
    )


async def test_an_operator_uploads_an_image_and_the_page_lists_it(rig: Rig) -> None:
    client, h, ctx, image = rig
    page = (await client.get("/environments", headers=h["operator"])).text
    assert 'id="upload-form"' in page
    assert "envs.js" in page
    assert "No environment yet." in page
    body = image.read_bytes()
    got = await client.send(
        upload(client, h["operator"], body, name="lab-os", filename="../demo os.img")
    )
    assert got.status_code == 201, got.text
    made = got.json()
    assert made["name"] == "lab-os"
    assert made["image_size"] == len(body)
    assert made["created_by"] == "operator"
    assert made["source"].endswith("demo_os.img")
    listed = (await client.get("/environments", headers=h["viewer"])).text
    assert 'data-environment="lab-os"' in listed
    assert 'id="upload-form"' not in listed  # a viewer sees the list, not the form
    parts = (await client.get("/ui/environments", headers=h["viewer"])).text
    assert 'data-environment="lab-os"' in parts
    assert "<html" not in parts
    assert [e.name for e in await ctx.store.environments.list()] == ["lab-os"]
    actions = [(a.action, a.target, a.result) for a in await ctx.store.audit.list()]
    assert ("env.add", "lab-os", "ok") in actions
    # The same name again: refused, the first one kept.
    again = await client.send(upload(client, h["operator"], body, name="lab-os"))
    assert again.status_code == 409
    uploads = ctx.config.manager.data_dir / "environments" / ".uploads"
    assert list(uploads.iterdir()) == []  # nothing left behind


async def test_uploads_are_refused_to_viewers_users_and_bad_bodies(rig: Rig) -> None:
    client, h, ctx, image = rig
    body = image.read_bytes()[: 1 << 20]
    assert (await client.send(upload(client, h["viewer"], body, name="x"))).status_code == 403
    assert (await client.send(upload(client, h["user"], body, name="x"))).status_code == 403
    assert (await client.get("/environments", headers=h["user"])).status_code == 403
    bad_name = await client.send(upload(client, h["operator"], body, name="Bad Name"))
    assert bad_name.status_code == 422
    broken = b"\x1f\x8b\x08\x00" + b"not gzip data" * 100  # a gzip header, then junk
    junk = await client.send(upload(client, h["operator"], broken, name="junk"))
    assert junk.status_code == 422, junk.text
    assert "upload.img" in junk.json()["detail"]  # the error names the uploaded file
    as_json = await client.post(
        "/api/v1/environments?name=x",
        content=b"{}",
        headers={**h["operator"], "Content-Type": "application/json"},
    )
    assert as_json.status_code == 415
    # A method the upload path does not have is the router's 405, whatever the body's type
    # (schemathesis found the guard answering 415 to PUT with a file).
    for method in ("PUT", "PATCH", "DELETE"):
        other = await client.request(
            method,
            "/api/v1/environments?name=x",
            content=body[:1024],
            headers={**h["operator"], "Content-Type": "application/octet-stream"},
        )
        assert other.status_code == 405, (method, other.text)
    too_big = upload(client, h["operator"], b"", name="big")
    too_big.headers["Content-Length"] = str(LIMIT + 1)
    assert (await client.send(too_big)).status_code == 413
    cross = upload(client, h["operator"], body, name="x")
    cross.headers["Origin"] = "http://evil.example"
    assert (await client.send(cross)).status_code == 403
    assert await ctx.store.environments.list() == []
