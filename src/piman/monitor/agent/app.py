"""The agent application: routes, bearer-token check, and the ``python -m`` entry point.

Endpoints (GET or HEAD):

``/metrics``
    Prometheus text format 0.0.4 (``text/plain; version=0.0.4; charset=utf-8``), gzip-compressed
    when the scraper accepts it. Names, types and labels are node_exporter's, plus ``rpi_*``.
``/events``
    The seed piman's JSON snapshot, for the manager's alerting and the web page:

    - ``time``: Unix time in seconds (float) when the snapshot was taken;
    - ``cpu_percent``: busy share of all CPUs since the previous ``/events`` call (or since the
      agent started), 0–100: ``100 × (Δtotal − Δ(idle + iowait)) / Δtotal`` from /proc/stat;
    - ``memory_percent``: ``(MemTotal − MemAvailable) / MemTotal × 100``;
    - ``disk_percent``: of ``/``, ``used / (used + avail) × 100`` with ``used = size − free``
      (psutil's definition: reserved blocks count as neither used nor available);
    - ``num_pids``: the number of processes (numeric entries of /proc);
    - ``temperature_celsius``: SoC temperature (vcgencmd, else the CPU thermal zone), when known;
    - ``throttled``: the raw ``vcgencmd get_throttled`` mask (an int), when known.

    Percentages are rounded to one decimal, like psutil's.
``/``
    A short text page naming the endpoints.

With a token configured every endpoint but ``/`` needs ``Authorization: Bearer <token>``;
anything else gets 401 with ``WWW-Authenticate: Bearer``.

This module and everything it imports stay light (standard library only): a Pi runs it with
a resident set of about 15 MB. It never imports the manager's side (pydantic, SQLAlchemy, FastAPI).
"""

from __future__ import annotations

import json
import logging
import zlib

# hmac.compare_digest is this function; importing hmac would load OpenSSL (~4 MB on a Pi).
from _operator import _compare_digest
from typing import Any, Protocol

from piman.monitor.agent.exposition import CONTENT_TYPE, MetricFamily, render
from piman.monitor.agent.http import Request, Response

__all__ = ["DEFAULT_PORT", "TOKEN_ENV", "AgentApp", "Source"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9110
TOKEN_ENV = "PIMAN_AGENT_TOKEN"

_INDEX = (
    b"piman agent\n\n"
    b"/metrics  Prometheus metrics (node_exporter names, rpi_*)\n"
    b"/events   JSON snapshot\n"
)


class Source(Protocol):
    """What the agent reports on: the real machine (LinuxNode) or a simulated Pi."""

    def collect(self) -> list[MetricFamily]: ...

    def events(self) -> dict[str, Any]: ...


class AgentApp:
    """Maps a request to a response. ``token`` None means no authentication."""

    def __init__(self, source: Source, *, token: str | None = None) -> None:
        self.source = source
        self._token = token.encode() if token else None

    def authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and _compare_digest(given.strip().encode(), self._token)

    def handle(self, request: Request) -> Response:
        """The response to ``request``; errors in a source become a 500, never an exception."""
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n", headers=(("Allow", "GET, HEAD"),))
        path = request.path
        if path == "/":
            return Response(200, _INDEX)
        if path not in ("/metrics", "/events"):
            return Response(404, b"not found\n")
        if not self.authorized(request):
            return Response(
                401,
                b"missing or wrong bearer token\n",
                headers=(("WWW-Authenticate", 'Bearer realm="piman-agent"'),),
            )
        try:
            if path == "/metrics":
                return self._compress(
                    request, Response(200, render(self.source.collect()), CONTENT_TYPE)
                )
            body = json.dumps(self.source.events()).encode()
            return Response(200, body, "application/json")
        except Exception:  # a source bug must not kill the connection thread
            logger.exception("[agent] %s failed", path)
            return Response(500, b"internal error\n")

    @staticmethod
    def _compress(request: Request, response: Response) -> Response:
        accepted = request.headers.get("accept-encoding", "")
        if "gzip" not in accepted or len(response.body) < 1024:
            return response
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
        body = packer.compress(response.body) + packer.flush()
        return Response(
            response.status,
            body,
            response.content_type,
            (*response.headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")),
        )
