"""The fleet page's query and selection, the charts' SVG and the change events, pure."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from piman.fleet.metrics import NodeSnapshot
from piman.fleet.records import NodeRecord
from piman.web.ui.charts import CHARTS, line_chart
from piman.web.ui.fleet import FleetQuery, Holder, select
from piman.web.ui.live import Look, diff


def node(name: str, *, state: str = "ready", switch: str = "rack1", port: int = 1) -> NodeRecord:
    return NodeRecord(
        name=name, mac=None, ip=None, serial=None, model="pi4", hostname=None, agent_url=None,
        switch=switch, port=port, state=state, power_state="on", vendor_class=None,
        first_seen=None, last_seen=None, declared=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, FleetQuery()),
        ({"page": "0", "per": "7", "sort": "nope"}, FleetQuery()),
        ({"page": "x", "desc": "1", "sort": "cpu"}, FleetQuery(desc=True, sort="cpu")),
        ({"q": "  pi ", "per": "200", "page": "3"}, FleetQuery(q="pi", per=200, page=3)),
    ],
)
def test_a_query_string_parses_leniently(params: dict[str, str], expected: FleetQuery) -> None:
    assert FleetQuery.parse(params) == expected


def test_a_query_writes_back_only_what_differs_from_the_defaults() -> None:
    query = FleetQuery(state="ready", sort="cpu", page=2)
    assert query.params() == {"state": "ready", "sort": "cpu", "page": "2"}
    assert query.params(page=1, desc=True) == {"state": "ready", "sort": "cpu", "desc": "1"}


def test_sorting_keeps_unknowns_last_and_ties_in_store_order() -> None:
    nodes = [node(f"n{i}", port=i) for i in range(5)]
    snaps = {"n1": NodeSnapshot(cpu=50.0), "n3": NodeSnapshot(cpu=50.0), "n4": NodeSnapshot(cpu=9)}
    for desc in (False, True):
        page = select(nodes, FleetQuery(sort="cpu", desc=desc), snapshot=snaps.get)
        names = [r.node.name for r in page.rows]
        assert names == (["n4", "n1", "n3"] if not desc else ["n1", "n3", "n4"]) + ["n0", "n2"]


def test_search_finds_the_owner_and_paging_clamps() -> None:
    nodes = [node(f"n{i}", port=i) for i in range(60)]
    until = datetime(2030, 1, 1, tzinfo=UTC)
    page = select(nodes, FleetQuery(q="ALICE"), holders={"n42": Holder("alice", until)})
    assert [r.node.name for r in page.rows] == ["n42"]
    last = select(nodes, FleetQuery(page=9, per=25))
    assert (last.query.page, last.pages, len(last.rows), last.matched) == (3, 3, 10, 60)


def test_a_chart_breaks_its_line_where_samples_are_missing() -> None:
    cpu = CHARTS[0]
    points = [(0.0, 10.0), (30.0, 20.0), (60.0, 30.0), (300.0, 40.0), (330.0, 50.0)]
    svg = str(line_chart(cpu, points, start=0.0, end=600.0, step=30.0))
    (path,) = re.findall(r'<path class="line" d="([^"]+)"', svg)
    assert [seg[0] for seg in path.split()] == ["M", "L", "L", "M", "L"]
    assert 'data-points="5"' in svg
    assert "latest 50.0 %" in svg
    empty = str(line_chart(cpu, [], start=0.0, end=600.0, step=30.0))
    assert "no data" in empty
    assert "<path" not in empty


def test_throttling_is_drawn_as_yes_or_no() -> None:
    throttled = next(c for c in CHARTS if c.flag)
    svg = str(line_chart(throttled, [(0.0, 0.0), (30.0, 327680.0)], start=0, end=60, step=30))
    assert "latest yes" in svg
    assert ">yes</text>" in svg


def test_a_change_event_says_what_moved_and_what_only_showed() -> None:
    old = Look({"a": ("ready", "on"), "b": ("ready", "on")}, {"a": (1.0,), "b": (1.0,)})
    assert diff(old, old) is None
    shown = Look(dict(old.placing), {"a": (2.0,), "b": (1.0,)})
    assert diff(old, shown) == {"fleet": False, "alerts": False, "nodes": ["a"]}
    moved = Look({"a": ("ready", "off"), "b": ("ready", "on")}, dict(old.showing))
    assert diff(old, moved) == {"fleet": True, "alerts": False, "nodes": ["a"]}
    alert = Look(dict(old.placing), dict(old.showing), frozenset({("f1", "firing", "b")}))
    assert diff(old, alert) == {"fleet": False, "alerts": True, "nodes": ["b"]}
