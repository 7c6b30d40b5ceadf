"""``/api/v1/query_range`` and ``/api/v1/nodes/{name}/events``: reading the metrics store.

``query_range`` answers in Prometheus' JSON shape (``resultType: matrix``, values as
``[unix_seconds, "string value"]``), so tools that read Prometheus' API can read piman's. It takes
one metric name and optionally a node, not PromQL. ``/events`` fields are metrics too
(``temperature_celsius``, ``cpu_percent`` …; see :mod:`piman.monitor.collector.query`).
``disk_percent`` is psutil's definition: used / (used + free) of ``/``, not used / size.

A query is bounded by the store (``QueryLimits``: series, points per series with or without a
step, points in the answer, rows read); one over a bound gets HTTP 422 with
``errorType: execution``, as Prometheus answers a query that would load too many samples.
The answer's JSON is encoded on a worker thread, not on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from piman.fleet.metrics import Series
from piman.monitor.collector.expfmt import format_value
from piman.monitor.collector.query import QueryTooLarge
from piman.web.deps import Ctx, Monitor
from piman.web.security import NodeReader, Reader

__all__ = ["MAX_POINTS", "router"]

router = APIRouter(tags=["monitoring"])

MAX_POINTS = 11_000  # Prometheus' limit on points per series in one query


def _bad(message: str) -> JSONResponse:
    return JSONResponse(
        {"status": "error", "errorType": "bad_data", "error": message}, status_code=400
    )


def _matrix(series: list[Series]) -> bytes:
    """The answer, as Prometheus' API spells it (runs on a worker thread)."""
    result: list[dict[str, Any]] = [
        {
            "metric": {"__name__": s.metric, **s.labels},
            "values": [[ts, format_value(v)] for ts, v in s.points],
        }
        for s in series
    ]
    answer = {"status": "success", "data": {"resultType": "matrix", "result": result}}
    return json.dumps(answer, separators=(",", ":")).encode()


def _time(value: str | None, default: float) -> float:
    if value is None or value == "":
        return default
    result = float(value)  # UNIX seconds, as Prometheus accepts
    if not math.isfinite(result):
        raise ValueError(value)
    return result


@router.get("/query_range", response_model=None)
async def query_range(
    _: Reader,
    monitor: Monitor,
    metric: str | None = None,
    node: str | None = None,
    start: str | None = None,
    end: str | None = None,
    step: str | None = None,
) -> Response:
    """Series of one metric (optionally of one node) over [start, end] (UNIX seconds).

    ``end`` defaults to now, ``start`` to an hour before ``end``. Without ``step`` the raw
    samples are returned; with it, one point per step (the newest sample at or before each step
    time, within 5 minutes), as Prometheus' ``query_range`` does.
    """
    if not metric:
        return _bad("missing parameter `metric` (a metric name such as up or cpu_percent)")
    try:
        t_end = _time(end, time.time())
        t_start = _time(start, t_end - 3600.0)
        t_step = None if not step else float(step)
    except ValueError:
        return _bad("start, end and step must be numbers of seconds")
    if t_end < t_start:
        return _bad("end is before start")
    if t_step is not None:
        if not (t_step > 0 and math.isfinite(t_step)):
            return _bad("step must be a positive number of seconds")
        if (t_end - t_start) / t_step > MAX_POINTS:
            return _bad(f"more than {MAX_POINTS} points per series; use a larger step")
    matchers = {"node": node} if node else None
    try:
        series = await monitor.query_range(metric, matchers, t_start, t_end, t_step)
    except QueryTooLarge as err:
        return JSONResponse(
            {"status": "error", "errorType": "execution", "error": str(err)}, status_code=422
        )
    return Response(await asyncio.to_thread(_matrix, series), media_type="application/json")


@router.get("/nodes/{name}/events")
async def node_events(name: str, _: NodeReader, ctx: Ctx, monitor: Monitor) -> dict[str, Any]:
    """The latest ``/events`` snapshot the collector got from a node's agent.

    404 for a node not in the inventory; ``events`` is null until a snapshot was scraped.
    """
    await ctx.store.nodes.get(name)  # NotFoundError → 404
    events = await monitor.latest_events(name)
    return {"node": name, "events": events}
