"""The store on SQLite and on a real PostgreSQL: migrations, reconcile, repositories, audit log."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from piman.config import Config, parse_config
from piman.errors import NotFoundError, StoreError
from piman.fleet import IllegalTransition, NodeState, PowerState
from piman.store import Store, reconcile
from piman.store.db import _upgrade

CONFIG = """\
manager: {{address: 198.18.0.1, network: 198.18.0.0/24, data_dir: {data_dir}}}
database: {{url: "{url}"}}
switches:
  - {{name: rack1, address: 198.18.0.254}}
  - {{name: rack2, address: 198.18.0.253}}
nodes:
  - {{name: a, switch: rack1, port: 1, mac: "dc:a6:32:00:00:01", ip: 198.18.0.11}}
  - {{name: b, switch: rack1, port: 2, mac: "dc:a6:32:00:00:02", ip: 198.18.0.12, serial: 1234abcd}}
"""


def make_config(url: str, data_dir: Path, extra: str = "") -> Config:
    return parse_config(CONFIG.format(url=url, data_dir=data_dir) + extra, "piman.yaml")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'piman.db'}"
    base: str = request.getfixturevalue("postgres_url")
    return base


@pytest.fixture
async def store(db_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    url = make_config(db_url, tmp_path).database_url
    if url.startswith("sqlite"):
        s = Store(url)
    else:  # one schema per test on the shared server
        schema = "t" + uuid.uuid4().hex[:12]
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await engine.dispose()
        s = _SchemaStore(url, schema)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class _SchemaStore(Store):
    """A store whose connections use their own PostgreSQL schema (test isolation)."""

    def __init__(self, url: str, schema: str) -> None:
        super().__init__(url)
        self.schema = schema

    async def open(self) -> None:
        await super().open()  # migrates the public schema (harmless), then re-open scoped
        await super().close()
        self._engine = create_async_engine(self.url)
        schema = self.schema

        @event.listens_for(self._engine.sync_engine, "connect")
        def _search_path(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.run_async(lambda c: c.execute(f"SET search_path TO {schema}"))

        async with self._engine.begin() as conn:
            await conn.run_sync(_upgrade)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)


async def test_migrations_create_the_tables_and_are_idempotent(store: Store) -> None:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from piman.store.db import MIGRATIONS

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    async with store.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
        assert set(version) == heads
    await store.close()
    await store.open()  # upgrading an up-to-date schema is a no-op
    assert await store.nodes.list() == []


async def test_reconcile_declares_inventory(store: Store, tmp_path: Path) -> None:
    config = make_config(store.url, tmp_path)
    report = await reconcile(store, config)
    assert (report.switches_added, report.nodes_added) == (2, 2)
    nodes = await store.nodes.list()
    assert [(n.name, n.switch_port, n.state, n.power_state) for n in nodes] == [
        ("a", "rack1:1", "ready", "unknown"),
        ("b", "rack1:2", "ready", "unknown"),
    ]
    assert (await store.nodes.get("b")).serial == "1234abcd"
    assert [s.name for s in await store.switches.list()] == ["rack1", "rack2"]


async def test_reconcile_keeps_runtime_fields(store: Store, tmp_path: Path) -> None:
    await reconcile(store, make_config(store.url, tmp_path))
    await store.nodes.set_power_state("a", PowerState.ON)
    await store.nodes.set_state("a", NodeState.ALLOCATED)
    seen = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
    await store.nodes.record_sighting("dc:a6:32:00:00:01", vendor_class="PXEClient", now=seen)
    # The operator moves node a to another port and reconciles again.
    moved = make_config(store.url, tmp_path).model_copy(deep=True)
    moved.nodes[0].port = 5
    await reconcile(store, moved)
    a = await store.nodes.get("a")
    assert (a.port, a.power_state, a.state, a.vendor_class) == (5, "on", "allocated", "PXEClient")
    assert a.last_seen == seen


async def test_swapping_ports_between_nodes_reconciles(store: Store, tmp_path: Path) -> None:
    config = make_config(store.url, tmp_path)
    await reconcile(store, config)
    swapped = config.model_copy(deep=True)
    swapped.nodes[0].port, swapped.nodes[1].port = 2, 1
    swapped.nodes[0].mac, swapped.nodes[1].mac = swapped.nodes[1].mac, swapped.nodes[0].mac
    await reconcile(store, swapped)
    a, b = await store.nodes.get("a"), await store.nodes.get("b")
    assert (a.port, a.mac, b.port, b.mac) == (2, "dc:a6:32:00:00:02", 1, "dc:a6:32:00:00:01")


async def test_discovered_node_is_merged_when_declared(store: Store, tmp_path: Path) -> None:
    first = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    found = await store.nodes.record_sighting(
        "dc:a6:32:00:00:09", serial="cafe0009", model="pi4", now=first
    )
    assert (found.name, found.state, found.declared) == ("pi-dca632000009", "new", False)
    config = make_config(
        store.url,
        tmp_path,
        '  - {name: c, switch: rack2, port: 1, mac: "dc:a6:32:00:00:09", ip: 198.18.0.13}\n',
    )
    report = await reconcile(store, config)
    assert report.nodes_merged == 1
    c = await store.nodes.get("c")
    assert (c.serial, c.model, c.first_seen, c.state) == ("cafe0009", "pi4", first, "ready")
    with pytest.raises(NotFoundError):
        await store.nodes.get("pi-dca632000009")


async def test_removed_nodes_stay_but_are_no_longer_declared(store: Store, tmp_path: Path) -> None:
    config = make_config(store.url, tmp_path)
    await reconcile(store, config)
    await reconcile(store, config.model_copy(update={"nodes": config.nodes[:1]}))
    b = await store.nodes.get("b")
    assert (b.declared, b.switch) == (False, None)


async def test_lifecycle_moves_are_checked(store: Store, tmp_path: Path) -> None:
    await reconcile(store, make_config(store.url, tmp_path))
    with pytest.raises(IllegalTransition):
        await store.nodes.set_state("a", NodeState.DEPLOYED)
    assert (await store.nodes.set_state("a", NodeState.DEPLOYING)).state == "deploying"
    with pytest.raises(NotFoundError):
        await store.nodes.set_state("zz", NodeState.READY)


async def test_audit_log_is_newest_first_and_filterable(store: Store) -> None:
    t0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    for i, target in enumerate(["rack1:1", "rack1:2", "rack1:1"]):
        await store.audit.add(
            "cli:root", "power.off", target, "ok", detail=f"step {i}", at=t0.replace(minute=i)
        )
    entries = await store.audit.list(target="rack1:1")
    assert [e.detail for e in entries] == ["step 2", "step 0"]
    assert entries[0].at == t0.replace(minute=2)
    assert len(await store.audit.list(action="power.off")) == 3


async def test_find_by_mac_ip_serial(store: Store, tmp_path: Path) -> None:
    await reconcile(store, make_config(store.url, tmp_path))
    assert (await store.nodes.find(mac="dc:a6:32:00:00:02")).name == "b"  # type: ignore[union-attr]
    assert (await store.nodes.find(ip="198.18.0.11")).name == "a"  # type: ignore[union-attr]
    assert (await store.nodes.find(serial="1234abcd")).name == "b"  # type: ignore[union-attr]
    assert await store.nodes.find(mac="00:00:00:00:00:00") is None


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'x' / 'piman.db'}")
    await s.open()
    try:
        async with s.engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
        assert mode == "wal"
    finally:
        await s.close()


async def test_unreachable_database_is_a_store_error() -> None:
    s = Store("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError, match="cannot open the database"):
        await s.open()


async def test_unwritable_sqlite_directory_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = Store(f"sqlite+aiosqlite:///{blocker / 'sub' / 'piman.db'}")
    with pytest.raises(StoreError, match="cannot create"):
        await s.open()


async def test_undeclared_node_keeps_its_mac(store: Store, tmp_path: Path) -> None:
    config = make_config(store.url, tmp_path)
    await reconcile(store, config)
    await reconcile(store, config.model_copy(update={"nodes": config.nodes[1:]}))
    a = await store.nodes.get("a")
    assert (a.declared, a.mac) == (False, "dc:a6:32:00:00:01")
    again = await store.nodes.record_sighting("dc:a6:32:00:00:01")
    assert again.name == "a"


async def test_tables_match_the_migrations(store: Store) -> None:
    """The SQLAlchemy models and the Alembic migrations describe the same schema."""
    import importlib
    import pkgutil

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import piman.store
    from piman.store.tables import Base

    for module in pkgutil.iter_modules(piman.store.__path__):
        if "tables" in module.name:
            importlib.import_module(f"piman.store.{module.name}")

    def diff(conn: Any) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with store.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    differences = [d for d in differences if not (d[0] == "remove_table" and "alembic" in str(d))]
    assert differences == []
