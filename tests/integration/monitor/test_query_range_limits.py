"""``/api/v1/query_range`` on a real metrics store: a query too large is refused in Prometheus'
shape (HTTP 422, ``errorType: execution``), and answers are built off the event loop."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import httpx
from prometheus_client import CollectorRegistry

from piman.access.service import build as build_access
from piman.config.models import Config
from piman.context import AppContext
from piman.fleet.metrics import NodeSnapshot, Series
from piman.monitor.collector.tsdb import TargetBatch
from piman.monitor.service import build_collector
from piman.store import Store, reconcile
from piman.web.app import create_app

T0 = 1_700_000_000.0


async def _app(
    tmp_path: Path, monitor: Any | None = None
) -> tuple[Any, Any, Store, dict[str, str]]:
    """The real web app over a real store, with a viewer's token: (app, monitor, store, headers)."""
    config = Config.model_validate(
        {
            "manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)},
            "monitoring": {"retention": "30d"},
            "nodes": [{"name": "a", "ip": "198.18.0.10"}],
        }
    )
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await store.open()
    await reconcile(store, config)
    ctx = AppContext(config=config, store=store, metrics=CollectorRegistry())
    assert config.monitoring is not None
    ctx.monitor = monitor or build_collector(config, config.monitoring, store.nodes, ctx.metrics)
    access = build_access(ctx).handle
    ctx.access = access
    await access.add_user("viewer", "viewer", "password-of-viewer")
    _, token = await access.create_token("viewer", "tests", None)
    return create_app(ctx), ctx.monitor, store, {"Authorization": f"Bearer {token}"}


async def test_raw_query_range_over_the_point_limit_is_refused(tmp_path: Path) -> None:
    app, monitor, store, headers = await _app(tmp_path)
    tsdb = monitor.tsdb
    await tsdb.open()
    try:
        sid = tsdb.series_id("piman", "a", "198.18.0.10:9110", "m", ())
        points = 11_001  # 46 h of 15 s samples, no step: Prometheus' 11,000 is the limit
        end = T0 + 15 * (points - 1)
        await tsdb.write(
            [TargetBatch("a", T0 + 15 * k, [(sid, float(k))]) for k in range(points)], now=end
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            url = "/api/v1/query_range"
            params = {"metric": "m", "start": str(T0), "end": str(end)}
            too_big = await client.get(url, params=params, headers=headers)
            assert too_big.status_code == 422, too_big.text[:200]
            assert too_big.json()["status"] == "error"
            assert too_big.json()["errorType"] == "execution"
            assert "11000 points per series" in too_big.json()["error"]
            ok = await client.get(url, params={**params, "step": "60"}, headers=headers)
            assert ok.status_code == 200
            [series] = ok.json()["data"]["result"]
            assert len(series["values"]) == 2751
            assert series["values"][0] == [T0, "0"]
    finally:
        await tsdb.close()
        await store.close()


class _Labels(dict[str, str]):
    """Labels that record which threads read them (the answer's encoder does)."""

    threads: ClassVar[set[int]] = set()

    def items(self) -> Any:
        _Labels.threads.add(threading.get_ident())
        return super().items()

    def keys(self) -> Any:
        _Labels.threads.add(threading.get_ident())
        return super().keys()

    def __iter__(self) -> Any:
        _Labels.threads.add(threading.get_ident())
        return super().__iter__()


class _Monitor:
    alerting = None

    async def query_range(self, metric: str, *args: Any) -> list[Series]:
        labels = _Labels(job="piman", node="a", instance="a:9110")
        return [Series(metric, labels, [(T0 + i, float(i)) for i in range(1000)])]

    async def latest_events(self, node: str) -> dict[str, Any] | None:
        return None

    def snapshot(self, node: str) -> NodeSnapshot | None:
        return None


async def test_the_answer_is_built_off_the_event_loop(tmp_path: Path) -> None:
    app, _, store, headers = await _app(tmp_path, _Monitor())
    _Labels.threads = set()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        ) as client:
            answer = await client.get(
                "/api/v1/query_range", params={"metric": "m"}, headers=headers
            )
    finally:
        await store.close()
    assert answer.status_code == 200
    [series] = answer.json()["data"]["result"]
    assert series["metric"] == {"__name__": "m", "job": "piman", "node": "a", "instance": "a:9110"}
    assert series["values"][1] == [T0 + 1, "1"]
    assert _Labels.threads, "the labels were never read"
    assert threading.get_ident() not in _Labels.threads
