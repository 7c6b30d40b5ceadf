"""Notifications through the outbox to real receivers on 127.0.0.1.

- e-mail through apprise's ``mailto://`` to a real SMTP server (aiosmtpd);
- Alertmanager v4 JSON to a local HTTP receiver that validates it with a strict model;
- a receiver that is down (connection refused), then up, gets everything, once, in order;
- a receiver that refuses one notification (HTTP 400) gets the next ones: the refused one is
  dead in the outbox, counted and logged;
- the tokens and passwords of receiver URLs are in neither the database nor the log.
"""

from __future__ import annotations

import asyncio
import email
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Any, Literal

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, field_validator

from piman.fleet.metrics import Sample
from piman.fleet.ports import AlertRepository
from piman.fleet.records import TickChanges
from piman.monitor.alerting.book import AlertBook, GroupSettings, Notification
from piman.monitor.alerting.notify import AppriseReceiver, Notifier, WebhookReceiver
from piman.monitor.alerting.rules import Rule
from piman.monitor.collector.query import MemoryQuery
from piman.store import Store

# --- a strict model of Alertmanager's webhook payload, version 4 --------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _rfc3339(value: str) -> str:
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert value.endswith("Z"), value
    return value


class V4Alert(_Strict):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str]
    startsAt: str
    endsAt: str
    generatorURL: str
    fingerprint: str

    _times = field_validator("startsAt", "endsAt")(_rfc3339)


class V4Payload(_Strict):
    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str]
    commonLabels: dict[str, str]
    commonAnnotations: dict[str, str]
    externalURL: str
    alerts: list[V4Alert]


# --- a small HTTP receiver ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class HookReceiver:
    """An HTTP server on 127.0.0.1 that records each POST (idempotency key, v4 body)."""

    def __init__(self, port: int, path: str = "/hook") -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}{path}"
        self.received: list[tuple[str, V4Payload, dict[str, str]]] = []
        self.refuse: set[str] = set()  # idempotency keys answered 400
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            payload = V4Payload.model_validate(json.loads(body))
            if headers["idempotency-key"] in self.refuse:
                said = b"unknown receiver\nfor " + self.url.encode()
                writer.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % len(said)
                    + said
                )
                await writer.drain()
                return
            self.received.append((headers["idempotency-key"], payload, headers))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        finally:
            writer.close()


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[AlertRepository]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        yield store.alerts
    finally:
        await store.close()


RULE = Rule.parse(
    "NodeDown", "up == 0", 0, {"severity": "critical"}, {"summary": "{{ node }} is not answering"}
)


def notifications(count: int) -> list[Notification]:
    """``count`` real notifications from the book: alternately node-N firing, then resolved."""
    book = AlertBook(GroupSettings(group_by=("alertname", "node"), group_wait=0, group_interval=0))
    out: list[Notification] = []
    t = 1_700_000_000.0
    i = 0
    while len(out) < count:
        node = f"rack1-{i // 2:02d}"
        value = 0.0 if i % 2 == 0 else 1.0
        book.evaluate(RULE, [Sample("up", {"node": node}, t, value)], t)
        out.extend(book.flush(t))
        t += 10
        i += 1
    return out[:count]


async def enqueue(repo: AlertRepository, receiver: str, notes: list[Notification]) -> None:
    changes = TickChanges()
    changes.outbox = [(receiver, n.key, n.to_json(), n.at) for n in notes]
    await repo.save(changes)


async def run_until(notifier: Notifier, done: Any, limit: float = 60) -> None:
    """Run the notifier until ``done()`` and its outbox has nothing pending."""
    task = asyncio.create_task(notifier.serve())
    try:
        async with asyncio.timeout(limit):
            while not done() or await notifier.repo.outbox(pending_only=True):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- tests ----------------------------------------------------------------------------------------


async def test_email_reaches_a_real_smtp_server(repo: AlertRepository) -> None:
    from aiosmtpd.controller import Controller

    mails: list[Message] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mails.append(email.message_from_bytes(envelope.content))
            mails[-1]["X-Test-Rcpt"] = ",".join(envelope.rcpt_tos)
            return "250 OK"

    port = free_port()
    smtp = Controller(Handler(), hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        receiver = AppriseReceiver(
            f"mailto://piman@127.0.0.1:{port}?to=ops@example.org&from=piman@example.org"
        )
        notes = notifications(2)  # rack1-00 fires, then resolves
        await enqueue(repo, receiver.name, notes)
        notifier = Notifier(repo, [receiver], backoff=(0.1,))
        await run_until(notifier, lambda: len(mails) >= 2)
    finally:
        smtp.stop()
    assert [m["X-Test-Rcpt"] for m in mails] == ["ops@example.org", "ops@example.org"]
    assert mails[0]["Subject"] == "[FIRING:1] NodeDown"
    assert mails[1]["Subject"] == "[RESOLVED] NodeDown"
    assert [m["X-Piman-Idempotency-Key"] for m in mails] == [n.key for n in notes]
    text = next(p for p in mails[0].walk() if p.get_content_type() == "text/plain")
    body = text.get_payload(decode=True).decode()
    assert "FIRING NodeDown rack1-00" in body
    assert "rack1-00 is not answering" in body
    assert await repo.outbox(pending_only=True) == []


async def test_webhook_gets_valid_alertmanager_v4(repo: AlertRepository) -> None:
    hook = HookReceiver(free_port())
    await hook.start()
    try:
        receiver = WebhookReceiver(hook.url, external_url="http://piman.example:8000")
        notes = notifications(2)
        await enqueue(repo, receiver.name, notes)
        await run_until(Notifier(repo, [receiver], backoff=(0.1,)), lambda: len(hook.received) >= 2)
        await receiver.aclose()
    finally:
        await hook.stop()
    (k1, firing, headers), (k2, resolved, _) = hook.received
    assert [k1, k2] == [n.key for n in notes]
    assert headers["content-type"] == "application/json"
    assert firing.status == "firing"
    assert firing.groupLabels == {"alertname": "NodeDown", "node": "rack1-00"}
    assert firing.groupKey == '{}:{alertname="NodeDown",node="rack1-00"}'
    assert firing.commonLabels == {
        "alertname": "NodeDown",
        "node": "rack1-00",
        "severity": "critical",
    }
    assert firing.commonAnnotations == {"summary": "rack1-00 is not answering"}
    assert firing.externalURL == "http://piman.example:8000"
    (alert,) = firing.alerts
    assert alert.endsAt == "0001-01-01T00:00:00Z"
    assert alert.startsAt == "2023-11-14T22:13:20.000Z"
    assert alert.generatorURL.startswith("http://piman.example:8000/")
    assert resolved.status == "resolved"
    assert resolved.alerts[0].fingerprint == alert.fingerprint
    assert resolved.alerts[0].endsAt == "2023-11-14T22:13:30.000Z"


async def test_receiver_down_then_up_gets_everything_once_in_order(
    repo: AlertRepository,
) -> None:
    hook = HookReceiver(free_port())  # not listening yet: connection refused
    receiver = WebhookReceiver(hook.url, external_url="http://piman")
    notes = notifications(12)
    await enqueue(repo, receiver.name, notes[:6])
    notifier = Notifier(repo, [receiver], backoff=(0.05, 0.1, 0.2), max_attempts=10_000)
    task = asyncio.create_task(notifier.serve())
    try:
        # Wait until the outbox has recorded failed attempts against the dead receiver.
        async with asyncio.timeout(30):
            while True:
                head = (await repo.outbox(pending_only=True, limit=100))[-1]
                if head.attempts >= 3:
                    break
                await asyncio.sleep(0.05)
        assert "ConnectError" in (head.last_error or "")
        await enqueue(repo, receiver.name, notes[6:])  # more arrive while it is down
        notifier.wake()
        await hook.start()
        async with asyncio.timeout(30):
            while len(hook.received) < len(notes) or await repo.outbox(pending_only=True):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing more may come
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await hook.stop()
        await receiver.aclose()
    keys = [k for k, _, _ in hook.received]
    assert keys == [n.key for n in notes]  # every one, once, in order
    assert len(set(keys)) == len(keys)
    statuses = [p.status for _, p, _ in hook.received]
    assert statuses == ["firing", "resolved"] * 6
    assert await repo.outbox(pending_only=True) == []


async def test_unknown_apprise_url_is_a_config_error() -> None:
    from piman.errors import ConfigError
    from piman.monitor.alerting.notify import build_receivers

    with pytest.raises(ConfigError) as info:
        build_receivers(["nosuchscheme://x"], ["ftp://nope"], external_url="http://x")
    assert [str(p) for p in info.value.problems] == [
        "config: monitoring.notify[0]: apprise does not understand this URL (scheme "
        "'nosuchscheme')",
        "config: monitoring.webhooks[0]: ftp://… is not an http(s) URL",
    ]


def alerting_for(
    tmp_path: Path,
    store: Store,
    notify: list[str],
    webhooks: list[str],
    query: MemoryQuery | None = None,
) -> Any:
    """The manager's alerting (evaluator, notifier, metrics) for one NodeDown rule, reading
    ``query`` (a fresh one by default)."""
    from piman.config import parse_config
    from piman.monitor.alerting.service import build_alerting

    monitoring = {
        "default_rules": False,
        "rules": [{"alert": "NodeDown", "expr": "up == 0"}],
        "group_by": ["alertname", "node"],
        "group_wait": "0s",
        "notify": notify,
        "webhooks": webhooks,
    }
    text = json.dumps({"manager": {"address": "127.0.0.1"}, "monitoring": monitoring})
    config = parse_config(text, str(tmp_path / "piman.yaml"))
    registry = CollectorRegistry()
    return build_alerting(config, store.alerts, registry, query or MemoryQuery()), registry


async def test_a_refused_notification_is_dead_and_the_next_ones_are_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hook = HookReceiver(free_port())
    await hook.start()
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        alerting, registry = alerting_for(tmp_path, store, [], [hook.url])
        (receiver,) = alerting.notifier.receivers
        notes = notifications(4)
        hook.refuse = {notes[1].key}  # the receiver cannot take this one (400)
        await enqueue(store.alerts, receiver.name, notes)
        await run_until(alerting.notifier, lambda: len(hook.received) >= 3)
        (dead,) = await store.alerts.outbox(state="dead")
    finally:
        await store.close()
        await hook.stop()
    assert [k for k, _, _ in hook.received] == [notes[0].key, notes[2].key, notes[3].key]
    assert (dead.key, dead.attempts) == (notes[1].key, 1)
    assert dead.last_error == "answered 400: unknown receiver for …"  # its answer, URL scrubbed

    def count(result: str) -> float | None:
        labels = {"receiver": f"webhook:http://127.0.0.1:{hook.port}", "result": result}
        return registry.get_sample_value("piman_notifications_total", labels)

    assert (count("delivered"), count("dead"), count("failed")) == (3, 1, None)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"[webhook:http://127.0.0.1:{hook.port}] gave up on notification {notes[1].key} after 1 "
        "attempt(s): answered 400: unknown receiver for …; kept in the outbox "
        "as dead (piman alerts outbox --retry-dead sends it again)"
    ]


async def test_receiver_secrets_are_neither_stored_nor_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = ["hunter2", "S3CRETPATH", "T0KEN", "PA55WORD", "APPRISEPATH"]
    hook = HookReceiver(free_port(), "/hook/S3CRETPATH?token=T0KEN")
    webhook = hook.url.replace("http://", "http://bot:hunter2@")
    # An apprise JSON receiver that is down: its failures are logged.
    apprise_url = f"json://ops:PA55WORD@127.0.0.1:{free_port()}/APPRISEPATH"
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    caplog.set_level(logging.DEBUG, logger="piman")
    try:
        query = MemoryQuery()
        alerting, _registry = alerting_for(tmp_path, store, [apprise_url], [webhook], query)
        notifier = alerting.notifier
        notifier.backoff = (0.05,)
        service = alerting.service
        await service.start()
        now = time.time()  # the notifier's clock: rows are due at once
        query.add("up", {"job": "agent", "instance": "n1", "node": "n1"}, now, 0)
        assert len(await service.tick(now)) == 1
        # The webhook is down at first (connection refused), then up.
        task = asyncio.create_task(notifier.serve())
        try:
            async with asyncio.timeout(30):
                while not any(i.attempts >= 2 for i in await store.alerts.outbox()):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await hook.start()
            async with asyncio.timeout(30):
                while not hook.received:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        receivers = sorted({i.receiver for i in await store.alerts.outbox()})
    finally:
        await store.close()
        await hook.stop()
    # The secrets are still used: the receiver got the credentials of its URL.
    assert hook.received[0][2]["authorization"] == "Basic Ym90Omh1bnRlcjI="  # bot:hunter2
    assert receivers == ["apprise:json", f"webhook:http://127.0.0.1:{hook.port}"]
    assert "ConnectError" in caplog.text  # failures were logged …
    for path in sorted(tmp_path.glob("piman.db*")):  # noqa: ASYNC240 - the store is closed
        data = path.read_bytes()  # … and nothing of a secret is in the database files
        assert not [s for s in secrets if s.encode() in data], path
    assert not [s for s in secrets if s in caplog.text]
