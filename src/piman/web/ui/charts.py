"""Server-rendered SVG line charts of a node's metrics (no chart library, no JavaScript).

:data:`RANGES` names the windows the node page offers and the step of each (about 120–170
points per chart, whatever the window). :data:`CHARTS` names the series drawn and the top of
their scale. :func:`line_chart` turns one series into an SVG: a gap of more than
:data:`GAP_STEPS` steps between two points breaks the line (the node was not scraped), so an
outage is visible instead of being bridged by a straight line. Throttling is drawn as 0/1 (any
bit of the ``vcgencmd get_throttled`` mask set is "throttled").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["CHARTS", "GAP_STEPS", "RANGES", "ChartSpec", "line_chart"]

RANGES: dict[str, tuple[float, float]] = {  # name → (window seconds, step seconds)
    "1h": (3600.0, 30.0),
    "24h": (86400.0, 600.0),
    "7d": (7 * 86400.0, 3600.0),
}
GAP_STEPS = 2.5
WIDTH, HEIGHT = 600, 150
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True, slots=True)
class ChartSpec:
    metric: str  # the collector's series name (an /events field)
    title: str
    unit: str
    top: float  # the scale's top (grown to the data when it is larger)
    flag: bool = False  # draw 0/1: any non-zero value is 1


CHARTS = (
    ChartSpec("cpu_percent", "CPU", "%", 100.0),
    ChartSpec("memory_percent", "Memory", "%", 100.0),
    ChartSpec("disk_percent", "Disk", "%", 100.0),
    ChartSpec("temperature_celsius", "Temperature", "°C", 90.0),
    ChartSpec("throttled", "Throttling", "", 1.0, flag=True),
)


def _clock(ts: float, window: float) -> str:
    fmt = "%H:%M" if window <= 86400 else "%a %H:%M"
    return time.strftime(fmt, time.localtime(ts))


def line_chart(
    spec: ChartSpec,
    points: Sequence[tuple[float, float]],
    *,
    start: float,
    end: float,
    step: float,
) -> Markup:
    """One chart: ``points`` (UNIX seconds, value), oldest first, over [start, end]."""
    values = [(ts, (1.0 if v else 0.0) if spec.flag else v) for ts, v in points]
    top = max([spec.top, *(v for _, v in values)]) if values else spec.top
    span = max(end - start, 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(ts: float, v: float) -> str:
        x = LEFT + (ts - start) / span * plot_w
        y = TOP + plot_h - max(0.0, min(v, top)) / top * plot_h
        return f"{x:.1f},{y:.1f}"

    path: list[str] = []
    last: float | None = None
    for ts, v in values:
        move = last is None or ts - last > GAP_STEPS * step
        path.append(("M" if move else "L") + xy(ts, v))
        last = ts
    label = f"{spec.title} ({spec.unit})" if spec.unit else spec.title
    if values:
        latest = values[-1][1]
        now = ("yes" if latest else "no") if spec.flag else f"{latest:.1f} {spec.unit}".strip()
        summary = f"{label}, latest {now}"
    else:
        summary = f"{label}: no data in this window"
    grid = []
    for frac in (0.0, 0.5, 1.0):
        y = TOP + plot_h - frac * plot_h
        tick = ("yes" if frac == 1.0 else "no" if frac == 0.0 else "") if spec.flag else (
            f"{top * frac:g}")  # fmt: skip
        grid.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    window = end - start
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(summary)}" data-metric="{spec.metric}" '
        f'data-points="{len(values)}" preserveAspectRatio="none">',
        f"<title>{escape(summary)}</title>",
        *grid,
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{_clock(start, window)}</text>',
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
        f"{_clock(end, window)}</text>",
    ]
    if path:
        parts.append(f'<path class="line" d="{" ".join(path)}"/>')
    else:
        parts.append(
            f'<text class="empty" x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" '
            f'text-anchor="middle">no data</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # every interpolated text is escaped or numeric
