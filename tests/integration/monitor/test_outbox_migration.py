"""Upgrading an outbox written by an older piman: its rows keep flowing, its secrets are gone.

Before revision d4e5 an outbox row named its receiver by the whole URL, tokens and passwords
included. The upgrade renames each receiver as :func:`build_receivers` now names it, so the rows
still pending go to the same receiver after the upgrade, and adds the dead-letter column.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, insert, select

from piman.monitor.alerting.notify import build_receivers
from piman.store import Store
from piman.store.alert_tables import OutboxRow
from piman.store.db import MIGRATIONS

T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
NOTIFY = ["slack://TokenA/TokenB/TokenC"]
WEBHOOKS = [
    "https://bot:hunter2@hooks.example/services/S3CRET",
    "https://hooks.example",  # a name that is already safe, and the same as the first's
    "http://127.0.0.1:9000/hook?token=T0KEN",
]
SECRETS = ("TokenA", "hunter2", "bot", "services", "S3CRET", "token", "T0KEN", "9000/")


def older_piman(path: Path) -> None:
    """A database at revision c3d4 with the outbox rows an older piman queued for RECEIVERS."""
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            cfg = AlembicConfig()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "c3d4dep10y01")
            old_names = [f"apprise:{u}" for u in NOTIFY] + [f"webhook:{u}" for u in WEBHOOKS]
            for key in ("k1", "k2"):  # each notification, to every receiver, in config order
                for receiver in old_names:
                    conn.execute(
                        insert(OutboxRow.__table__).values(
                            receiver=receiver,
                            key=key,
                            payload="{}",
                            created_at=T0,
                            next_attempt_at=T0,
                            attempts=0,
                            delivered_at=T0 if key == "k1" else None,
                        )
                    )
    finally:
        engine.dispose()


async def test_old_rows_are_renamed_to_safe_names_and_still_reach_their_receivers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "piman.db"
    older_piman(path)
    store = Store(f"sqlite+aiosqlite:///{path}")
    await store.open()
    try:
        receivers = build_receivers(NOTIFY, WEBHOOKS, external_url="http://m")
        names = [r.name for r in receivers]
        assert names == [
            "apprise:slack",
            "webhook:https://hooks.example",
            "webhook:https://hooks.example#2",
            "webhook:http://127.0.0.1:9000",
        ]
        for name in names:  # each receiver finds its own pending row, and only that one
            item = await store.alerts.next_pending(name)
            assert item is not None
            assert (item.receiver, item.key, item.state) == (name, "k2", "pending")
        assert await store.alerts.pending_counts() == dict.fromkeys(names, 1)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(OutboxRow.receiver, OutboxRow.dead_at))).all()
    finally:
        await store.close()
    assert sorted({r for r, _ in rows}) == sorted(names)
    assert {d for _, d in rows} == {None}
    assert not [s for s in SECRETS if any(s in r for r, _ in rows)]
