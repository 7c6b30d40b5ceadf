"""``piman alerts outbox``: the dead letters an operator must see, and sending them again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from piman.fleet.records import TickChanges
from piman.store import Store

PAYLOAD = {
    "key": "k",
    "group_key": '{}:{alertname="NodeDown",node="rack1-02"}',
    "group_labels": {"alertname": "NodeDown", "node": "rack1-02"},
    "at": 1_700_000_000.0,
    "late": False,
    "repeat": False,
    "alerts": [
        {
            "fingerprint": "aaaa",
            "status": "firing",
            "labels": {"alertname": "NodeDown", "node": "rack1-02"},
            "annotations": {},
            "starts_at": 1_700_000_000.0,
            "ends_at": None,
        }
    ],
}
RECEIVER = "webhook:https://hooks.example"


def piman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "piman", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def seed(tmp_path: Path) -> Path:
    """A config and a store whose outbox holds one delivered, one pending, one dead row."""
    config = tmp_path / "piman.yaml"
    config.write_text(f"manager: {{address: 127.0.0.1, data_dir: {tmp_path}}}\n")

    async def run() -> None:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
        await store.open()
        try:
            changes = TickChanges()
            changes.outbox = [(RECEIVER, k, {**PAYLOAD, "key": k}, 1_700_000_000.0) for k in "abc"]
            await store.alerts.save(changes)
            rows = {i.key: i.id for i in await store.alerts.outbox()}
            await store.alerts.mark_delivered(rows["a"], 1_700_000_001.0)
            await store.alerts.mark_dead(rows["b"], "answered 400: bad template", 1_700_000_002.0)
        finally:
            await store.close()

    asyncio.run(run())
    return config


def test_outbox_lists_dead_and_pending_and_retry_dead_sends_them_again(tmp_path: Path) -> None:
    config = str(seed(tmp_path))
    shown = piman("alerts", "outbox", "-c", config)
    assert shown.returncode == 0, shown.stderr
    assert "2 notifications (undelivered)" in shown.stdout
    assert "answered 400: bad template" in shown.stdout
    assert "firing NodeDown rack1-02" in shown.stdout
    dead = piman("alerts", "outbox", "-c", config, "--state", "dead", "--json")
    assert dead.returncode == 0, dead.stderr
    (row,) = json.loads(dead.stdout)
    assert (row["receiver"], row["state"], row["attempts"], row["last_error"]) == (
        RECEIVER,
        "dead",
        1,
        "answered 400: bad template",
    )
    again = piman("alerts", "outbox", "-c", config, "--retry-dead", "--state", "pending")
    assert again.returncode == 0, again.stderr
    assert "1 dead notification(s) queued again" in again.stdout
    assert "2 notifications (pending)" in again.stdout
    bad = piman("alerts", "outbox", "-c", config, "--state", "lost")
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("--state: 'lost' is not one of pending, dead, undelivered, delivered, all")
    )
