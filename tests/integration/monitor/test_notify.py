"""Notifications through the outbox to real receivers on 127.0.0.1.

- e-mail through apprise's ``mailto://`` to a real SMTP server (aiosmtpd);
- Alertmanager v4 JSON to a local HTTP receiver that validates it with a strict model;
- a receiver that is down (connection refused), then up, gets everything, once, in order.
"""

from __future__ import annotations

import asyncio
import email
import json
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from email.message import Message
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from piman.fleet.metrics import Sample
from piman.fleet.ports import AlertRepository
from piman.fleet.records import TickChanges
from piman.monitor.alerting.book import AlertBook, GroupSettings, Notification
from piman.monitor.alerting.notify import AppriseReceiver, Notifier, WebhookReceiver
from piman.monitor.alerting.rules import Rule
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

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.received: list[tuple[str, V4Payload, dict[str, str]]] = []
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
    notifier = Notifier(repo, [receiver], backoff=(0.05, 0.1, 0.2))
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
        "config: monitoring.webhooks[0]: 'ftp://nope' is not an http(s) URL",
    ]
