"""Routing, bearer token and compression of the agent application (fake source)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from piman.monitor.agent.app import AgentApp
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.http import Request


class FakeSource:
    def __init__(self, samples: int = 1) -> None:
        self.samples = samples
        self.fail = False

    def collect(self) -> list[MetricFamily]:
        if self.fail:
            raise RuntimeError("boom")
        fam = MetricFamily("node_load1", "gauge", "1m load average.")
        for i in range(self.samples):
            fam.add(i, {"i": str(i)})
        return [fam]

    def events(self) -> dict[str, Any]:
        return {"time": 1.0, "cpu_percent": 5.0}


def get(path: str, **headers: str) -> Request:
    return Request(
        "GET", path, "HTTP/1.1", {k.lower().replace("_", "-"): v for k, v in headers.items()}
    )


def test_metrics_and_events_are_served() -> None:
    app = AgentApp(FakeSource())
    metrics = app.handle(get("/metrics"))
    assert metrics.status == 200
    assert metrics.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"node_load1" in metrics.body
    events = app.handle(get("/events"))
    assert events.content_type == "application/json"
    assert json.loads(events.body) == {"time": 1.0, "cpu_percent": 5.0}


def test_unknown_path_is_404_and_other_methods_405() -> None:
    app = AgentApp(FakeSource())
    assert app.handle(get("/nope")).status == 404
    assert app.handle(Request("POST", "/metrics", "HTTP/1.1", {})).status == 405


def test_token_is_required_when_configured() -> None:
    app = AgentApp(FakeSource(), token="s3cret")
    denied = app.handle(get("/metrics"))
    assert denied.status == 401
    assert ("WWW-Authenticate", 'Bearer realm="piman-agent"') in denied.headers
    assert app.handle(get("/events", authorization="Bearer wrong")).status == 401
    assert app.handle(get("/events", authorization="Basic s3cret")).status == 401
    assert app.handle(get("/events", authorization="Bearer s3cret")).status == 200
    assert app.handle(get("/")).status == 200  # the index page names endpoints only


def test_gzip_when_the_scraper_accepts_it() -> None:
    app = AgentApp(FakeSource(samples=200))
    plain = app.handle(get("/metrics"))
    packed = app.handle(get("/metrics", accept_encoding="gzip, deflate"))
    assert ("Content-Encoding", "gzip") in packed.headers
    assert gzip.decompress(packed.body) == plain.body
    assert len(packed.body) < len(plain.body)


def test_a_failing_source_gives_500_not_an_exception() -> None:
    source = FakeSource()
    source.fail = True
    assert AgentApp(source).handle(get("/metrics")).status == 500
