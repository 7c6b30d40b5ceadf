"""``/api/v1/query_range`` and ``/api/v1/nodes/{name}/events``: reading the metrics store.

``query_range`` answers in Prometheus' JSON shape (``resultType: matrix``, values as
``[unix_seconds, "string value"]``), so tools that read Prometheus' API can read piman's. It takes
one metric name and optionally a node, not PromQL. ``/events`` fields are metrics too
(``temperature_celsius``, ``cpu_percent`` …; see :mod:`piman.monitor.collector.query`).
``disk_percent`` is psutil's definition: used / (used + free) of ``/``, not used / size.

A query is bounded by the store (``QueryLimits``: series, points per series with or without a
step, points in the answer, rows read); one over a bound gets HTTP 422 with
``errorType: execution``, as Prometheus answers a query that would load too many samples.
A parameter that is missing or not what the API document says (``metric`` empty, a time or
step that is not a finite number) is HTTP 400 with ``errorType: bad_data``, in Prometheus'
shape too, never FastAPI's 422. The answer's JSON is encoded on a worker thread, not on the
event loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

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


class PrometheusError(BaseModel):
    """An error as Prometheus' HTTP API answers it."""

    status: Literal["error"]
    errorType: str  # Prometheus' spelling
    error: str


class _PrometheusRoute(APIRoute):
    """A route whose parameters FastAPI refuses is answered as Prometheus would: 400
    ``bad_data`` naming the parameter."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as err:
                problems = [f'invalid parameter "{e["loc"][-1]}": {e["msg"]}' for e in err.errors()]
                return _bad("; ".join(problems))

        return route


_prometheus = APIRouter(route_class=_PrometheusRoute)
Seconds = Annotated[float | None, Query(allow_inf_nan=False, description="UNIX seconds")]


@_prometheus.get(
    "/query_range",
    response_model=None,
    responses={
        200: {"description": "A matrix, as Prometheus answers it"},
        400: {
            "model": PrometheusError,
            "description": "A parameter Prometheus would refuse too (bad_data): missing, not a "
            "number, end before start, more than 11,000 points per series",
        },
        422: {
            "model": PrometheusError,
            "description": "The query would read or return too much (execution)",
        },
    },
)
async def query_range(
    _: Reader,
    monitor: Monitor,
    metric: Annotated[str, Query(min_length=1, description="A metric name, e.g. up")],
    node: str | None = None,
    start: Seconds = None,
    end: Seconds = None,
    step: Annotated[
        float | None, Query(gt=0, allow_inf_nan=False, description="Seconds between points")
    ] = None,
) -> Response:
    """Series of one metric (optionally of one node) over [start, end] (UNIX seconds).

    ``end`` defaults to now, ``start`` to an hour before ``end``. Without ``step`` the raw
    samples are returned; with it, one point per step (the newest sample at or before each step
    time, within 5 minutes), as Prometheus' ``query_range`` does.
    """
    t_end = time.time() if end is None else end
    t_start = t_end - 3600.0 if start is None else start
    t_step = step
    if t_end < t_start:
        return _bad("end is before start")
    if t_step is not None and (t_end - t_start) / t_step > MAX_POINTS:
        return _bad(f"more than {MAX_POINTS} points per series; use a larger step")
    matchers = {"node": node} if node else None
    try:
        series = await monitor.query_range(metric, matchers, t_start, t_end, t_step)
    except QueryTooLarge as err:
        return JSONResponse(
            {"status": "error", "errorType": "execution", "error": str(err)}, status_code=422
        )
    return Response(await asyncio.to_thread(_matrix, series), media_type="application/json")


router.include_router(_prometheus)


@router.get("/nodes/{name}/events")
async def node_events(name: str, _: NodeReader, ctx: Ctx, monitor: Monitor) -> dict[str, Any]:
    """The latest ``/events`` snapshot the collector got from a node's agent.

    404 for a node not in the inventory; ``events`` is null until a snapshot was scraped.
    """
    await ctx.store.nodes.get(name)  # NotFoundError → 404
    events = await monitor.latest_events(name)
    return {"node": name, "events": events}
