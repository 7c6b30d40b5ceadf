"""Prometheus text exposition format 0.0.4: metric families in, bytes out.

The agent renders its own text instead of going through ``prometheus_client``: importing that
library costs about 14 MB of resident memory on a Pi (it pulls in ``http.server``, ``wsgiref`` …),
and the format is small. Values are written the way Go's ``strconv.FormatFloat(v, 'g', -1, 64)``
writes them where it matters to readers (integers without a decimal point, ``+Inf``, ``NaN``);
every Prometheus parser accepts Python's ``repr`` for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CONTENT_TYPE", "MetricFamily", "MetricType", "format_value", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricType = Literal["gauge", "counter", "untyped"]
Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class MetricFamily:
    """One ``# HELP`` / ``# TYPE`` block and its samples (label pairs in the order given)."""

    name: str
    type: MetricType
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Append a sample; labels are written sorted by name, as node_exporter does."""
        pairs: Labels = tuple(sorted(labels.items())) if labels else ()
        self.samples.append((pairs, value))


def format_value(value: float) -> str:
    """A sample value as Go's 'g' format would print it for the common cases."""
    if value != value:  # NaN
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render(families: Iterable[MetricFamily]) -> bytes:
    """The exposition text of ``families``, sorted by name; empty families are left out."""
    lines: list[str] = []
    append = lines.append
    for fam in sorted(families, key=lambda f: f.name):
        if not fam.samples:
            continue
        name = fam.name
        append(f"# HELP {name} {_escape_help(fam.help)}")
        append(f"# TYPE {name} {fam.type}")
        for labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
                append(f"{name}{{{inner}}} {format_value(value)}")
            else:
                append(f"{name} {format_value(value)}")
    append("")
    return "\n".join(lines).encode("utf-8")
