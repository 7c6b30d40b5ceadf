"""The scraper: every node's agent, concurrently, every ``scrape_interval``, into the store.

Theory of operation
-------------------
Each target (one node's agent) has its own task with a fixed phase inside the interval (a hash
of its address, as Prometheus spreads targets), so 2,000 targets do not all connect at once.
At its phase the task fetches ``/metrics`` and ``/events`` together under one deadline
(``timeout``, below the interval), parses the body and hands a :class:`TargetBatch` to the
cycle buffer. A slow or dead target only ever waits on its own deadline. Once per interval the
flusher writes everything buffered in one transaction (:meth:`Tsdb.write`), then calls the
``on_flush`` callbacks (UI snapshot, forwarding).

Per target the collector writes ``up`` (1/0), ``scrape_duration_seconds`` and
``scrape_samples_scraped``, and adds ``job``/``instance``/``node`` to every series; scraped
labels with those names are kept as ``exported_job`` … (Prometheus' ``honor_labels: false``).
A body that does not parse counts as a failed scrape (``up`` 0, no samples), as in Prometheus.
The set of targets is re-read from the inventory every interval. A node marked
``monitor: ssh`` is a target with an ``ssh`` login instead of an agent: the same loop samples it
over SSH (:mod:`.sshscrape`) and its body takes the same path from there.

A target is not trusted. Its body is bounded by the fetcher (``body_size_limit``) and parsed
on one worker thread, never on the event loop, within :class:`~.ingest.ScrapeLimits`
(samples, series per target, label count and lengths); a scrape over a limit fails as a
whole with ``up`` 0, and its reason (``sample_limit`` …) is logged once when a target starts
failing so and counted in :attr:`TargetBatch.error`. ``/events`` is at most 64 KiB of JSON.
Nothing a target sends, and no bug, ends its task: a scrape never raises.
When the store forgets series that stopped reporting (after ``retention``), the per-target
caches forget them too. A target carries its own bearer token, if any (see
:func:`with_tokens`): the collector never has one token for everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from piman.fleet.metrics import EVENT_FIELDS
from piman.fleet.ssh import SshTarget
from piman.monitor.collector.expfmt import MalformedText, format_sample, format_value
from piman.monitor.collector.fetch import BadResponse, BodyTooLarge, StreamFetcher
from piman.monitor.collector.ingest import (
    ParsedBody,
    ScrapeLimitExceeded,
    ScrapeLimits,
    parse_body,
)
from piman.monitor.collector.query import EVENTS_JOB, SCRAPE_JOB
from piman.monitor.collector.sshsample import MalformedSample
from piman.monitor.collector.sshscrape import SshSampleFailed
from piman.monitor.collector.tsdb import TargetBatch, Tsdb

__all__ = [
    "EVENTS_LIMIT",
    "Agentless",
    "Fetcher",
    "ScrapeTarget",
    "Scraper",
    "targets_for",
    "with_tokens",
]

logger = logging.getLogger(__name__)

LabelTuple = tuple[tuple[str, str], ...]
EVENTS_LIMIT = 64 * 1024  # bytes of /events JSON (the agent sends about 200)


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One agent to scrape; ``token``, when set, goes with its requests only. With ``ssh``
    the node has no agent: it is sampled over SSH (``metrics_url`` is then ``ssh://…``)."""

    node: str
    metrics_url: str
    events_url: str | None
    token: str | None = field(default=None, repr=False)
    ssh: SshTarget | None = None

    @property
    def instance(self) -> str:
        if self.ssh is not None:
            return f"{self.ssh.host}:{self.ssh.port}"
        return urlsplit(self.metrics_url).netloc

    @classmethod
    def over_ssh(cls, login: SshTarget) -> ScrapeTarget:
        """The target of a ``monitor: ssh`` node."""
        url = f"ssh://{login.user}@{login.host}:{login.port}"
        return cls(login.name, url, None, ssh=login)


class _Node(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def ip(self) -> str | IPv4Address | None: ...
    @property
    def agent_url(self) -> str | None: ...


def targets_for(nodes: Iterable[_Node], agent_port: int) -> list[ScrapeTarget]:
    """A target per node that has an ``agent_url`` or an IP (nodes with neither are skipped)."""
    out = []
    for n in nodes:
        if n.agent_url:
            parts = urlsplit(n.agent_url)
            path = parts.path if parts.path not in ("", "/") else "/metrics"
            metrics = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
            events = urlunsplit((parts.scheme, parts.netloc, "/events", "", ""))
        elif n.ip:
            metrics = f"http://{n.ip}:{agent_port}/metrics"
            events = f"http://{n.ip}:{agent_port}/events"
        else:
            continue
        out.append(ScrapeTarget(n.name, metrics, events))
    return out


def with_tokens(
    targets: Iterable[ScrapeTarget], tokens: Mapping[tuple[str, str], str]
) -> list[ScrapeTarget]:
    """Each target with the token declared for its ``(node, metrics_url)``, the others with none.

    ``tokens`` comes from the configuration only (declared nodes and their agent URLs), so a
    node that was merely discovered, or whose address changed under it, never gets a token.
    """
    return [replace(t, token=tokens.get((t.node, t.metrics_url))) for t in targets]


class Agentless(Protocol):
    """Samples agentless nodes (:class:`~.sshscrape.SshSampler`): ``output`` raises
    SshSampleFailed; ``render`` (called on the parser thread) raises MalformedSample."""

    async def output(self, target: SshTarget, command_timeout: float) -> str: ...

    def render(self, node: str, output: str) -> tuple[str, dict[str, Any] | None]: ...

    def forget(self, nodes: Sequence[str]) -> None: ...


class Fetcher(Protocol):
    """HTTP GET: ``(status, body)``; raises OSError on network errors and on a body over
    ``limit`` bytes (callers add the deadline). ``token`` goes with this request only."""

    async def get(
        self, url: str, *, token: str | None = None, limit: int | None = None
    ) -> tuple[int, str]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _TargetState:
    """Per-target caches: series text → series id; the reason it is failing, if it is."""

    target: ScrapeTarget
    ids: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    failing: str | None = None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(int(value, 0))
    return None


class Scraper:
    """The collector service (``serve()`` runs until cancelled)."""

    name = "scraper"

    def __init__(
        self,
        tsdb: Tsdb,
        targets: Callable[[], Awaitable[list[ScrapeTarget]]],
        *,
        interval: float = 15.0,
        timeout: float | None = None,
        fetcher: Fetcher | None = None,
        forward: bool = False,
        on_flush: Sequence[Callable[[list[TargetBatch]], Awaitable[None]]] = (),
        limits: ScrapeLimits | None = None,
        agentless: Agentless | None = None,
    ) -> None:
        self.tsdb = tsdb
        self.agentless = agentless
        self.limits = limits or ScrapeLimits()
        self.targets = targets
        self.interval = interval
        self.timeout = min(timeout or interval * 0.8, interval * 0.95)
        self.fetcher = fetcher
        self.forward = forward
        self.on_flush = list(on_flush)
        self._states: dict[ScrapeTarget, _TargetState] = {}
        self._pending: list[TargetBatch] = []
        self._prefixes: dict[int, str] = {}  # series id → exposition text, when forwarding
        self._parser: ThreadPoolExecutor | None = None  # one thread: one body in memory at once
        self.cycles = 0

    # -- one target ----------------------------------------------------------------------

    def phase(self, target: ScrapeTarget) -> float:
        """Fixed offset of a target inside the interval, from a hash of its address."""
        return (zlib.crc32(target.metrics_url.encode()) % 10_000) / 10_000 * self.interval

    def _sid(self, state: _TargetState, job: str, metric: str, labels: LabelTuple) -> int:
        t = state.target
        sid = self.tsdb.series_id(job, t.node, t.instance, metric, labels)
        if self.forward and sid not in self._prefixes:
            full = dict(labels)
            full.update(job=job, instance=t.instance, node=t.node)
            self._prefixes[sid] = format_sample(metric, sorted(full.items()), 0.0)[:-2]
        return sid

    def _ingest(self, state: _TargetState, body: str, batch: TargetBatch) -> None:
        """Parse a body and add its samples to ``batch``, on this thread (see :meth:`scrape`);
        raises MalformedText or ScrapeLimitExceeded, leaving ``batch`` as it was."""
        self._apply(state, parse_body(body, state.ids, self.limits), batch)

    def _apply(self, state: _TargetState, parsed: ParsedBody, batch: TargetBatch) -> None:
        """Allocate ids for the body's new series (on the loop: the store's index) and add its
        samples to ``batch``."""
        ids = parsed.ids
        if parsed.new:
            new = {
                text: self._sid(state, SCRAPE_JOB, name, labels)
                for text, (name, labels) in parsed.new.items()
            }
            state.ids.update(new)
            for pos, text in parsed.new_at:
                ids[pos] = new[text]
        if len(batch):
            batch.ids.extend(ids)
            batch.values.extend(parsed.values)
        else:  # the usual case: the body's arrays become the batch's, no copy
            batch.ids, batch.values = ids, parsed.values

    def _parser_thread(self) -> ThreadPoolExecutor:
        if self._parser is None:
            self._parser = ThreadPoolExecutor(1, thread_name_prefix="scrape-parse")
        return self._parser

    async def _parse(self, state: _TargetState, body: str) -> ParsedBody:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._parser_thread(), parse_body, body, state.ids, self.limits
        )

    async def _sample(self, login: SshTarget) -> str:
        if self.agentless is None:
            raise SshSampleFailed("no_ssh", "agentless monitoring is not set up")
        return await self.agentless.output(login, self.timeout)

    async def _render(self, node: str, output: str) -> tuple[str, dict[str, Any] | None]:
        assert self.agentless is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._parser_thread(), self.agentless.render, node, output
        )

    def _events(self, state: _TargetState, body: dict[str, Any]) -> list[tuple[int, float]]:
        out = []
        for name in EVENT_FIELDS:
            value = _number(body.get(name))
            if value is not None:
                out.append((self._sid(state, EVENTS_JOB, name, ()), value))
        return out

    async def _fetch_events(self, target: ScrapeTarget) -> dict[str, Any] | None:
        assert self.fetcher is not None
        assert target.events_url is not None
        url = target.events_url
        try:
            status, text = await self.fetcher.get(url, token=target.token, limit=EVENTS_LIMIT)
            if status != 200 or len(text) > EVENTS_LIMIT:
                return None
            body = json.loads(text)
        except (OSError, EOFError, ValueError, RecursionError) as err:
            logger.debug("[node=%s] /events %s failed: %r", target.node, url, err)
            return None
        return body if isinstance(body, dict) else None

    def _failed(self, state: _TargetState, reason: str | None, detail: str) -> None:
        """Log a target's failure once when it starts (or changes), and its recovery."""
        t = state.target
        if reason == state.failing:
            if reason is not None:
                logger.debug("[node=%s] scrape %s failed: %s", t.node, t.metrics_url, detail)
            return
        if reason is None:
            level = logging.DEBUG if state.failing in _QUIET else logging.INFO
            logger.log(level, "[node=%s] scrape %s works again", t.node, t.metrics_url)
        elif reason in _QUIET:  # a node that is off: up 0 and the NodeDown alert say it
            logger.debug("[node=%s] scrape %s failed: %s", t.node, t.metrics_url, detail)
        else:
            logger.warning(
                "[node=%s] scrape %s failed (%s): %s; up is 0 until it stops",
                t.node,
                t.metrics_url,
                reason,
                detail,
            )
        state.failing = reason

    async def scrape(self, state: _TargetState, now: float) -> TargetBatch:
        """Scrape one target once (never raises, except on cancellation).

        ``/events`` is fetched after ``/metrics`` on the same kept-alive connection and under
        the same deadline, only when ``/metrics`` answered; its failure does not change ``up``.
        The body is parsed on the parser thread, after the deadline (which bounds the fetch).
        """
        t = state.target
        batch = TargetBatch(t.node, now)
        started = time.perf_counter()
        duration = None
        up = 0.0
        reason: str | None = None
        detail = ""
        try:
            body = output = None
            async with asyncio.timeout(self.timeout):
                if t.ssh is not None:  # agentless: the node's files, over SSH
                    output = await self._sample(t.ssh)
                    duration = time.perf_counter() - started
                else:
                    assert self.fetcher is not None
                    status, text = await self.fetcher.get(
                        t.metrics_url, token=t.token, limit=self.limits.body_size
                    )
                    duration = time.perf_counter() - started
                    if status != 200:
                        reason, detail = "http_status", f"HTTP {status}"
                    elif len(text) > self.limits.body_size:
                        reason, detail = "body_size_limit", f"over {self.limits.body_size} bytes"
                    else:
                        body = text
                        if t.events_url:
                            batch.events = await self._fetch_events(t)
            if output is not None:
                body, batch.events = await self._render(t.node, output)
            if body is not None:
                self._apply(state, await self._parse(state, body), batch)
                up = 1.0
        except ScrapeLimitExceeded as err:
            reason, detail = err.reason, str(err)
        except SshSampleFailed as err:
            reason, detail = err.reason, str(err)
        except (MalformedText, MalformedSample) as err:
            reason, detail = "malformed", str(err)
        except (OSError, EOFError, ValueError) as err:
            reason, detail = _network_reason(err), str(err) or repr(err)
        except Exception as err:  # a bug, or a peer nobody foresaw: this target, this time
            logger.exception("[node=%s] scrape %s failed unexpectedly", t.node, t.metrics_url)
            reason, detail = "error", repr(err)
        if up == 0.0:
            batch.clear()
            batch.events = None
        batch.error = reason
        self._failed(state, reason, detail)
        if duration is None:
            duration = time.perf_counter() - started
        scraped = float(len(batch))
        if batch.events is not None:
            for sid, value in self._events(state, batch.events):
                batch.add(sid, value)
        for metric, value in (
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", scraped),
        ):
            batch.add(self._sid(state, SCRAPE_JOB, metric, ()), value)
        return batch

    async def _target_loop(self, state: _TargetState, epoch: float) -> None:
        """Scrape a target at ``epoch + phase + k·interval`` (event-loop clock) forever.

        Schedules use the loop's monotonic clock, so a wall-clock step never stalls or
        bunches scrapes; samples are stamped with the wall clock.
        """
        loop = asyncio.get_running_loop()
        phase = self.phase(state.target)
        k = math.ceil((loop.time() - epoch - phase) / self.interval)
        while True:
            at = epoch + phase + k * self.interval
            await asyncio.sleep(max(0.0, at - loop.time()))
            batch = await self.scrape(state, time.time())
            # Look up _pending only now: flush() may have swapped it while we scraped.
            self._pending.append(batch)
            k = max(k + 1, math.ceil((loop.time() - epoch - phase) / self.interval))

    def exposition(self, batches: Iterable[TargetBatch]) -> str:
        """The batches as Prometheus text with millisecond timestamps (for forwarding)."""
        prefixes = self._prefixes
        lines = []
        for batch in batches:
            ts = f" {int(batch.ts * 1000)}\n"
            for sid, value in zip(batch.ids, batch.values, strict=True):
                prefix = prefixes.get(sid)
                if prefix is not None:
                    lines.append(f"{prefix} {format_value(value)}{ts}")
        return "".join(lines)

    # -- the service -----------------------------------------------------------------------

    async def _sync_targets(self, epoch: float) -> None:
        try:
            wanted = set(await self.targets())
        except Exception:
            logger.exception("scraper: could not list targets; keeping the current ones")
            return
        for target in list(self._states):
            if target not in wanted:
                state = self._states.pop(target)
                if state.task is not None:
                    state.task.cancel()
                if target.ssh is not None and self.agentless is not None:
                    self.agentless.forget([target.node])
        for target in wanted - set(self._states):
            state = self._states[target] = _TargetState(target)
            state.task = asyncio.create_task(self._target_loop(state, epoch), name=target.node)

    def forget(self, dropped: Iterable[tuple[int, str]]) -> None:
        """Drop series ``(id, node)`` the store forgot from the per-target caches."""
        gone: dict[str, set[int]] = {}
        for sid, node in dropped:
            gone.setdefault(node, set()).add(sid)
            self._prefixes.pop(sid, None)
        for state in self._states.values():
            ids = gone.get(state.target.node)
            if ids:  # a new dict: a parse in flight keeps reading the old one
                state.ids = {k: v for k, v in state.ids.items() if v not in ids}

    async def flush(self, now: float | None = None) -> list[TargetBatch]:
        """Write what was scraped since the last flush (one transaction) and run callbacks."""
        batches, self._pending = self._pending, []
        self.forget(await self.tsdb.write(batches, now))
        self.cycles += 1
        for callback in self.on_flush:
            try:
                await callback(batches)
            except Exception:
                logger.exception("scraper: flush callback failed")
        return batches

    async def serve(self) -> None:
        own_fetcher = self.fetcher is None
        if self.fetcher is None:
            self.fetcher = StreamFetcher()
        loop = asyncio.get_running_loop()
        # Cycles start on wall-clock multiples of the interval (as seen now), then follow the
        # loop's monotonic clock.
        epoch = loop.time() - time.time() % self.interval
        try:
            while True:
                await self._sync_targets(epoch)
                now = loop.time()
                next_flush = epoch + ((now - epoch) // self.interval + 1) * self.interval
                await asyncio.sleep(max(0.0, next_flush - now))
                await self.flush()
        finally:
            for state in self._states.values():
                if state.task is not None:
                    state.task.cancel()
            tasks = [s.task for s in self._states.values() if s.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            self._states.clear()
            if self._parser is not None:
                self._parser.shutdown(wait=False, cancel_futures=True)
                self._parser = None
            if self.fetcher is not None:
                await self.fetcher.aclose()  # idle connections; the fetcher stays usable
                if own_fetcher:
                    self.fetcher = None


_QUIET = frozenset(("timeout", "unreachable", "no_ssh"))


def _network_reason(err: BaseException) -> str:
    """The reason of a failed fetch, one of a few words (a metric label)."""
    if isinstance(err, BodyTooLarge):
        return BodyTooLarge.reason
    if isinstance(err, BadResponse | ValueError):
        return "bad_response"
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, ssl.SSLError):
        return "tls"
    return "unreachable"
