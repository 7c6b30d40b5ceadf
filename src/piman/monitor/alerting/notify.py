"""Notification channels and the outbox worker that delivers to them.

Theory of operation. The evaluator writes each notification to the ``alert_outbox`` table, one row
per receiver, in the same transaction as the alert states that caused it. :class:`Notifier` runs
one worker per receiver that takes that receiver's oldest undelivered row, sends it, and marks it
delivered; on failure it records the error and retries the *same* row after a backoff
(:data:`BACKOFF`), so a receiver that was down gets everything, in order, when it is back.

Exactly once "as far as the receiver can tell": a row is marked delivered only after the receiver
accepted it; if the manager dies in between, the row is sent again with the same idempotency key
(``Idempotency-Key`` header for webhooks, an e-mail header / a line in the text for apprise).

Channels:

- :class:`WebhookReceiver` POSTs Alertmanager's webhook JSON, version 4 (:func:`alertmanager_v4`),
  so receivers written for Alertmanager work unchanged. Late (catch-up) alerts carry the annotation
  ``late: "true"`` and the header ``X-Piman-Late: true``.
- :class:`AppriseReceiver` sends a title and a text body through an apprise URL (Slack,
  ``mailto://``/``mailtos://``, Discord, Telegram, ntfy, ``json://`` …) in a worker thread;
  apprise's ``notify()`` returns a truthy/falsy result, falsy is a failure worth retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from piman.errors import ConfigError, ConfigProblem, NotifyError, StoreError
from piman.fleet.ports import AlertRepository
from piman.fleet.records import OutboxItem

__all__ = [
    "BACKOFF",
    "AppriseReceiver",
    "Notifier",
    "Receiver",
    "WebhookReceiver",
    "alertmanager_v4",
    "build_receivers",
    "render_text",
]

logger = logging.getLogger(__name__)

BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
ZERO_TIME = "0001-01-01T00:00:00Z"
IDLE_POLL = 5.0


class Receiver(Protocol):
    """A notification channel. ``name`` identifies its rows in the outbox."""

    name: str

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        """Deliver one notification; raise NotifyError if it was not accepted."""


def _rfc3339(ts: float | None) -> str:
    if ts is None:
        return ZERO_TIME
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def alertmanager_v4(
    payload: Mapping[str, Any], *, receiver: str, external_url: str
) -> dict[str, Any]:
    """A notification (``Notification.to_json()``) as Alertmanager's webhook JSON, version 4."""
    alerts = []
    for a in payload["alerts"]:
        annotations = dict(a["annotations"])
        if payload.get("late"):
            annotations["late"] = "true"
        alerts.append(
            {
                "status": a["status"],
                "labels": dict(a["labels"]),
                "annotations": annotations,
                "startsAt": _rfc3339(a["starts_at"]),
                "endsAt": _rfc3339(a["ends_at"]) if a["status"] == "resolved" else ZERO_TIME,
                "generatorURL": f"{external_url.rstrip('/')}/?alert={a['fingerprint']}",
                "fingerprint": a["fingerprint"],
            }
        )
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": payload["group_key"],
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": dict(payload["group_labels"]),
        "commonLabels": _common([a["labels"] for a in alerts]),
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
    }


def render_text(payload: Mapping[str, Any], key: str) -> tuple[str, str]:
    """A human title and body for chat and e-mail channels."""
    alerts = payload["alerts"]
    firing = [a for a in alerts if a["status"] == "firing"]
    resolved = [a for a in alerts if a["status"] == "resolved"]
    labels = payload["group_labels"]
    name = labels.get("alertname") or (alerts[0]["labels"].get("alertname") if alerts else "")
    late = "[LATE] " if payload.get("late") else ""
    state = f"FIRING:{len(firing)}" if firing else "RESOLVED"
    title = f"{late}[{state}] {name}".rstrip()
    lines: list[str] = []
    for a in firing + resolved:
        node = a["labels"].get("node", "")
        summary = a["annotations"].get("summary", "")
        when = _rfc3339(a["ends_at"] if a["status"] == "resolved" else a["starts_at"])
        lines.append(
            f"{a['status'].upper()} {a['labels'].get('alertname', '')} {node} since {when}"
            + (f": {summary}" if summary else "")
        )
    if payload.get("late"):
        lines.append("(late: detected while catching up after the manager was down)")
    lines.append(f"Idempotency-Key: {key}")
    return title, "\n".join(lines)


class WebhookReceiver:
    """POSTs Alertmanager v4 JSON to a URL; any 2xx answer is a delivery."""

    def __init__(
        self,
        url: str,
        *,
        external_url: str,
        receiver: str = "piman",
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.name = f"webhook:{url}"
        self.external_url = external_url
        self.receiver = receiver
        self.timeout = timeout
        self._transport = transport
        self._client: httpx.AsyncClient | None = None  # made on first use, in the running loop

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        body = alertmanager_v4(payload, receiver=self.receiver, external_url=self.external_url)
        headers = {"Idempotency-Key": key, "User-Agent": "piman"}
        if payload.get("late"):
            headers["X-Piman-Late"] = "true"
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=self.timeout, transport=self._transport)
        try:
            response = await self._client.post(self.url, json=body, headers=headers)
        except httpx.HTTPError as err:
            raise NotifyError(f"{_safe(self.url)}: {type(err).__name__}: {err}") from err
        if not response.is_success:
            raise NotifyError(f"{_safe(self.url)} answered {response.status_code}")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


_HEADER_SCHEMES = ("mailto", "mailtos", "json", "jsons", "form", "forms", "xml", "xmls")


def _apprise() -> Any:
    """Import apprise, muting the DeprecationWarning its plugins raise on import (imghdr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import apprise
    return apprise


class AppriseReceiver:
    """Sends through one apprise URL, in a worker thread (apprise is synchronous)."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        apprise = _apprise()
        self.url = url
        self.name = f"apprise:{url}"
        self.timeout = timeout
        probe = apprise.Apprise()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # plugins load lazily, on add()
            known = probe.add(url)
        if not known:
            scheme = url.split("://", 1)[0]
            raise ValueError(f"apprise does not understand this URL (scheme {scheme!r})")

    def _url_for(self, key: str) -> str:
        scheme = self.url.split("://", 1)[0].lower()
        if scheme not in _HEADER_SCHEMES:
            return self.url
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}{quote('+X-Piman-Idempotency-Key')}={quote(key, safe='')}"

    def _send(self, title: str, body: str, key: str) -> bool:
        apprise = _apprise()
        sender = apprise.Apprise()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sender.add(self._url_for(key))
        return bool(sender.notify(title=title, body=body))

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        title, body = render_text(payload, key)
        try:
            ok = await asyncio.wait_for(
                asyncio.to_thread(self._send, title, body, key), self.timeout
            )
        except TimeoutError:
            raise NotifyError(f"{_safe(self.url)}: timed out after {self.timeout:g} s") from None
        if not ok:
            raise NotifyError(f"{_safe(self.url)}: apprise reported a failure")


def _safe(url: str) -> str:
    """A receiver's URL for logs and errors: no credentials, tokens or paths.

    ``http(s)`` keeps scheme, host and port; apprise URLs (whose host and path are often
    tokens) keep the scheme and a short digest that tells receivers apart.
    """
    kind, sep, rest = url.partition(":")
    if sep and kind in ("webhook", "apprise"):
        url = rest
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<url>"
    if scheme in ("http", "https"):
        host = rest.split("/", 1)[0].rpartition("@")[2]
        return f"{scheme}://{host}/…"
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{scheme}://…#{digest}"


def build_receivers(
    notify: Sequence[str], webhooks: Sequence[str], *, external_url: str, source: str = "config"
) -> list[Receiver]:
    """Receivers for ``monitoring.notify`` and ``monitoring.webhooks``; ConfigError if bad."""
    receivers: list[Receiver] = []
    problems: list[ConfigProblem] = []
    for i, url in enumerate(notify):
        try:
            receivers.append(AppriseReceiver(url))
        except ValueError as err:
            problems.append(ConfigProblem(source, f"monitoring.notify[{i}]", str(err)))
    for i, url in enumerate(webhooks):
        if not url.startswith(("http://", "https://")):
            problems.append(
                ConfigProblem(source, f"monitoring.webhooks[{i}]", f"{url!r} is not an http(s) URL")
            )
            continue
        receivers.append(WebhookReceiver(url, external_url=external_url))
    if problems:
        raise ConfigError(problems)
    return receivers


class Notifier:
    """The outbox worker: one loop per receiver, in order, with backoff. ``serve()`` runs it."""

    name = "notifier"

    def __init__(
        self,
        repo: AlertRepository,
        receivers: Sequence[Receiver],
        *,
        backoff: Sequence[float] = BACKOFF,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.repo = repo
        self.receivers = list(receivers)
        self.backoff = tuple(backoff)
        self.clock = clock
        self.on_result = on_result
        self._wake = {r.name: asyncio.Event() for r in self.receivers}

    def wake(self) -> None:
        """New rows were queued: look now rather than at the next poll."""
        for event in self._wake.values():
            event.set()

    async def serve(self) -> None:
        try:
            if not self.receivers:
                await asyncio.Event().wait()
            async with asyncio.TaskGroup() as group:
                for receiver in self.receivers:
                    group.create_task(self._worker(receiver), name=f"notify {receiver.name}")
        finally:
            for receiver in self.receivers:
                close = getattr(receiver, "aclose", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()

    async def _sleep(self, receiver: Receiver, seconds: float, wakeable: bool) -> None:
        event = self._wake[receiver.name]
        if not wakeable:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        event.clear()

    async def _worker(self, receiver: Receiver) -> None:
        label = _safe(receiver.name)
        while True:
            try:
                item = await self.repo.next_pending(receiver.name)
            except StoreError as err:
                logger.warning("[%s] cannot read the outbox: %s", label, err)
                await self._sleep(receiver, IDLE_POLL, wakeable=False)
                continue
            if item is None:
                await self._sleep(receiver, IDLE_POLL, wakeable=True)
                continue
            wait = item.next_attempt_at - self.clock()
            if wait > 0:
                await self._sleep(receiver, wait, wakeable=False)
                continue
            try:
                await self.deliver(receiver, item)
            except StoreError as err:  # sent or not, the row stays pending and is retried
                logger.warning("[%s] cannot record a delivery: %s", label, err)
                await self._sleep(receiver, IDLE_POLL, wakeable=False)

    async def deliver(self, receiver: Receiver, item: OutboxItem) -> bool:
        """One attempt at one row; records the outcome. True when delivered."""
        label = _safe(receiver.name)
        try:
            try:
                await receiver.send(item.payload, item.key)
            except NotifyError:
                raise
            except Exception as err:
                raise NotifyError(f"{type(err).__name__}: {err}") from err
        except NotifyError as err:
            delay = self.backoff[min(item.attempts, len(self.backoff) - 1)]
            logger.warning(
                "[%s] notification %s failed (attempt %d), retrying in %.0f s: %s",
                label,
                item.key,
                item.attempts + 1,
                delay,
                err,
            )
            await self.repo.mark_failed(item.id, str(err), self.clock() + delay)
            if self.on_result:
                self.on_result(receiver.name, False)
            return False
        await self.repo.mark_delivered(item.id, self.clock())
        logger.info("[%s] delivered notification %s", label, item.key)
        if self.on_result:
            self.on_result(receiver.name, True)
        return True
