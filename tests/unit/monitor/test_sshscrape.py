"""Agentless scrapes through the scraper: a ``monitor: ssh`` node's samples reach the store under
the agent's names and labels, ``up`` says when SSH fails, and targets follow ``monitor:``.

The SSH handle here is a stand-in that answers with recorded output (the real client against
real sshd nodes is tests/integration/monitor/test_agentless.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from piman.config.models import Config
from piman.context import AppContext
from piman.fleet.ssh import SshResult, SshTarget
from piman.monitor.collector.scrape import Scraper, ScrapeTarget, _TargetState
from piman.monitor.collector.sshsample import COMMAND
from piman.monitor.collector.sshscrape import SshSampler, reason_of
from piman.monitor.collector.tsdb import Tsdb
from piman.monitor.service import Monitoring, build_collector
from piman.monitor.service import build as build_monitor
from piman.store import Store, reconcile
from tests.unit.monitor.test_sshsample import PI4

NOW = time.time() // 60 * 60
LOGIN = SshTarget("pi-a", "198.18.0.10", 22, "pi")


class RecordedSsh:
    """Host → SshResult fields; unknown hosts are refused."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        self.answers = answers
        self.commands: list[str] = []

    async def targets(self, nodes: Sequence[str]) -> list[SshTarget]:
        return [SshTarget(n, f"198.18.0.{10 + i}", 22, "pi") for i, n in enumerate(nodes)]

    async def run(self, targets: Sequence[SshTarget], command: str, **_: object) -> list[SshResult]:
        self.commands.append(command)
        out = []
        for t in targets:
            answer = self.answers.get(t.host, {"exit_status": None, "error": "connection refused"})
            out.append(SshResult(t.name, t.host, **answer))
        return out

    def stream(self, *_: object, **__: object) -> AsyncIterator[SshResult]:
        raise NotImplementedError


@pytest.fixture
async def tsdb(tmp_path: Path) -> AsyncIterator[Tsdb]:
    db = Tsdb(tmp_path / "metrics.db")
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def scrape(tsdb: Tsdb, handle: RecordedSsh | None, login: SshTarget = LOGIN) -> Scraper:
    target = ScrapeTarget.over_ssh(login)

    async def source() -> list[ScrapeTarget]:
        return [target]

    scraper = Scraper(tsdb, source, interval=1.0, timeout=0.5, agentless=SshSampler(handle))
    batch = await scraper.scrape(_TargetState(target), NOW)
    scraper._pending.append(batch)
    await scraper.flush()
    return scraper


async def test_an_agentless_node_is_stored_under_the_agents_names_with_its_labels(
    tsdb: Tsdb,
) -> None:
    handle = RecordedSsh({"198.18.0.10": {"exit_status": 0, "stdout": PI4}})
    await scrape(tsdb, handle)
    assert handle.commands == [COMMAND]
    [up] = await tsdb.latest("up", at=NOW)
    assert (up.labels, up.value) == (
        {"job": "piman", "instance": "198.18.0.10:22", "node": "pi-a"},
        1,
    )
    [mem] = await tsdb.latest("node_memory_MemTotal_bytes", at=NOW)
    assert mem.labels == {"job": "piman", "instance": "198.18.0.10:22", "node": "pi-a"}
    assert mem.value == 3880088 * 1024
    [temp] = await tsdb.latest("node_hwmon_temp_celsius", at=NOW)
    assert temp.labels["chip"] == "thermal_thermal_zone0"
    [scraped] = await tsdb.latest("scrape_samples_scraped", at=NOW)
    assert scraped.value > 100
    events = await tsdb.latest_events("pi-a")
    assert events is not None
    assert (events["memory_percent"], events["throttled"]) == (10.0, 0x50005)
    [memory] = await tsdb.latest("memory_percent", at=NOW)
    assert memory.labels["job"] == "piman_events"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"exit_status": None, "error": "connection refused"}, "unreachable"),
        ({"exit_status": None, "error": "timed out connecting after 5 s"}, "timeout"),
        ({"exit_status": None, "error": "login refused (publickey)"}, "ssh_auth"),
        ({"exit_status": 127, "stdout": "", "stderr": "sh: not found"}, "ssh_exit"),
        ({"exit_status": 0, "stdout": PI4[:2000]}, "malformed"),
        ({"exit_status": 0, "stdout": PI4[:2000], "truncated": True}, "body_size_limit"),
    ],
)
async def test_a_failed_sample_is_up_0_with_its_reason(
    tsdb: Tsdb, answer: dict[str, Any], reason: str
) -> None:
    handle = RecordedSsh({"198.18.0.10": answer})
    target = ScrapeTarget.over_ssh(LOGIN)
    scraper = Scraper(tsdb, _none, interval=1.0, timeout=0.5, agentless=SshSampler(handle))
    batch = await scraper.scrape(_TargetState(target), NOW)
    assert batch.error == reason
    scraper._pending.append(batch)
    await scraper.flush()
    [up] = await tsdb.latest("up", at=NOW)
    assert up.value == 0
    assert await tsdb.latest("node_memory_MemTotal_bytes", at=NOW) == []


async def _none() -> list[ScrapeTarget]:
    return []


async def test_without_an_ssh_client_the_node_is_down(tsdb: Tsdb) -> None:
    await scrape(tsdb, None)
    [up] = await tsdb.latest("up", {"node": "pi-a"}, at=NOW)
    assert up.value == 0


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (None, None),
        ("connection refused", "unreachable"),
        ("no route to host", "unreachable"),
        ("command timed out after 20 s", "timeout"),
        ("host key changed for n0 (198.18.0.10): …", "ssh_host_key"),
        (
            "no fleet key at /var/lib/piman/ssh/id_ed25519: make one with `piman ssh keygen`",
            "ssh_key",
        ),
        ("killed by signal TERM", "ssh_error"),
    ],
)
def test_reasons_of_ssh_failures(error: str | None, reason: str | None) -> None:
    assert reason_of(SshResult("n0", "h", None if error else 0, error=error)) == reason


@dataclass
class StoredNode:
    name: str
    ip: str | None
    agent_url: str | None = None
    state: str = "deployed"


class Nodes:
    def __init__(self, nodes: list[StoredNode]) -> None:
        self.nodes = nodes

    async def list(self) -> list[StoredNode]:
        return self.nodes


async def test_targets_follow_each_nodes_monitor_setting(tmp_path: Path) -> None:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "ssh": {"user": "ops", "port": 2222},
            "monitoring": {},
            "nodes": [
                {"name": "a", "ip": "198.18.0.10"},
                {"name": "s", "ip": "198.18.0.11", "monitor": "ssh", "ssh_user": "pimanlab"},
                {"name": "t", "ip": "198.18.0.12", "monitor": "ssh"},
                {"name": "x", "ip": "198.18.0.13", "monitor": "none"},
                {"name": "u", "monitor": "ssh"},  # no address yet: not sampled, as agents
            ],
        }
    )
    stored = [StoredNode(n.name, str(n.ip) if n.ip else None) for n in config.nodes]
    stored.append(StoredNode("found", "198.18.0.14"))  # only in the store: an agent
    assert config.monitoring is not None
    # Without an SSH client: the configured login, so the scrapes fail (down), not vanish.
    monitor = build_collector(config, config.monitoring, Nodes(stored), CollectorRegistry())
    targets = {t.node: t for t in await monitor.scraper.targets()}
    assert set(targets) == {"a", "s", "t", "found"}
    assert targets["a"].metrics_url == "http://198.18.0.10:9110/metrics"
    assert targets["s"].ssh == SshTarget("s", "198.18.0.11", 2222, "pimanlab")
    assert targets["s"].metrics_url == "ssh://pimanlab@198.18.0.11:2222"
    assert targets["t"].ssh == SshTarget("t", "198.18.0.12", 2222, "ops")
    assert targets["t"].events_url is None
    # With one: where the handle says.
    handle = RecordedSsh({})
    monitor = build_collector(config, config.monitoring, Nodes(stored), CollectorRegistry(), handle)
    targets = {t.node: t for t in await monitor.scraper.targets()}
    assert targets["s"].ssh == SshTarget("s", "198.18.0.10", 22, "pi")
    assert targets["s"].instance == "198.18.0.10:22"


async def test_without_ssh_client_the_manager_warns_once_and_the_nodes_are_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "monitoring": {},
            "nodes": [
                {"name": "s1", "ip": "198.18.0.11", "monitor": "ssh"},
                {"name": "s2", "ip": "198.18.0.12", "monitor": "ssh"},
                {"name": "a", "ip": "198.18.0.13"},
            ],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    try:
        await reconcile(store, config)
        ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
        with caplog.at_level(logging.WARNING):
            built = build_monitor(ctx)
        assert built is not None
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [
            "2 node(s) have `monitor: ssh` (s1, s2) but the manager has no SSH client: "
            "they are not sampled and show as down"
        ]
        monitor = built.handle
        assert isinstance(monitor, Monitoring)
        targets = {t.node: t for t in await monitor.scraper.targets()}
        assert targets["s1"].ssh is not None
        assert targets["a"].ssh is None
        await monitor.tsdb.open()
        try:
            caplog.clear()
            with caplog.at_level(logging.INFO):
                batch = await monitor.scraper.scrape(_TargetState(targets["s1"]), NOW)
            assert batch.error == "no_ssh"
            assert batch.values[-3] == 0.0  # up, as the scraper adds it
            assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # said once
        finally:
            await monitor.tsdb.close()
    finally:
        await store.close()
