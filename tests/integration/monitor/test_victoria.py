"""Forwarding scraped samples to a real VictoriaMetrics, and reading them back from it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from piman.monitor.collector.scrape import Scraper, ScrapeTarget
from piman.monitor.collector.tsdb import Tsdb
from piman.monitor.export import VictoriaForwarder
from tests.support import needs_tool

BODY = """\
# TYPE node_load1 gauge
node_load1 0.75
node_filesystem_avail_bytes{device="/dev/root",fstype="ext4",mountpoint="/"} 123456789
rpi_throttle_condition{condition="under_voltage",scope="now"} 1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[str]:
    needs_tool("victoria-metrics")
    port = _free_port()
    proc = subprocess.Popen(
        [
            "victoria-metrics",
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={tmp_path / 'vm'}",
            "-retentionPeriod=100y",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "victoria-metrics did not start"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)


class _Agent:
    """A tiny HTTP server answering every GET with BODY (a stand-in agent)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            if not request:
                break
            body = BODY.encode() if b"/metrics" in request.split(b"\r\n", 1)[0] else b"{}"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()


@pytest.fixture
async def agent_port() -> AsyncIterator[int]:
    agent = _Agent()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await agent.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_forwarded_samples_can_be_read_back_from_victoria_metrics(
    tmp_path: Path, victoria: str, agent_port: int
) -> None:
    tsdb = Tsdb(tmp_path / "metrics.db")
    await tsdb.open()
    target = ScrapeTarget("pi7", f"http://127.0.0.1:{agent_port}/metrics", None)

    async def targets() -> list[ScrapeTarget]:
        return [target]

    scraper = Scraper(tsdb, targets, interval=1.0, forward=True)
    forwarder = VictoriaForwarder(f"{victoria}/api/v1/import/prometheus", scraper)
    scraper.on_flush.append(forwarder.send)
    task = asyncio.create_task(scraper.serve())
    try:
        async with asyncio.timeout(60):
            while True:
                if forwarder.sent >= 8:  # at least two cycles of 4 samples
                    break
                await asyncio.sleep(0.1)
        # VictoriaMetrics makes new samples searchable within about a second.
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                response = await client.post(
                    f"{victoria}/api/v1/export", data={"match[]": '{node="pi7"}'}
                )
                lines = [json.loads(line) for line in response.text.splitlines()]
                names = {line["metric"]["__name__"] for line in lines}
                if {"node_load1", "up", "rpi_throttle_condition"} <= names:
                    break
                await asyncio.sleep(0.2)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await tsdb.close()
    by_name = {line["metric"]["__name__"]: line for line in lines}
    load = by_name["node_load1"]
    assert load["metric"] == {
        "__name__": "node_load1",
        "job": "piman",
        "instance": f"127.0.0.1:{agent_port}",
        "node": "pi7",
    }
    assert set(load["values"]) == {0.75}
    assert set(by_name["up"]["values"]) == {1}
    assert by_name["rpi_throttle_condition"]["metric"]["condition"] == "under_voltage"
    # The same timestamps piman stored (ms), so both stores agree on when.
    ours = await _stored_times(tmp_path / "metrics.db")
    assert set(load["timestamps"]) <= ours
    assert forwarder.failed == 0


async def _stored_times(path: Path) -> set[int]:
    db = Tsdb(path)
    await db.open()
    try:
        [series] = await db.range("node_load1", {"node": "pi7"}, 0, time.time() + 1)
        return {round(ts * 1000) for ts, _ in series.points}
    finally:
        await db.close()
