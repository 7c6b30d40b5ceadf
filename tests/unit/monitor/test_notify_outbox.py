"""The notifier's pure parts (v4 JSON, text, URL hygiene) and its outbox loop with fake channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from piman.errors import NotifyError
from piman.fleet.ports import AlertRepository
from piman.fleet.records import TickChanges
from piman.monitor.alerting.notify import (
    AppriseReceiver,
    Notifier,
    _safe,
    alertmanager_v4,
    render_text,
)
from piman.store import Store

PAYLOAD: dict[str, Any] = {
    "key": "k",
    "group_key": '{}:{alertname="HotSoC"}',
    "group_labels": {"alertname": "HotSoC"},
    "at": 1_700_000_100.0,
    "late": True,
    "repeat": False,
    "alerts": [
        {
            "fingerprint": "aaaa",
            "status": "firing",
            "labels": {"alertname": "HotSoC", "node": "n1", "severity": "warning"},
            "annotations": {"summary": "n1 hot"},
            "starts_at": 1_700_000_000.0,
            "ends_at": None,
        },
        {
            "fingerprint": "bbbb",
            "status": "resolved",
            "labels": {"alertname": "HotSoC", "node": "n2", "severity": "warning"},
            "annotations": {"summary": "n2 hot"},
            "starts_at": 1_700_000_000.5,
            "ends_at": 1_700_000_060.0,
        },
    ],
}


def test_alertmanager_v4_shape() -> None:
    body = alertmanager_v4(PAYLOAD, receiver="piman", external_url="http://m:8000")
    assert list(body) == [
        "version",
        "groupKey",
        "truncatedAlerts",
        "status",
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    ]
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["commonLabels"] == {"alertname": "HotSoC", "severity": "warning"}
    assert body["commonAnnotations"] == {"late": "true"}
    first, second = body["alerts"]
    assert list(first) == [
        "status",
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
        "fingerprint",
    ]
    assert first["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert second["startsAt"] == "2023-11-14T22:13:20.500Z"
    assert second["endsAt"] == "2023-11-14T22:14:20.000Z"
    assert first["generatorURL"] == "http://m:8000/?alert=aaaa"
    resolved = alertmanager_v4(
        {**PAYLOAD, "late": False, "alerts": PAYLOAD["alerts"][1:]},
        receiver="r",
        external_url="http://m",
    )
    assert resolved["status"] == "resolved"
    assert resolved["commonAnnotations"] == {"summary": "n2 hot"}


def test_render_text() -> None:
    title, body = render_text(PAYLOAD, "key-1")
    assert title == "[LATE] [FIRING:1] HotSoC"
    lines = body.splitlines()
    assert lines[0] == "FIRING HotSoC n1 since 2023-11-14T22:13:20.000Z: n1 hot"
    assert lines[1] == "RESOLVED HotSoC n2 since 2023-11-14T22:14:20.000Z: n2 hot"
    assert lines[-1] == "Idempotency-Key: key-1"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "webhook:http://user:pw@hooks.example:8080/path/secret?token=x",
            "http://hooks.example:8080/…",
        ),
        ("https://hooks.example/T000/B000/XXXX", "https://hooks.example/…"),
        ("not a url", "<url>"),
    ],
)
def test_safe_hides_credentials(url: str, shown: str) -> None:
    assert _safe(url) == shown


def test_safe_apprise_keeps_scheme_and_digest_only() -> None:
    shown = _safe("apprise:slack://TokenA/TokenB/TokenC")
    assert shown.startswith("slack://…#")
    assert "Token" not in shown


def test_apprise_idempotency_header_only_where_supported() -> None:
    mail = AppriseReceiver("mailto://u@127.0.0.1:2525?to=a@example.org&from=b@example.org")
    assert mail._url_for("k:1").endswith("&%2BX-Piman-Idempotency-Key=k%3A1")
    ntfy = AppriseReceiver("ntfy://ntfy.example/topic")
    assert ntfy._url_for("k") == "ntfy://ntfy.example/topic"


class FakeChannel:
    """Fails while ``down`` is set; records what it accepted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = True
        self.got: list[str] = []
        self.calls = 0

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        self.calls += 1
        if self.down:
            raise NotifyError("connection refused")
        self.got.append(key)


class Exploding:
    name = "webhook:http://boom"

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        raise RuntimeError("bug in a channel")


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[AlertRepository]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        yield store.alerts
    finally:
        await store.close()


async def queue(repo: AlertRepository, receiver: str, keys: list[str], at: float) -> None:
    changes = TickChanges()
    changes.outbox = [(receiver, k, {**PAYLOAD, "key": k}, at) for k in keys]
    await repo.save(changes)


async def test_failures_back_off_on_the_same_row_then_deliver_in_order(
    repo: AlertRepository,
) -> None:
    clock = [1000.0]
    channel = FakeChannel("webhook:http://r")
    notifier = Notifier(repo, [channel], backoff=(1, 2, 5), clock=lambda: clock[0])
    await queue(repo, channel.name, ["a", "b", "c"], 1000)
    item = await repo.next_pending(channel.name)
    assert item is not None
    assert item.key == "a"
    results = []
    for _ in range(4):  # four failed attempts on the head row: backoff 1, 2, 5, 5
        item = await repo.next_pending(channel.name)
        assert item is not None
        results.append(await notifier.deliver(channel, item))
    head = await repo.next_pending(channel.name)
    assert head is not None
    assert (head.key, head.attempts, head.next_attempt_at) == ("a", 4, 1005.0)
    assert head.last_error is not None
    assert "connection refused" in head.last_error
    assert results == [False] * 4
    channel.down = False
    while (item := await repo.next_pending(channel.name)) is not None:
        assert await notifier.deliver(channel, item)
    assert channel.got == ["a", "b", "c"]


async def test_a_channel_bug_is_a_failed_attempt_not_a_crash(repo: AlertRepository) -> None:
    channel = Exploding()
    notifier = Notifier(repo, [channel], backoff=(60,), clock=lambda: 0.0)
    await queue(repo, channel.name, ["x"], 0)
    item = await repo.next_pending(channel.name)
    assert item is not None
    assert await notifier.deliver(channel, item) is False
    again = await repo.next_pending(channel.name)
    assert again is not None
    assert again.last_error == "RuntimeError: bug in a channel"


async def test_receivers_are_independent(repo: AlertRepository) -> None:
    dead, alive = FakeChannel("webhook:http://dead"), FakeChannel("webhook:http://alive")
    alive.down = False
    await queue(repo, dead.name, ["d1"], 0)
    await queue(repo, alive.name, ["a1", "a2"], 0)
    notifier = Notifier(repo, [dead, alive], backoff=(30,))
    task = asyncio.create_task(notifier.serve())
    try:
        async with asyncio.timeout(30):
            while dead.calls < 1 or await repo.pending_counts() != {dead.name: 1}:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert alive.got == ["a1", "a2"]
    assert dead.got == []
    assert await repo.pending_counts() == {dead.name: 1}


async def test_outbox_queues_a_key_once_per_receiver(repo: AlertRepository) -> None:
    await queue(repo, "webhook:http://r", ["same"], 0)
    await queue(repo, "webhook:http://r", ["same", "next"], 1)
    await queue(repo, "webhook:http://other", ["same"], 1)  # another receiver: its own row
    rows = sorted((i.receiver, i.key) for i in await repo.outbox())
    assert rows == [
        ("webhook:http://other", "same"),
        ("webhook:http://r", "next"),
        ("webhook:http://r", "same"),
    ]


async def test_prune_drops_old_delivered_rows_only(repo: AlertRepository) -> None:
    await queue(repo, "webhook:http://r", ["old", "pending"], 1000)
    await queue(repo, "webhook:http://r", ["new"], 5000)
    rows = {i.key: i.id for i in await repo.outbox()}
    await repo.mark_delivered(rows["old"], 1001)
    await repo.mark_delivered(rows["new"], 5001)
    await repo.prune(before=2000)
    assert sorted(i.key for i in await repo.outbox()) == ["new", "pending"]
