"""The fleet page's rows: filter, sort and page a fleet on the server, pure.

Theory of operation
-------------------
The fleet page must stay fast at thousands of nodes, so the browser never gets the whole
fleet: the query string (:class:`FleetQuery`: ``state``, ``switch``, ``model``, ``q``,
``sort``, ``desc``, ``page``, ``per``) is applied here, and the HTML carries only the rows of
one page. :func:`select` takes every node with what the page shows beside it (the owner of its
active reservation, its collector snapshot, its alerts) and returns one :class:`FleetPage`:
the rows shown, how many matched, the page count, and the choices of each filter (from the
whole fleet, so a filter that matches nothing can still be undone).

Sorting puts unknown values (a node without a snapshot, without an owner) last in both
directions, and ties are broken by the store's order (switch, port, name), so paging is
stable. Text search matches a substring of the name, IP, MAC, serial, host name or owner,
case-insensitively. Out-of-range pages clamp to the last page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from piman.fleet.metrics import NodeSnapshot
from piman.fleet.records import NodeRecord

__all__ = [
    "PER_PAGE",
    "SORTS",
    "FleetPage",
    "FleetQuery",
    "FleetRow",
    "Holder",
    "select",
]

PER_PAGE = (25, 50, 100, 200)
SORTS = ("switch", "name", "state", "power", "model", "owner", "cpu", "mem", "temp", "alerts")


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a node now (an active reservation) and until when."""

    owner: str
    until: datetime


@dataclass(frozen=True, slots=True)
class FleetQuery:
    """What the fleet page was asked to show (parsed leniently: junk falls back to defaults)."""

    state: str = ""
    switch: str = ""
    model: str = ""
    q: str = ""
    sort: str = "switch"
    desc: bool = False
    page: int = 1
    per: int = 50

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> FleetQuery:
        def number(key: str, default: int) -> int:
            try:
                return int(params.get(key, default))
            except ValueError:
                return default

        sort = params.get("sort", "switch")
        per = number("per", 50)
        return cls(
            state=params.get("state", "").strip()[:64],
            switch=params.get("switch", "").strip()[:64],
            model=params.get("model", "").strip()[:64],
            q=params.get("q", "").strip()[:128],
            sort=sort if sort in SORTS else "switch",
            desc=params.get("desc", "") in ("1", "true", "on"),
            page=max(1, number("page", 1)),
            per=per if per in PER_PAGE else 50,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this query with ``changes``, defaults left out."""
        values = {
            "state": self.state,
            "switch": self.switch,
            "model": self.model,
            "q": self.q,
            "sort": self.sort,
            "desc": "1" if self.desc else "",
            "page": str(self.page),
            "per": str(self.per),
        }
        for key, value in changes.items():
            values[key] = "1" if value is True else "" if value is False else str(value)
        defaults = {"sort": "switch", "page": "1", "per": "50"}
        return {k: v for k, v in values.items() if v and defaults.get(k) != v}


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One row of the page: the node and what is shown beside it."""

    node: NodeRecord
    holder: Holder | None
    snapshot: NodeSnapshot | None
    firing: int
    pending: int


@dataclass(frozen=True, slots=True)
class FleetPage:
    rows: list[FleetRow]
    query: FleetQuery  # with the page clamped
    total: int  # nodes in the fleet
    matched: int  # nodes that pass the filters
    pages: int
    counts: dict[str, int]  # nodes per state, whole fleet
    choices: dict[str, list[str]] = field(default_factory=dict)  # state, switch, model


def _text(row: FleetRow) -> str:
    n = row.node
    parts = (n.name, n.ip, n.mac, n.serial, n.hostname, row.holder.owner if row.holder else None)
    return "\n".join(p for p in parts if p).lower()


def _keys() -> dict[str, Callable[[FleetRow], Any]]:
    def snap(attr: str) -> Callable[[FleetRow], Any]:
        return lambda r: getattr(r.snapshot, attr) if r.snapshot is not None else None

    return {
        "name": lambda r: r.node.name,
        "state": lambda r: r.node.state,
        "power": lambda r: r.node.power_state,
        "model": lambda r: r.node.model,
        "owner": lambda r: r.holder.owner if r.holder else None,
        "cpu": snap("cpu"),
        "mem": snap("memory"),
        "temp": snap("temperature"),
        "alerts": lambda r: (r.firing, r.pending) if r.firing or r.pending else None,
    }


def select(
    nodes: Sequence[NodeRecord],
    query: FleetQuery,
    *,
    holders: Mapping[str, Holder] | None = None,
    snapshot: Callable[[str], NodeSnapshot | None] | None = None,
    alerts: Mapping[str, tuple[int, int]] | None = None,
) -> FleetPage:
    """The page of ``nodes`` (in the store's order) that ``query`` asks for.

    ``alerts`` maps a node to its (firing, pending) alert counts.
    """
    holders = holders or {}
    alerts = alerts or {}
    counts: dict[str, int] = {}
    switches: set[str] = set()
    models: set[str] = set()
    for n in nodes:
        counts[n.state] = counts.get(n.state, 0) + 1
        if n.switch:
            switches.add(n.switch)
        if n.model:
            models.add(n.model)
    needle = query.q.lower()
    rows: list[FleetRow] = []
    for n in nodes:
        if query.state and n.state != query.state:
            continue
        if query.switch and n.switch != query.switch:
            continue
        if query.model and n.model != query.model:
            continue
        firing, pending = alerts.get(n.name, (0, 0))
        row = FleetRow(n, holders.get(n.name), snapshot(n.name) if snapshot else None, firing,
                       pending)  # fmt: skip
        if needle and needle not in _text(row):
            continue
        rows.append(row)
    if query.sort != "switch":
        key = _keys()[query.sort]
        known = [r for r in rows if key(r) is not None]
        unknown = [r for r in rows if key(r) is None]
        known.sort(key=key, reverse=query.desc)  # stable: ties keep the store's order
        rows = known + unknown
    elif query.desc:
        rows.reverse()
    matched = len(rows)
    pages = max(1, -(-matched // query.per))
    page = min(query.page, pages)
    start = (page - 1) * query.per
    return FleetPage(
        rows=rows[start : start + query.per],
        query=replace(query, page=page),
        total=len(nodes),
        matched=matched,
        pages=pages,
        counts=counts,
        choices={
            "state": sorted(counts),
            "switch": sorted(switches),
            "model": sorted(models),
        },
    )
