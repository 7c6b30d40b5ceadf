"""Where the collector sends agent tokens: the fleet token (``monitoring.agent_token``) or a node's
own (``nodes[].agent_token``) goes only to the agent URL of a node declared in the configuration;
a node the manager merely discovered (a DHCP sighting: anything on the provisioning network) is
scraped without one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.monitor.collector.scrape import _TargetState
from piman.monitor.service import build_collector
from piman.store import Store, reconcile

BODY = b"node_load1 0.5\n"


class Agents:
    """Small HTTP servers on 127.0.0.1 that answer any GET (/metrics, /events) with a metric and
    record each request's Authorization (None: none sent)."""

    def __init__(self) -> None:
        self.auth: dict[int, list[str | None]] = {}
        self._servers: list[asyncio.Server] = []

    async def start(self) -> int:
        port_box: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                    auth = [
                        line.split(":", 1)[1].strip()
                        for line in head.split("\r\n")
                        if line.lower().startswith("authorization:")
                    ]
                    self.auth[port_box[0]].append(auth[0] if auth else None)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY))
                    writer.write(BODY)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        self.auth[port_box[0]] = []
        self._servers.append(server)
        return port_box[0]

    async def close(self) -> None:
        for s in self._servers:
            s.close()
            await s.wait_closed()


@pytest.fixture
async def agents() -> AsyncIterator[Agents]:
    a = Agents()
    try:
        yield a
    finally:
        await a.close()


async def _scrape_all(tmp_path: Path, store: Store, config: dict[str, Any]) -> set[str]:
    cfg = Config.model_validate(config)
    await reconcile(store, cfg)
    assert cfg.monitoring is not None
    monitor = build_collector(cfg, cfg.monitoring, store.nodes, CollectorRegistry())
    await monitor.tsdb.open()
    try:
        targets = await monitor.scraper.targets()
        for target in targets:
            await monitor.scraper.scrape(_TargetState(target), time.time())
        assert monitor.scraper.fetcher is not None
        await monitor.scraper.fetcher.aclose()
    finally:
        await monitor.tsdb.close()
    return {t.node for t in targets}


def _config(tmp_path: Path, rogue_port: int) -> Callable[..., dict[str, Any]]:
    def make(nodes: list[dict[str, Any]], **monitoring: Any) -> dict[str, Any]:
        return {
            "manager": {"address": "127.0.0.1", "data_dir": str(tmp_path)},
            "nodes": nodes,
            "monitoring": {"agent_port": rogue_port, **monitoring},
        }

    return make


async def test_the_fleet_token_is_never_sent_to_a_discovered_node(
    tmp_path: Path, store: Store, agents: Agents
) -> None:
    declared, rogue = await agents.start(), await agents.start()
    config = _config(tmp_path, rogue)(
        [{"name": "pi1", "agent_url": f"http://127.0.0.1:{declared}/metrics"}],
        agent_token="fleet-s3cret",
    )
    # A "Pi" nobody declared shows up on the provisioning network and gets an address.
    await store.nodes.record_sighting("dc:a6:32:00:00:99", ip="127.0.0.1")
    scraped = await _scrape_all(tmp_path, store, config)
    assert scraped == {"pi1", "pi-dca632000099"}  # discovered nodes are still watched
    assert set(agents.auth[declared]) == {"Bearer fleet-s3cret"}
    assert set(agents.auth[rogue]) == {None}


async def test_a_node_token_replaces_the_fleet_token_for_that_node_only(
    tmp_path: Path, store: Store, agents: Agents
) -> None:
    own, fleet, plain = await agents.start(), await agents.start(), await agents.start()
    config = _config(tmp_path, plain)(
        [
            {"name": "own", "agent_url": f"http://127.0.0.1:{own}/metrics",
             "agent_token": "own-s3cret"},
            {"name": "fleet", "agent_url": f"http://127.0.0.1:{fleet}/metrics"},
        ],
        agent_token="fleet-s3cret",
    )  # fmt: skip
    await _scrape_all(tmp_path, store, config)
    assert set(agents.auth[own]) == {"Bearer own-s3cret"}
    assert set(agents.auth[fleet]) == {"Bearer fleet-s3cret"}


async def test_a_node_token_works_without_a_fleet_token(
    tmp_path: Path, store: Store, agents: Agents
) -> None:
    own, other = await agents.start(), await agents.start()
    config = _config(tmp_path, other)(
        [
            {"name": "own", "agent_url": f"http://127.0.0.1:{own}/metrics",
             "agent_token": "own-s3cret"},
            {"name": "other", "agent_url": f"http://127.0.0.1:{other}/metrics"},
        ],
    )  # fmt: skip
    await _scrape_all(tmp_path, store, config)
    assert set(agents.auth[own]) == {"Bearer own-s3cret"}
    assert set(agents.auth[other]) == {None}
