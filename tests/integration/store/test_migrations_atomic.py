"""Upgrading the schema is all or nothing, and keeps the rows of older revisions.

A ``kill -9`` of the manager in the middle of an upgrade must leave the database at the revision
it had before (SQLite runs DDL outside a transaction unless told otherwise: half the tables of a
revision without its version, and the next start fails on "table already exists"). The child
process below is the real store upgrading a real SQLite file; it stops itself right after one
statement of a migration and the test kills it with SIGKILL there, then starts the store again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from piman.store import Store
from piman.store.db import _upgrade
from piman.store.tables import Base

REPO = Path(__file__).resolve().parents[3]

# The child: the store upgrading DB_URL, stopped (blocked) right after the statement that
# contains PAUSE_AT; it says "paused" on stdout and waits there for the SIGKILL.
CHILD = """\
import asyncio, sys, time
from sqlalchemy import event
from sqlalchemy.engine import Engine
from piman.store import Store

url, pause_at = sys.argv[1], sys.argv[2]

@event.listens_for(Engine, "after_cursor_execute")
def _stop_here(conn, cursor, statement, parameters, context, executemany):
    if pause_at in statement:
        print("paused", flush=True)
        time.sleep(3600)

asyncio.run(Store(url).open())
print("finished", flush=True)
"""


def upgrade_to(path: Path, revision: str) -> None:
    """Bring the SQLite file at ``path`` to ``revision`` (as an older piman would have)."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            _upgrade(conn, revision)
    finally:
        engine.dispose()


def kill_mid_upgrade(path: Path, pause_at: str) -> None:
    """Run the store's upgrade in a child process and SIGKILL it right after ``pause_at``."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, f"sqlite+aiosqlite:///{path}", pause_at],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the child stops itself, or exits
        assert line == b"paused\n", line + proc.communicate(timeout=30)[1]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.communicate()


def version_of(path: Path) -> str | None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            has = conn.execute(
                text("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'")
            ).first()
            if has is None:
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def head() -> str:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from piman.store.db import MIGRATIONS

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    (only,) = ScriptDirectory.from_config(cfg).get_heads()
    return only


@pytest.mark.parametrize(
    ("start", "pause_at", "before"),
    [
        (None, "CREATE TABLE nodes", None),  # the very first start, inside 0001
        ("0001", "CREATE TABLE alert_groups", "0001"),  # an upgrade, inside its first migration
        ("0001", "CREATE TABLE api_tokens", "0001"),  # … inside a later one
        ("b2c3acc0u0t5", "CREATE TABLE deployments", "b2c3acc0u0t5"),
        # d4e5 (outbox dead letters) alters a table rather than creating one
        ("c3d4dep10y01", "ALTER TABLE alert_outbox ADD COLUMN dead_at", "c3d4dep10y01"),
        ("d4e5deadl3t7", "CREATE TABLE reservations", "d4e5deadl3t7"),
    ],
)
async def test_a_kill_mid_upgrade_leaves_the_old_revision_and_the_next_start_succeeds(
    tmp_path: Path, start: str | None, pause_at: str, before: str | None
) -> None:
    path = tmp_path / "piman.db"
    if start is not None:
        upgrade_to(path, start)
    kill_mid_upgrade(path, pause_at)

    assert version_of(path) == before  # nothing of the interrupted upgrade stayed
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()  # the next start
    try:
        assert await store.nodes.list() == []
        assert await store.deployments.list() == []
        assert await store.users.list() == []
    finally:
        await store.close()
    assert version_of(path) == head()


OLD_RECEIVER = "webhook:https://bot:hunter2@hooks.example/services/S3CRET"


def outbox_rows(path: Path) -> tuple[list[str], list[str]]:
    """(the receivers of the outbox rows, the outbox table's columns) of the SQLite file."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            receivers = conn.exec_driver_sql("SELECT receiver FROM alert_outbox ORDER BY id")
            columns = conn.exec_driver_sql("PRAGMA table_info(alert_outbox)")
            return [r for (r,) in receivers], [c[1] for c in columns]
    finally:
        engine.dispose()


async def test_a_kill_mid_rename_of_outbox_receivers_keeps_the_old_rows_whole(
    tmp_path: Path,
) -> None:
    """d4e5 renames each receiver through a temporary name (``~0``): a kill after the first
    UPDATE leaves neither the temporary name nor the new column, and the next start renames."""
    path = tmp_path / "piman.db"
    upgrade_to(path, "c3d4dep10y01")
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            for key in ("k1", "k2"):
                conn.exec_driver_sql(
                    "INSERT INTO alert_outbox (receiver, key, payload, created_at, "
                    "next_attempt_at, attempts) VALUES (?, ?, '{}', ?, ?, 0)",
                    (OLD_RECEIVER, key, T0.replace(tzinfo=None), T0.replace(tzinfo=None)),
                )
    finally:
        engine.dispose()

    kill_mid_upgrade(path, "UPDATE alert_outbox SET receiver")

    assert version_of(path) == "c3d4dep10y01"
    receivers, columns = outbox_rows(path)
    assert receivers == [OLD_RECEIVER, OLD_RECEIVER]  # not "~0", not half renamed
    assert "dead_at" not in columns
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()  # the next start
    try:
        pending = await store.alerts.pending_counts()
    finally:
        await store.close()
    assert version_of(path) == head()
    assert pending == {"webhook:https://hooks.example": 2}
    receivers, columns = outbox_rows(path)
    assert receivers == ["webhook:https://hooks.example"] * 2
    assert "dead_at" in columns


# --- an upgrade from 0001 with rows in every table 0001 has --------------------------------------

T0 = datetime(2026, 11, 21, 9, 30, 15, 123456, tzinfo=UTC)
T1 = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC)
SWITCHES = [
    {"id": 1, "name": "rack1", "address": "198.18.0.254", "driver": "snmp-poe",
     "profile": "rfc3621", "declared": True, "created_at": T0, "updated_at": T1},
    {"id": 2, "name": "rack2", "address": None, "driver": "manual", "profile": None,
     "declared": False, "created_at": T0, "updated_at": T0},
]  # fmt: skip
NODES = [
    {"id": 1, "name": "rack1-02", "mac": "dc:a6:32:00:00:02", "ip": "198.18.0.12",
     "serial": "1234abcd", "model": "pi4", "hostname": "lab-rack1-02",
     "agent_url": "http://198.18.0.12:9110/metrics", "switch_id": 1, "port": 2,
     "state": "deployed", "power_state": "on", "vendor_class": "PXEClient:Arch:00000:UNDI:002001",
     "first_seen": T0, "last_seen": T1, "declared": True, "created_at": T0, "updated_at": T1},
    {"id": 2, "name": "pi-dc-a6-32-00-00-09", "mac": "dc:a6:32:00:00:09", "ip": None,
     "serial": None, "model": None, "hostname": None, "agent_url": None, "switch_id": None,
     "port": None, "state": "new", "power_state": "unknown", "vendor_class": None,
     "first_seen": T1, "last_seen": T1, "declared": False, "created_at": T1, "updated_at": T1},
]  # fmt: skip
AUDIT = [
    {"id": 1, "at": T0, "actor": "local:root", "action": "power.cycle", "target": "rack1-02",
     "result": "ok", "detail": "rack1:2 off, on"},
    {"id": 2, "at": T1, "actor": "user:alice", "action": "node.deploy", "target": "rack1-02",
     "result": "failed", "detail": None},
]  # fmt: skip
# Every table of 0001. Their models have not changed since; a migration that changes one of them
# must freeze the table's 0001 form here for the inserts.
TABLES = [("switches", SWITCHES), ("nodes", NODES), ("audit_log", AUDIT)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def url_at_0001(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of its own at revision 0001 (a new PostgreSQL database per test)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}"
        yield url
        return
    base: str = request.getfixturevalue("postgres_url")
    server = create_async_engine(base.replace("postgresql://", "postgresql+asyncpg://", 1),
                                 isolation_level="AUTOCOMMIT")  # fmt: skip
    name = "t" + uuid.uuid4().hex[:12]
    async with server.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    server_url = base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{server_url}/{name}"
    finally:
        async with server.connect() as conn:
            await conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        await server.dispose()


async def test_an_upgrade_from_0001_keeps_every_row(url_at_0001: str) -> None:
    engine = create_async_engine(url_at_0001)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade, "0001")
            for name, rows in TABLES:
                await conn.execute(insert(Base.metadata.tables[name]), rows)
    finally:
        await engine.dispose()

    store = Store(url_at_0001)
    await store.open()  # 0001 → head
    try:
        async with store.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert version == [(head(),)]
            for name, rows in TABLES:
                table = Base.metadata.tables[name]
                got = (await conn.execute(select(table).order_by(table.c.id))).all()
                assert [dict(row._mapping) for row in got] == rows, name
        # … and the program reads them as it did
        nodes = {n.name: n for n in await store.nodes.list()}
        assert nodes["rack1-02"].switch_port == "rack1:2"
        assert (nodes["rack1-02"].state, nodes["rack1-02"].last_seen) == ("deployed", T1)
        assert nodes["pi-dc-a6-32-00-00-09"].switch is None
        assert [(s.name, s.driver, s.declared) for s in await store.switches.list()] == [
            ("rack1", "snmp-poe", True),
            ("rack2", "manual", False),
        ]
        audit = await store.audit.list()
        assert [(a.actor, a.action, a.result, a.at) for a in audit] == [
            ("user:alice", "node.deploy", "failed", T1),
            ("local:root", "power.cycle", "ok", T0),
        ]
    finally:
        await store.close()
