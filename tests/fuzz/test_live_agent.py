"""The node agent (``piman agent``'s threaded server and app over this machine's /proc), live
on 127.0.0.1, fed mutations of the requests real scrapers send.

Seeds: the request heads of curl (plain, with a bearer token and gzip, HEAD, HTTP/1.0,
Prometheus' Accept), wget, busybox wget and Python's urllib, in ``corpus/agent`` (captured in a
namespace by ``corpus/capture.py``). Mutations break request lines and header lines, lie in
``Content-Length``, send huge or repeated headers, other methods and versions, heads that never
end and several requests in one write. Twenty clients at once (more than the agent serves: some
are answered 503 and closed), each on its own connection; most half-close after their bytes,
a few hold the connection open and wait for the agent to end it.

Each answer must be HTTP/1.1 with a status the agent means to send (never a 500: a source
failed), and each connection must end within a bounded wait (no client holds the agent). After:
no traceback in a connection thread, nothing logged at ERROR, no connection left open, the
process' descriptors back where they were, and a scrape with the token still gets the metrics.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from piman.monitor.agent.app import AgentApp
from piman.monitor.agent.collectors import LinuxNode
from piman.monitor.agent.server import AgentServer
from tests.fuzz.conftest import budget
from tests.fuzz.live import logged_problems, settled_fds
from tests.fuzz.mutate import HTTP, Mutator, seeds

TOKEN = "pm_agent_token_0123456789abcdef"  # the one the captured scrapers sent
CLIENTS = 20  # at once: more than MAX_CONNECTIONS (16)
IDLE = 0.5  # the agent's idle_timeout here: a head must be whole within it
MAX_AGE = 5.0  # and a connection ends this long after it was accepted
WAIT = MAX_AGE + 5.0  # a connection not ended by then: the agent hangs
SECONDS = 60.0  # at most, whatever the profile's count
HOLD = 0.02  # share of clients that keep their connection open after sending
EXPECTED = {200, 400, 401, 404, 405, 431, 503}
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class Agent:
    """An :class:`AgentServer` on a thread; records what its connection threads raised."""

    def __init__(self) -> None:
        self.server = AgentServer(
            AgentApp(LinuxNode(vcgencmd_timeout=0.5), token=TOKEN),
            "127.0.0.1",
            0,
            idle_timeout=IDLE,
            max_age=MAX_AGE,
        )
        self.crashes: list[str] = []
        self.server.handle_error = self._crashed  # type: ignore[method-assign]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _crashed(self, request: Any, client_address: Any) -> None:
        """socketserver calls this when a connection's thread raised (it would print it)."""
        self.crashes.append("".join(traceback.format_exception(*sys.exc_info())))

    @property
    def open_connections(self) -> int:
        with self.server._lock:
            return len(self.server._open)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=30)
        self.server.server_close()


@pytest.fixture
def agent() -> Iterator[Agent]:
    running = Agent()
    running.thread.start()
    try:
        yield running
    finally:
        running.stop()


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.held = 0
        self.silent = 0  # connections closed without an answer (a head that never ended …)
        self.statuses: Counter[int] = Counter()
        self.hung: list[bytes] = []
        self.bad: list[tuple[bytes, bytes]] = []  # (request, answer) not HTTP/1.1 as expected


async def _one(port: int, request: bytes, hold: bool, tally: Tally) -> None:
    try:
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                try:
                    writer.write(request)
                    await writer.drain()
                    if not hold:
                        writer.write_eof()
                except OSError:  # the agent answered and closed before all was sent: fine
                    pass
                answer = await reader.read()  # until the agent closes
            finally:
                writer.close()
    except TimeoutError:
        tally.hung.append(request)
        return
    except ConnectionResetError:  # closed with bytes unread: an answer may be lost
        tally.silent += 1
        return
    tally.requests += 1
    if not answer:
        tally.silent += 1
        return
    statuses = _STATUS.findall(answer)
    if not answer.startswith(b"HTTP/1.1 ") or not statuses:
        tally.bad.append((request, answer[:200]))
        return
    for status in statuses:
        tally.statuses[int(status)] += 1
        if int(status) not in EXPECTED:
            tally.bad.append((request, answer[:200]))


async def _fuzz(port: int, count: int, seed: int, tally: Tally) -> None:
    mutator = Mutator(seeds("agent"), HTTP, seed)
    rng = random.Random(seed + 1)
    queue: asyncio.Queue[tuple[bytes, bool] | None] = asyncio.Queue(maxsize=CLIENTS * 2)
    t0 = time.monotonic()

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            await _one(port, *item, tally)

    workers = [asyncio.create_task(worker()) for _ in range(CLIENTS)]
    for _ in range(count):
        if time.monotonic() - t0 > SECONDS:
            break
        hold = rng.random() < HOLD
        tally.held += hold
        await queue.put((next(mutator), hold))
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)


def _scrape(port: int) -> tuple[int, str, int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "gzip"}
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    events = httpx.get(f"http://127.0.0.1:{port}/events", headers=headers, timeout=10)
    return metrics.status_code, metrics.text, events.status_code, json.loads(events.content)


async def test_mutated_scrapes_get_an_http_answer_and_leave_the_agent_serving(
    agent: Agent, fuzz_report: Any
) -> None:
    plan = budget()
    port = agent.server.port
    status, _, _, _ = await asyncio.to_thread(_scrape, port)  # warm: /proc readers opened
    assert status == 200
    baseline = await settled_fds()
    tally = Tally()
    with logged_problems() as problems:
        t0 = time.monotonic()
        await _fuzz(port, plan.requests, plan.seed, tally)
        elapsed = time.monotonic() - t0
        end = time.monotonic() + WAIT
        while agent.open_connections and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left_open = agent.open_connections
        metrics_status, text, events_status, events = await asyncio.to_thread(_scrape, port)
        after = await settled_fds()
    fuzz_report(
        f"fuzz agent: {tally.requests} requests in {elapsed:.1f} s ({CLIENTS} clients at once, "
        f"{tally.held} held open, {tally.silent} closed unanswered), statuses "
        f"{dict(sorted(tally.statuses.items()))}, {len(tally.hung)} hung, "
        f"{len(agent.crashes)} crashes, {len(problems.records)} errors logged, "
        f"fd {len(baseline)} → {len(after)}"
    )
    assert agent.crashes == []
    assert problems.lines() == []
    assert tally.hung == [], f"connections the agent never ended: {tally.hung[:3]}"
    assert tally.bad == [], tally.bad[:5]
    assert tally.requests >= plan.requests * 0.9
    assert left_open == 0
    assert metrics_status == 200
    assert "node_load1 " in text
    assert events_status == 200
    assert {"time", "cpu_percent", "memory_percent", "num_pids"} <= set(events)
    assert len(after) == len(baseline), (baseline, after)
