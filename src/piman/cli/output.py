"""Listings as a terminal, a script, or someone piping to ``jq`` wants them.

Every command that lists things (``piman nodes``, ``env list``, ``alerts``, ``user list`` …)
builds its records — the dicts the REST API returns, in the same shape when they come straight
from the store — describes its table with :class:`Column`, and calls :func:`emit`::

    NODE_COLUMNS = (
        Column("name", "name", name=True),
        Column("state", "state", priority=1),
        Column("last seen", "last_seen", priority=2, time=True, missing="never"),
        Column("switch:port", lambda r: f"{r['switch']}:{r['port']}", priority=3),
        Column("summary", "summary", priority=4, shrink=True),
        Column("hostname", "hostname", wide=True),
    )

    def nodes(output: OutputOption = Output.TABLE, as_json: JsonFlag = False) -> None:
        rows = ...
        emit(chosen(output, as_json), rows, NODE_COLUMNS, title=f"{len(rows)} nodes")

The whole API: :class:`Output`, :data:`OutputOption`, :data:`JsonFlag` and :func:`chosen` (the
options); :class:`Column`; :func:`emit` (one listing in the chosen format); for a command that
prints more than one table, :func:`print_table` per table and :func:`print_data` once with the
whole document (``piman alerts``, ``piman node show``); :func:`print_details` for one record as
``key  value`` lines; and the pure pieces :func:`render`, :func:`fit`, :func:`relative`,
:func:`to_text` and :func:`terminal_width`. ``piman.cli.nodes_cmd`` is the shortest user.

Theory of operation, ``table`` and ``wide``:

1. Each cell becomes one line of text: a time becomes relative to now (``12 s ago``,
   ``in 2 h``), None or "" the column's ``missing`` text, and control characters spaces (a
   newline in an error message must not break a row in two).
2. ``wide`` shows every column whole, wide-only ones included; a line may be longer than the
   terminal (as ``kubectl -o wide``), never wrapped by us.
3. ``table`` fits the width of the terminal: ``$COLUMNS``, else the terminal's. (When standard
   output is no terminal and ``$COLUMNS`` is unset, ``piman nodes | grep …``, there is nothing
   to fit: every column but the wide-only ones shows whole.) The name columns show always and
   whole. The others are taken by priority (lowest number first, then left to right) at their
   natural width while they fit; the first that does not fit ends the choice, so a column
   shows only when every more useful one does. A ``shrink`` column (free text) that does not
   fit whole takes the width that is left instead, if that is at least ``SHRINK_MIN`` cells
   and its header, cut with "…", and ends the choice too: only the last column taken is ever
   cut, and never a name (a table without a name column keeps its first column whole).
   Columns keep their declared order on screen. When columns were left out, the title says
   which (``-o wide`` brings them back).
4. Nothing wraps: if the name column alone is wider than the terminal, its lines are longer
   than the terminal rather than broken.

``json`` and ``yaml`` print the records whole (every key, in the order the API gives them;
times absolute, ISO-8601, as the API gives them): JSON indented by two, YAML by PyYAML's safe
dumper, so that ``yaml.safe_load`` of one equals ``json.loads`` of the other.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
import yaml
from rich.cells import cell_len, set_cell_size
from rich.text import Text

from piman.cli.common import console

__all__ = [
    "Column",
    "JsonFlag",
    "Output",
    "OutputOption",
    "chosen",
    "emit",
    "fit",
    "print_data",
    "print_details",
    "print_table",
    "relative",
    "render",
    "terminal_width",
    "to_text",
]

SEPARATOR = " │ "
RULE, RULE_CROSS = "━", "━┿━"
SHRINK_MIN = 10  # a shrinkable column is not cut narrower than this, nor than its header
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class Output(enum.StrEnum):
    """The formats of ``-o``: a table fitted to the terminal, every column, or the records."""

    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        help="table (fits the terminal), wide (every column), json or yaml (whole records, "
        "absolute times).",
        case_sensitive=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="The same as -o json.", hidden=True)]


def chosen(output: Output, as_json: bool = False) -> Output:
    """``-o``, with the older ``--json`` flag as ``-o json``."""
    return Output.JSON if as_json else output


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a listing.

    ``value`` is the record's key, or a function of the record (for cells made of several
    fields). ``priority``: lower is more useful, kept longer as the terminal narrows. ``name``:
    the column that names the row, always shown and never cut. ``time``: the value is a
    datetime, an ISO-8601 string or POSIX seconds, shown relative to now. ``shrink``: free
    text that may be cut with "…" instead of being left out. ``wide``: only with ``-o wide``.
    ``right``: aligned right (numbers). ``missing``: what None or "" shows as.
    """

    header: str
    value: str | Callable[[Mapping[str, Any]], Any]
    priority: int = 0
    name: bool = False
    time: bool = False
    shrink: bool = False
    wide: bool = False
    right: bool = False
    missing: str = "-"

    def cell(self, record: Mapping[str, Any], now: datetime) -> str:
        """The text of this column for ``record``: one line, times relative to ``now``."""
        raw = record.get(self.value) if isinstance(self.value, str) else self.value(record)
        if raw is None or raw == "":
            return self.missing
        if self.time:
            when = as_datetime(raw)
            return self.missing if when is None else relative(when, now)
        if isinstance(raw, float):
            return f"{raw:g}"
        return _CONTROL.sub(" ", str(raw))


def as_datetime(value: Any) -> datetime | None:
    """A datetime (UTC when it says no zone) from a datetime, ISO-8601 text or POSIX seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, int | float):
        when = datetime.fromtimestamp(value, UTC)
    else:
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def relative(when: datetime, now: datetime) -> str:
    """``12 s ago``, ``3 min ago``, ``5 h ago``, ``2 d ago``; ``in 2 h`` for the future; ``now``
    within half a second. Rounded to the nearest unit (a two-hour silence just made ends
    ``in 2 h``, not ``in 1 h``); hours up to two days, then days."""
    seconds = (now - when).total_seconds()
    span = abs(seconds)
    if round(span) == 0:
        return "now"
    if round(span) < 60:
        text = f"{round(span)} s"
    elif round(span / 60) < 60:
        text = f"{round(span / 60)} min"
    elif round(span / 3600) < 48:
        text = f"{round(span / 3600)} h"
    else:
        text = f"{round(span / 86400)} d"
    return f"{text} ago" if seconds > 0 else f"in {text}"


def terminal_width() -> int | None:
    """``$COLUMNS`` when set, else the terminal's width; None when standard output is not a
    terminal (a pipe, a file: no width to fit)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return console.width if console.is_terminal else None


def fit(columns: Sequence[Column], natural: Sequence[int], width: int) -> list[int | None]:
    """Each column's width in a ``width``-cell table, None for a column left out (see the
    theory of operation above). ``natural[i]``: the widest cell of column ``i``, header
    included."""
    gap = cell_len(SEPARATOR)
    widths: list[int | None] = [None] * len(columns)
    used = 0
    for i, col in enumerate(columns):
        if col.name:
            used += natural[i] + (gap if used else 0)
            widths[i] = natural[i]
    others = sorted(
        (i for i, c in enumerate(columns) if not c.name and not c.wide),
        key=lambda i: (columns[i].priority, i),
    )
    for i in others:
        room = width - used - (gap if used else 0)
        if natural[i] <= room or not used:
            widths[i] = natural[i]
        elif columns[i].shrink and room >= max(SHRINK_MIN, cell_len(columns[i].header)):
            widths[i] = room  # cut, and the last column taken
            break
        else:
            break
        used += natural[i] + (gap if used else 0)
    return widths


def _cut(text: str, width: int) -> str:
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, width - 1) + "…" if width > 0 else ""


def _pad(text: str, width: int, right: bool) -> str:
    space = " " * (width - cell_len(text))
    return space + text if right else text + space


@dataclass(frozen=True, slots=True)
class Rendered:
    """A table as lines: ``title`` (may be None), ``header``, ``rule`` and ``rows``; ``hidden``
    names the columns left out to fit."""

    title: str | None
    header: str
    rule: str
    rows: list[str]
    hidden: list[str]

    def lines(self) -> list[str]:
        head = [self.title] if self.title is not None else []
        return [*head, self.header, self.rule, *self.rows]


def render(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    width: int | None,
    now: datetime,
    title: str | None = None,
    wide: bool = False,
) -> Rendered:
    """The table of ``records`` fitted to ``width`` cells, or with every column whole when
    ``width`` is None; wide-only columns only when ``wide``. Pure: the caller gives the width
    and the time."""
    cells = [[col.cell(r, now) for col in columns] for r in records]
    natural = [
        max([cell_len(col.header), *(cell_len(row[i]) for row in cells)])
        for i, col in enumerate(columns)
    ]
    if wide or width is None:
        widths: list[int | None] = [
            None if c.wide and not wide else n for c, n in zip(columns, natural, strict=True)
        ]
    else:
        widths = fit(columns, natural, width)
    shown = [i for i, w in enumerate(widths) if w is not None]
    hidden = [c.header for i, c in enumerate(columns) if widths[i] is None and not c.wide]

    def line(texts: Sequence[str]) -> str:
        parts = []
        for i in shown:
            w = widths[i]
            assert w is not None
            parts.append(_pad(_cut(texts[i], w), w, columns[i].right))
        return SEPARATOR.join(parts).rstrip()

    header = line([c.header for c in columns])
    rule = RULE_CROSS.join(RULE * (widths[i] or 0) for i in shown)
    if title is not None and hidden:
        for longer in (
            f"{title} (-o wide adds {', '.join(hidden)})",
            f"{title} (-o wide adds {len(hidden)} more)",
        ):
            if width is None or cell_len(longer) <= width:
                title = longer
                break
    return Rendered(title, header, rule, [line(row) for row in cells], hidden)


def print_table(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    wide: bool = False,
    title: str | None = None,
    now: datetime | None = None,
) -> None:
    """Print ``records`` as a table that fits the terminal (or every column, ``wide``)."""
    table = render(
        records,
        columns,
        width=None if wide else terminal_width(),
        now=now or datetime.now(UTC),
        title=title,
        wide=wide,
    )
    if table.title is not None:
        console.print(Text(table.title), soft_wrap=True)
    console.print(Text(table.header, style="bold"), soft_wrap=True)
    console.print(Text(table.rule, style="dim"), soft_wrap=True)
    for row in table.rows:
        console.print(Text(row), soft_wrap=True)


def print_details(
    record: Mapping[str, Any], *, times: Sequence[str] = (), now: datetime | None = None
) -> None:
    """Print one record as ``key  value`` lines (``piman node show``): None as "-", the keys
    in ``times`` as relative time then the absolute one, ``12 s ago (2025-06-01T10:00:00Z)``."""
    now = now or datetime.now(UTC)
    pad = max((cell_len(k) for k in record), default=0)
    for key, value in record.items():
        text = "-" if value is None or value == "" else _CONTROL.sub(" ", str(value))
        when = as_datetime(value) if key in times else None
        if when is not None:
            text = f"{relative(when, now)} ({value})"
        console.print(Text(f"{key:>{pad}}  {text}"), soft_wrap=True)


def to_text(data: Any, output: Output) -> str:
    """``data`` as JSON or YAML text (datetimes in ISO-8601)."""
    plain = json.loads(json.dumps(data, default=_iso))
    if output is Output.YAML:
        dumped: str = yaml.safe_dump(
            plain, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16
        )
        return dumped
    return json.dumps(plain, indent=2, ensure_ascii=False) + "\n"


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return when.isoformat()
    return str(value)


def print_data(data: Any, output: Output) -> None:
    """Print ``data`` (records, or a document made of them) as JSON or YAML."""
    console.out(to_text(data, output), end="", highlight=False)


def emit(
    output: Output,
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    data: Any = None,
    now: datetime | None = None,
) -> None:
    """Print a listing: ``records`` as a table (``table``, ``wide``), or as JSON or YAML —
    ``data`` instead of the records when given (a command whose document holds more than
    the rows, such as ``{"node": …, "deployments": [...]}``)."""
    if output in (Output.JSON, Output.YAML):
        print_data(records if data is None else data, output)
        return
    print_table(records, columns, wide=output is Output.WIDE, title=title, now=now)
