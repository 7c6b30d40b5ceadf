"""The manager's own piman_* gauges as alert input (monitor/alerting/own.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from piman.config.matchers import Selector, parse_selector
from piman.fleet.metrics import Sample, Series
from piman.monitor.alerting.own import OwnGauges, healing_rules


class Store:
    """The metrics store's answers: one scraped sample of anything asked."""

    async def instant(self, selector: Selector, at: float) -> list[Sample]:
        return [Sample(selector.metric, {"node": "scraped"}, at, 0.0)]

    async def series(self, selector: Selector, start: float, end: float) -> list[Series]:
        return []


def source(registry: CollectorRegistry, now: float = 1000.0) -> OwnGauges:
    return OwnGauges(Store(), registry, lookback=60.0, clock=lambda: now)


async def test_a_piman_gauge_is_read_beside_the_store_with_its_labels() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("piman_node_quarantined", "q", ["node"], registry=registry)
    gauge.labels("pi1").set(1)
    gauge.labels("pi2").set(0)
    got = await source(registry).instant(parse_selector("piman_node_quarantined"), 1000.0)
    assert {(s.labels["node"], s.value) for s in got} == {
        ("scraped", 0.0),
        ("pi1", 1.0),
        ("pi2", 0.0),
    }
    only = await source(registry).instant(
        parse_selector('piman_node_quarantined{node="pi1"}'), 1000.0
    )
    assert {s.labels["node"] for s in only} == {"scraped", "pi1"}  # the store filters its own


async def test_other_names_and_the_past_see_the_store_alone() -> None:
    registry = CollectorRegistry()
    Gauge("piman_node_quarantined", "q", ["node"], registry=registry).labels("pi1").set(1)
    Gauge("up_like", "not ours", registry=registry).set(1)
    past = await source(registry).instant(parse_selector("piman_node_quarantined"), 100.0)
    assert [s.labels["node"] for s in past] == ["scraped"]  # a catch-up replay has no gauges
    other = await source(registry).instant(parse_selector("up_like"), 1000.0)
    assert [s.labels["node"] for s in other] == ["scraped"]


def test_the_healing_rules_watch_those_gauges() -> None:
    rules = {r.name: r for r in healing_rules()}
    assert rules["NodeQuarantined"].expr == "piman_node_quarantined == 1"
    assert rules["HealingHeld"].expr == "piman_healing_held > 0"
    assert rules["NodeQuarantined"].test(1.0)
    assert not rules["NodeQuarantined"].test(0.0)
