"""Notification channels and the outbox worker that delivers to them.

Theory of operation. The evaluator writes each notification to the ``alert_outbox`` table, one row
per receiver, in the same transaction as the alert states that caused it. :class:`Notifier` runs
one worker per receiver that takes that receiver's oldest pending row, sends it, and marks it
delivered; on failure it records the error and retries the *same* row after a backoff
(:data:`BACKOFF`), so a receiver that was down gets everything, in order, when it is back.

A row gets at most ``max_attempts`` (:data:`MAX_ATTEMPTS`, about four minutes of retries), and a
receiver that answers and refuses it (HTTP 4xx, :class:`~piman.errors.NotifyRejected`) gets it
once: then the row is given up on, ``dead``. It stays in the outbox for 30 days (``piman alerts
outbox`` lists it, ``--retry-dead`` queues it again), the worker logs an ERROR line and counts it
(``piman_notifications_total{result="dead"}``), and the next row goes out: one poison
notification never blocks its receiver. Waits are per row (its ``next_attempt_at``, kept in the
store, so a restart does not retry early) and per receiver: after failures, the receiver is not
tried again before the backoff of its failure streak, so a receiver that stays down is tried
at the last :data:`BACKOFF` interval whatever the number of rows waiting: never hammered.

=============  ===============================  ==============================================
row state      next                             when
=============  ===============================  ==============================================
pending        delivered                        the receiver accepted it
pending        pending (attempts + 1)           failed, attempts left: retried after backoff
pending        dead                             refused (4xx), or failed its last attempt
dead           pending (attempts = 0)           ``piman alerts outbox --retry-dead``
=============  ===============================  ==============================================

Exactly once "as far as the receiver can tell": a row is marked delivered only after the receiver
accepted it; if the manager dies in between, the row is sent again with the same idempotency key
(``Idempotency-Key`` header for webhooks, an e-mail header / a line in the text for apprise).

Secrets: a receiver's URL (tokens, passwords) lives in the configuration and in memory only. The
outbox, logs, errors and metrics name a receiver by :func:`receiver_name` (``webhook:`` and
scheme://host:port, or ``apprise:`` and the scheme) and show URLs through :func:`safe_url`.

Channels:

- :class:`WebhookReceiver` POSTs Alertmanager's webhook JSON, version 4 (:func:`alertmanager_v4`),
  so receivers written for Alertmanager work unchanged. Late (catch-up) alerts carry the annotation
  ``late: "true"`` and the header ``X-Piman-Late: true``. 5xx, 408 and 429 answers are retried,
  other non-2xx answers are refusals (as Alertmanager's webhook notifier).
- :class:`AppriseReceiver` sends a title and a text body through an apprise URL (Slack,
  ``mailto://``/``mailtos://``, Discord, Telegram, ntfy, ``json://`` …) in a worker thread;
  apprise's ``notify()`` returns a truthy/falsy result, falsy is a failure worth retrying.
- :class:`OwnerMailReceiver` mails one person: rows whose payload carries ``to``, ``title`` and
  ``body`` (the reservations' warnings to their owners, queued under
  :data:`~piman.config.reservations.OWNER_MAIL_RECEIVER`), through a ``mailto(s)://`` URL whose
  recipients it replaces with ``to``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx

from piman.errors import ConfigError, ConfigProblem, NotifyError, NotifyRejected, StoreError
from piman.fleet.ports import AlertRepository
from piman.fleet.records import OutboxItem

__all__ = [
    "BACKOFF",
    "MAX_ATTEMPTS",
    "AppriseReceiver",
    "Notifier",
    "OwnerMailReceiver",
    "Receiver",
    "WebhookReceiver",
    "alertmanager_v4",
    "build_receivers",
    "receiver_name",
    "render_text",
    "safe_url",
    "scrub_url",
]

logger = logging.getLogger(__name__)

BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_ATTEMPTS = 8  # 1 + 2 + 5 + 10 + 30 + 60 + 120 s of retries, then the row is dead
MAX_ERROR_BODY = 1024  # bytes of a refusing receiver's answer read for the error message
ZERO_TIME = "0001-01-01T00:00:00Z"
IDLE_POLL = 5.0


class Receiver(Protocol):
    """A notification channel. ``name`` identifies its rows in the outbox: never a secret."""

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
    """POSTs Alertmanager v4 JSON to a URL; any 2xx answer is a delivery, 4xx a refusal."""

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
        self.name = receiver_name("webhook", url)
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
            async with (
                asyncio.timeout(self.timeout),
                self._client.stream("POST", self.url, json=body, headers=headers) as response,
            ):
                if response.is_success:
                    return
                status = response.status_code
                answer = await _head(response)
        except TimeoutError:
            raise NotifyError(f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as err:
            raise NotifyError(scrub_url(f"{type(err).__name__}: {err}", self.url)) from err
        said = scrub_url(f"answered {status}" + (f": {answer}" if answer else ""), self.url)
        if status >= 500 or status in (408, 429):
            raise NotifyError(said)
        raise NotifyRejected(said)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def _head(response: httpx.Response) -> str:
    """The start of an answer's body, on one line, for an error message (bounded read)."""
    data = b""
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) >= MAX_ERROR_BODY:
            break
    text = data[:MAX_ERROR_BODY].decode("utf-8", "replace")
    return " ".join(text.split())[:200]


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
        self.name = receiver_name("apprise", url)
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
            raise NotifyError(f"timed out after {self.timeout:g} s") from None
        except Exception as err:  # noqa: BLE001 - a plug-in's error may quote the URL: scrubbed
            raise NotifyError(scrub_url(f"{type(err).__name__}: {err}", self.url)) from None
        if not ok:
            raise NotifyError("apprise reported a failure")


class OwnerMailReceiver(AppriseReceiver):
    """Mails the address a row names (``payload["to"]``) through one ``mailto(s)://`` URL."""

    def __init__(self, url: str, *, name: str, timeout: float = 60.0) -> None:
        if not url.lower().startswith(("mailto://", "mailtos://")):
            raise ValueError("an owner's mail goes through a mailto:// or mailtos:// URL")
        super().__init__(url, timeout=timeout)
        self.name = name

    def _to(self, address: str, key: str) -> str:
        base, _, query = self._url_for(key).partition("?")
        kept = [
            p for p in query.split("&") if p and not p.lower().startswith(("to=", "bcc=", "cc="))
        ]
        return f"{base}?{'&'.join([*kept, 'to=' + quote(address, safe='@')])}"

    async def send(self, payload: Mapping[str, Any], key: str) -> None:
        address = str(payload.get("to") or "")
        if not re.fullmatch(r"[^@\s,;?&]+@[^@\s,;?&]+", address):
            raise NotifyRejected(f"{address!r} is not an e-mail address")
        title = str(payload.get("title", "piman"))
        body = f"{payload.get('body', '')}\n\nIdempotency-Key: {key}"
        url = self._to(address, key)
        try:
            ok = await asyncio.wait_for(
                asyncio.to_thread(self._send_to, url, title, body), self.timeout
            )
        except TimeoutError:
            raise NotifyError(f"timed out after {self.timeout:g} s") from None
        except Exception as err:  # noqa: BLE001 - a plug-in's error may quote the URL: scrubbed
            raise NotifyError(scrub_url(f"{type(err).__name__}: {err}", self.url)) from None
        if not ok:
            raise NotifyError("apprise reported a failure")

    def _send_to(self, url: str, title: str, body: str) -> bool:
        apprise = _apprise()
        sender = apprise.Apprise()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sender.add(url)
        return bool(sender.notify(title=title, body=body))


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def _host(rest: str) -> str:
    """``host[:port]`` of what follows ``scheme://``, or ``…`` when it does not look like one."""
    host = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    return host.lower() if _HOST.fullmatch(host) else "…"


def receiver_name(kind: str, url: str) -> str:
    """A receiver's name for the outbox, logs and metrics: what is safe to show of its URL.

    ``webhook:`` and scheme://host[:port] (no user, password, path or query: Slack-style hooks
    keep their secret in the path), ``apprise:`` and the scheme only (apprise URLs keep tokens
    in the host part). :func:`build_receivers` numbers receivers whose names clash (``#2``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return f"{kind}:<url>"
    if kind == "webhook":
        return f"webhook:{scheme.lower()}://{_host(rest)}"
    return f"{kind}:{scheme.lower()}"


def safe_url(url: str) -> str:
    """A URL for logs and errors: no credentials, tokens or paths.

    ``http(s)`` keeps scheme, host and port; other schemes (apprise URLs, whose host and path
    are often tokens) keep the scheme only.
    """
    kind, sep, rest = url.partition(":")
    if sep and kind in ("webhook", "apprise"):
        url = rest
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "<url>"
    if scheme.lower() in ("http", "https"):
        return f"{scheme.lower()}://{_host(rest)}/…"
    return f"{scheme.lower()}://…"


def scrub_url(text: str, url: str) -> str:
    """``text`` (an error message) without ``url`` or its secret parts: user info, path, query."""
    parts = urlsplit(url) if "://" in url else None
    secrets = {url}
    if parts is not None:
        secrets |= {parts.netloc.rpartition("@")[0], parts.path, parts.query, parts.fragment}
        secrets.add(parts.path + ("?" + parts.query if parts.query else ""))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return text


def build_receivers(
    notify: Sequence[str], webhooks: Sequence[str], *, external_url: str, source: str = "config"
) -> list[Receiver]:
    """Receivers for ``monitoring.notify`` and ``monitoring.webhooks``; ConfigError if bad.

    Names that clash (two Slack channels, two hooks on one host) get ``#2``, ``#3`` … in
    configuration order, so each receiver keeps its own rows in the outbox.
    """
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
                ConfigProblem(
                    source, f"monitoring.webhooks[{i}]", f"{safe_url(url)} is not an http(s) URL"
                )
            )
            continue
        receivers.append(WebhookReceiver(url, external_url=external_url))
    if problems:
        raise ConfigError(problems)
    seen: dict[str, int] = {}
    for receiver in receivers:
        seen[receiver.name] = seen.get(receiver.name, 0) + 1
        if seen[receiver.name] > 1:
            receiver.name = f"{receiver.name}#{seen[receiver.name]}"
    return receivers


class Notifier:
    """The outbox worker: one loop per receiver, in order, with backoff and dead letters.

    ``serve()`` runs it. ``clock`` and ``sleep`` are injected (tests run it on a fake clock);
    ``on_result(receiver name, "delivered" | "failed" | "dead")`` is told of every attempt.
    """

    name = "notifier"

    def __init__(
        self,
        repo: AlertRepository,
        receivers: Sequence[Receiver],
        *,
        backoff: Sequence[float] = BACKOFF,
        max_attempts: int = MAX_ATTEMPTS,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_result: Callable[[str, str], None] | None = None,
    ) -> None:
        if not backoff or max_attempts < 1:
            raise ValueError("a notifier needs a backoff and at least one attempt")
        self.repo = repo
        self.receivers = list(receivers)
        self.backoff = tuple(backoff)
        self.max_attempts = max_attempts
        self.clock = clock
        self.sleep = sleep
        self.on_result = on_result
        self._wake = {r.name: asyncio.Event() for r in self.receivers}
        self._streak: dict[str, int] = {}  # consecutive failures of each receiver
        self._not_before: dict[str, float] = {}  # no attempt on a receiver before this time

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

    async def _pause(self, receiver: Receiver, seconds: float, wakeable: bool) -> None:
        if not wakeable:
            await self.sleep(seconds)
            return
        event = self._wake[receiver.name]
        woken = asyncio.ensure_future(event.wait())
        slept = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait((woken, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            slept.cancel()
        event.clear()

    async def _worker(self, receiver: Receiver) -> None:
        label = receiver.name
        while True:
            try:
                item = await self.repo.next_pending(receiver.name)
            except StoreError as err:
                logger.warning("[%s] cannot read the outbox: %s", label, err)
                await self._pause(receiver, IDLE_POLL, wakeable=False)
                continue
            if item is None:
                await self._pause(receiver, IDLE_POLL, wakeable=True)
                continue
            due = max(item.next_attempt_at, self._not_before.get(receiver.name, 0.0))
            wait = due - self.clock()
            if wait > 0:
                await self._pause(receiver, wait, wakeable=False)
                continue
            try:
                await self.deliver(receiver, item)
            except StoreError as err:  # sent or not, the row stays pending and is retried
                logger.warning("[%s] cannot record a delivery: %s", label, err)
                await self._pause(receiver, IDLE_POLL, wakeable=False)

    async def deliver(self, receiver: Receiver, item: OutboxItem) -> bool:
        """One attempt at one row; records the outcome. True when delivered."""
        try:
            try:
                await receiver.send(item.payload, item.key)
            except NotifyError:
                raise
            except Exception as err:
                raise NotifyError(f"{type(err).__name__}: {err}") from err
        except NotifyError as err:
            await self._failed(receiver, item, err)
            return False
        self._streak.pop(receiver.name, None)
        self._not_before.pop(receiver.name, None)
        await self.repo.mark_delivered(item.id, self.clock())
        logger.info("[%s] delivered notification %s", receiver.name, item.key)
        self._tell(receiver, "delivered")
        return True

    async def _failed(self, receiver: Receiver, item: OutboxItem, err: NotifyError) -> None:
        now = self.clock()
        attempts = item.attempts + 1
        refused = isinstance(err, NotifyRejected)
        # A refusal says the receiver is up; any other failure adds to its streak.
        streak = 0 if refused else self._streak.get(receiver.name, 0) + 1
        self._streak[receiver.name] = streak
        delay = self.backoff[min(max(attempts, streak) - 1, len(self.backoff) - 1)]
        if refused:
            self._not_before.pop(receiver.name, None)
        else:
            self._not_before[receiver.name] = now + delay
        if refused or attempts >= self.max_attempts:
            await self.repo.mark_dead(item.id, str(err), now)
            logger.error(
                "[%s] gave up on notification %s after %d attempt(s): %s; kept in the outbox "
                "as dead (piman alerts outbox --retry-dead sends it again)",
                receiver.name,
                item.key,
                attempts,
                err,
            )
            self._tell(receiver, "dead")
            return
        await self.repo.mark_failed(item.id, str(err), now + delay)
        logger.warning(
            "[%s] notification %s failed (attempt %d of %d), retrying in %.0f s: %s",
            receiver.name,
            item.key,
            attempts,
            self.max_attempts,
            delay,
            err,
        )
        self._tell(receiver, "failed")

    def _tell(self, receiver: Receiver, result: str) -> None:
        if self.on_result is not None:
            self.on_result(receiver.name, result)
