"""Deployments in the store, on SQLite and on a real PostgreSQL: one active deployment per node,
and claims (leases) that never let two managers sharing a database drive the same one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from piman.errors import ConflictError
from piman.fleet.records import EnvironmentRecord
from piman.store import Store, reconcile
from tests.integration.store.test_store import (  # noqa: F401 - fixtures
    _SchemaStore,
    db_url,
    make_config,
    store,
)

NODES = "".join(
    f"  - {{name: n{i}, switch: rack2, port: {i}, ip: 198.18.0.{100 + i}}}\n" for i in range(1, 21)
)


def env(name: str = "lite") -> EnvironmentRecord:
    return EnvironmentRecord(
        name=name, source="lite.img", source_sha256="0" * 64, kind="img", image_size=1 << 30,
        image_sha256="1" * 64, mapped_bytes=1 << 28, table="mbr", os_family="raspios",
        customisation="firstrun", boot_files=("config.txt",), cmdline=None, description="",
        created_at=datetime.now(UTC), created_by="test",
    )  # fmt: skip


async def deploy(s: Store, node: str) -> int:
    record = await s.deployments.create(
        node=node, environment="lite", state="new", options={}, created_by="test",
        bytes_total=1 << 28, deadline_at=None, token_digest=None, token_expires_at=None,
    )  # fmt: skip
    return record.id


@pytest.fixture
async def second(store: Store, db_url: str, tmp_path: Path) -> AsyncIterator[Store]:  # noqa: F811
    """Another manager's connection to the same database (and schema)."""
    other = (
        _SchemaStore(store.url, store.schema)
        if isinstance(store, _SchemaStore)
        else Store(store.url)
    )
    await other.open()
    try:
        yield other
    finally:
        await other.close()


async def test_one_active_deployment_per_node(store: Store, tmp_path: Path) -> None:  # noqa: F811
    await reconcile(store, make_config("sqlite://", tmp_path, NODES))
    await store.environments.add(env())
    first = await deploy(store, "n1")
    with pytest.raises(ConflictError, match="already being deployed"):
        await deploy(store, "n1")
    with pytest.raises(ConflictError):  # an environment in use stays
        await store.environments.remove("lite")
    now = datetime.now(UTC)
    await store.deployments.update(first, result="ok", state="deployed", finished_at=now)
    await deploy(store, "n1")  # the first one ended: a new one may start


async def test_two_managers_never_claim_the_same_deployment(
    store: Store,  # noqa: F811
    second: Store,
    tmp_path: Path,
) -> None:
    await reconcile(store, make_config("sqlite://", tmp_path, NODES))
    await store.environments.add(env())
    ids = {await deploy(store, f"n{i}") for i in range(1, 21)}
    now = datetime.now(UTC)
    lease = now + timedelta(seconds=30)

    async def claims(s: Store, owner: str) -> set[int]:
        got: set[int] = set()
        for _ in range(5):  # both managers' loops, interleaved
            got |= {d.id for d in await s.deployments.claim(owner, now=now, lease_until=lease,
                                                             limit=3)}  # fmt: skip
            await asyncio.sleep(0)
        return got

    a, b = await asyncio.gather(claims(store, "manager-a"), claims(second, "manager-b"))
    assert a.isdisjoint(b)
    assert a | b <= ids
    assert a
    assert b
    # A manager renews its own leases; the other one cannot take them while they run…
    again = {d.id for d in await store.deployments.claim("manager-a", now=now, lease_until=lease,
                                                         limit=100)}  # fmt: skip
    assert a <= again
    assert again.isdisjoint(b)
    # … and takes them over once they lapse (manager-a died).
    later = lease + timedelta(seconds=1)
    taken = {d.id for d in await second.deployments.claim(
        "manager-b", now=later, lease_until=later + timedelta(seconds=30), limit=100)}  # fmt: skip
    assert taken == ids
