"""The notifier's pure parts (v4 JSON, text, URL hygiene) and its outbox loop with fake channels."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from piman.errors import NotifyError, NotifyRejected
from piman.fleet.ports import AlertRepository
from piman.fleet.records import TickChanges
from piman.monitor.alerting.notify import (
    MAX_ATTEMPTS,
    AppriseReceiver,
    Notifier,
    alertmanager_v4,
    build_receivers,
    receiver_name,
    render_text,
    safe_url,
    scrub_url,
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
        ("https://hooks.example?token=x", "https://hooks.example/…"),
        ("http://user:pa/ss@hooks.example/x", "http://…/…"),  # not a host: shown as nothing
        ("not a url", "<url>"),
        ("apprise:slack://TokenA/TokenB/TokenC", "slack://…"),
        ("mailtos://user:password@mail.example?to=ops@example.org", "mailtos://…"),
    ],
)
def test_safe_url_hides_credentials_tokens_and_paths(url: str, shown: str) -> None:
    assert safe_url(url) == shown


@pytest.mark.parametrize(
    ("kind", "url", "name"),
    [
        (
            "webhook",
            "https://u:pw@Hooks.Example:8443/services/T0/B0/SECRET",
            "webhook:https://hooks.example:8443",
        ),
        ("webhook", "http://[::1]:9000/hook?token=SECRET", "webhook:http://[::1]:9000"),
        ("apprise", "slack://TokenA/TokenB/TokenC", "apprise:slack"),
        ("apprise", "mailtos://user:SECRET@mail.example", "apprise:mailtos"),
    ],
)
def test_receiver_names_hold_no_secret(kind: str, url: str, name: str) -> None:
    assert receiver_name(kind, url) == name


def test_clashing_receiver_names_are_numbered_in_config_order() -> None:
    receivers = build_receivers(
        ["ntfy://ntfy.example/secret-topic-1", "ntfy://ntfy.example/secret-topic-2"],
        [
            "https://hooks.example/a/SECRET",
            "https://hooks.example/b/SECRET",
            "https://other.example/",
        ],
        external_url="http://m",
    )
    assert [r.name for r in receivers] == [
        "apprise:ntfy",
        "apprise:ntfy#2",
        "webhook:https://hooks.example",
        "webhook:https://hooks.example#2",
        "webhook:https://other.example",
    ]


def test_scrub_url_removes_the_url_and_its_secret_parts_from_a_message() -> None:
    url = "https://bot:hunter2@hooks.example/services/TOKEN?key=K3Y"
    said = scrub_url(f"InvalidURL: bad {url}; path /services/TOKEN; user bot:hunter2", url)
    for secret in ("hunter2", "TOKEN", "K3Y"):
        assert secret not in said
    assert said.startswith("InvalidURL: bad …")


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


async def test_prune_drops_old_delivered_and_dead_rows_only(repo: AlertRepository) -> None:
    await queue(repo, "webhook:http://r", ["old", "pending", "old-dead"], 1000)
    await queue(repo, "webhook:http://r", ["new", "new-dead"], 5000)
    rows = {i.key: i.id for i in await repo.outbox()}
    await repo.mark_delivered(rows["old"], 1001)
    await repo.mark_delivered(rows["new"], 5001)
    await repo.mark_dead(rows["old-dead"], "answered 400", 1002)
    await repo.mark_dead(rows["new-dead"], "answered 400", 5002)
    await repo.prune(before=2000)
    assert sorted(i.key for i in await repo.outbox()) == ["new", "new-dead", "pending"]


class Poisoned:
    """Accepts every notification but one, which it fails on every time (a 500 on that body)."""

    name = "webhook:http://picky"

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.got: list[str] = []
        self.tries: list[str] = []

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        self.tries.append(key)
        if key == self.poison:
            raise NotifyError("answered 500: template error")
        self.got.append(key)


async def test_a_poison_notification_is_given_up_on_and_the_next_ones_flow(
    repo: AlertRepository, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [1000.0]
    channel = Poisoned("poison")
    results: list[tuple[str, str]] = []
    notifier = Notifier(
        repo, [channel], clock=lambda: clock[0], on_result=lambda r, x: results.append((r, x))
    )
    await queue(repo, channel.name, ["poison", "a", "b"], 1000)
    for _ in range(50):  # what the worker does, at the times it does it
        item = await repo.next_pending(channel.name)
        if item is None:
            break
        clock[0] = max(clock[0], item.next_attempt_at)
        await notifier.deliver(channel, item)
    assert channel.got == ["a", "b"]
    assert channel.tries == ["poison"] * MAX_ATTEMPTS + ["a", "b"]
    (dead,) = await repo.outbox(state="dead")
    assert (dead.key, dead.state, dead.attempts) == ("poison", "dead", MAX_ATTEMPTS)
    assert dead.last_error == "answered 500: template error"
    assert await repo.pending_counts() == {}
    assert results.count((channel.name, "dead")) == 1
    assert results[-2:] == [(channel.name, "delivered")] * 2
    (line,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert line.getMessage().startswith(
        f"[{channel.name}] gave up on notification poison after {MAX_ATTEMPTS} attempt(s)"
    )
    # An operator fixes the receiver and sends the dead one again.
    assert await repo.requeue_dead(clock[0]) == 1
    item = await repo.next_pending(channel.name)
    assert item is not None
    assert (item.key, item.attempts, item.state) == ("poison", 0, "pending")
    channel.poison = ""
    assert await notifier.deliver(channel, item)
    assert channel.got == ["a", "b", "poison"]


async def test_a_refused_notification_is_dead_at_once(repo: AlertRepository) -> None:
    class Refusing:
        name = "webhook:http://strict"

        async def send(self, payload: Mapping[str, Any], key: str) -> None:
            raise NotifyRejected("answered 400: unknown field")

    channel = Refusing()
    notifier = Notifier(repo, [channel], clock=lambda: 5.0)
    await queue(repo, channel.name, ["x"], 0)
    item = await repo.next_pending(channel.name)
    assert item is not None
    assert await notifier.deliver(channel, item) is False
    assert await repo.next_pending(channel.name) is None
    (dead,) = await repo.outbox(state="dead")
    assert (dead.attempts, dead.dead_at, dead.last_error) == (1, 5.0, "answered 400: unknown field")


class Timed(FakeChannel):
    """Records the (fake) time of each attempt."""

    def __init__(self, name: str, clock: list[float]) -> None:
        super().__init__(name)
        self.clock = clock
        self.at: list[float] = []

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        self.at.append(self.clock[0])
        await super().send(payload, key)


async def test_a_receiver_that_stays_down_is_tried_at_the_backoff_spacing_not_hammered(
    repo: AlertRepository,
) -> None:
    t0 = 1000.0
    clock = [t0]

    async def sleep(seconds: float) -> None:  # a fake clock: sleeping moves it
        clock[0] += seconds
        await asyncio.sleep(0)

    channel = Timed("webhook:http://down", clock)
    await queue(repo, channel.name, ["a", "b"], t0)
    # A previous run already tried "a" once and set its next attempt 100 s later.
    first = await repo.next_pending(channel.name)
    assert first is not None
    await repo.mark_failed(first.id, "connection refused", t0 + 100)
    notifier = Notifier(
        repo, [channel], backoff=(10, 20, 40), max_attempts=4, clock=lambda: clock[0], sleep=sleep
    )
    task = asyncio.create_task(notifier.serve())
    try:
        async with asyncio.timeout(30):
            while len(await repo.outbox(state="dead")) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # "a": the stored next attempt (t0+100), then 20 and 40 s (its attempts 2, 3 and 4: dead).
    # "b": not straight after "a" gave up: the receiver's failure streak spaces it by 40 s too.
    assert [t - t0 for t in channel.at] == [100, 120, 160, 200, 240, 280, 320]
    assert channel.got == []
    assert sorted((i.key, i.attempts) for i in await repo.outbox(state="dead")) == [
        ("a", 4),
        ("b", 4),
    ]
