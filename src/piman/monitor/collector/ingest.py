"""One scrape body → samples, within the scrape limits; pure, so it runs off the event loop.

Theory of operation
-------------------
:func:`parse_body` reads a ``/metrics`` body against the series a target already has (``known``:
series text → series id, the scraper's per-target cache) and returns a :class:`ParsedBody`:
for every sample its series id and value, in body order. A sample whose series text is new gets
id 0 (ids start at 1) and is listed in ``new_at``; ``new`` holds each new series once, parsed and
checked, with target labels renamed (``job`` → ``exported_job`` …). The caller allocates ids for
the new series and patches them in, on the loop, where the store's index lives.

Fast path: a line whose series text is known, one blank, and a plain number costs one dict
lookup and one ``float()``; anything else goes through :func:`expfmt.scan` with full checks.

Limits (Prometheus' ``scrape_config`` model; :class:`ScrapeLimits`) make a hostile body cost
bounded memory and time. Over any of them the whole body is refused with
:class:`ScrapeLimitExceeded` naming the limit, as Prometheus fails the whole scrape:

- ``samples``: samples in the body (checked every ``samples`` lines, so at most twice that many
  are ever held);
- ``series``: series the target may have, known plus new;
- ``labels``, ``label_name_length``, ``label_value_length``: the shape of each new series (the
  metric name is the value of ``__name__``, so ``label_value_length`` bounds it too).

Body size is bounded before this point, by the fetcher.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field

from piman.errors import ProtocolError
from piman.monitor.collector.expfmt import parse_series, scan

__all__ = ["RESERVED", "ParsedBody", "ScrapeLimitExceeded", "ScrapeLimits", "parse_body"]

LabelTuple = tuple[tuple[str, str], ...]
RESERVED = frozenset(("job", "instance", "node"))  # labels the collector sets on every series


@dataclass(frozen=True, slots=True)
class ScrapeLimits:
    """What one scrape of one target may bring (defaults as ``monitoring:``'s)."""

    body_size: int = 4 << 20
    samples: int = 5000
    series: int = 5000
    labels: int = 30
    label_name_length: int = 128
    label_value_length: int = 512


class ScrapeLimitExceeded(ProtocolError):
    """A scrape brought more than a limit allows; ``reason`` names it (``sample_limit`` …)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True)
class ParsedBody:
    """Samples of one body: ``ids[i]`` is 0 where sample ``i`` is of a new series."""

    ids: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))
    new: dict[str, tuple[str, LabelTuple]] = field(default_factory=dict)
    new_at: list[tuple[int, str]] = field(default_factory=list)


def _check_series(series: str, limits: ScrapeLimits) -> tuple[str, LabelTuple]:
    """Parse a new series text, apply the label limits, rename the collector's own labels."""
    name, labels = parse_series(series)
    if len(name) > limits.label_value_length:
        raise ScrapeLimitExceeded(
            "label_value_length_limit",
            f"metric name of {len(name)} characters (at most {limits.label_value_length})",
        )
    if len(labels) > limits.labels:
        raise ScrapeLimitExceeded(
            "label_limit", f"{name[:80]} has {len(labels)} labels (at most {limits.labels})"
        )
    for key, value in labels:
        if len(key) > limits.label_name_length:
            raise ScrapeLimitExceeded(
                "label_name_length_limit",
                f"{name[:80]} has a label name of {len(key)} characters "
                f"(at most {limits.label_name_length})",
            )
        if len(value) > limits.label_value_length:
            raise ScrapeLimitExceeded(
                "label_value_length_limit",
                f"{name[:80]}{{{key}}} has a value of {len(value)} characters "
                f"(at most {limits.label_value_length})",
            )
    if any(k in RESERVED for k, _ in labels):
        labels = tuple(sorted((f"exported_{k}" if k in RESERVED else k, v) for k, v in labels))
    return name, labels


def parse_body(body: str, known: Mapping[str, int], limits: ScrapeLimits) -> ParsedBody:
    """The samples of ``body`` (see the module docstring); raises MalformedText or
    ScrapeLimitExceeded. ``known`` is only read."""
    out = ParsedBody()
    ids, values, new, new_at = out.ids, out.values, out.new, out.new_at
    add_id, add_value = ids.append, values.append
    lines = body.split("\n")
    chunk = max(limits.samples, 1024)
    for start in range(0, len(lines), chunk):
        for line in lines[start : start + chunk]:
            if not line or line[0] == "#":
                continue
            head, _, last = line.rpartition(" ")
            sid = known.get(head)
            if sid is not None:
                try:
                    value = float(last)
                except ValueError:
                    pass
                else:
                    if value - value == 0.0 and "_" not in last:  # finite, Go spelling
                        add_id(sid)
                        add_value(value)
                        continue
            for series, value, _ts in scan(line):
                sid = known.get(series)
                if sid is None:
                    if series not in new:
                        if len(known) + len(new) >= limits.series:
                            raise ScrapeLimitExceeded(
                                "series_limit",
                                f"more than {limits.series} series "
                                f"({len(known)} known, {len(new)} new so far)",
                            )
                        new[series] = _check_series(series, limits)
                    new_at.append((len(ids), series))
                    sid = 0
                add_id(sid)
                add_value(value)
        if len(ids) > limits.samples:
            raise ScrapeLimitExceeded("sample_limit", f"more than {limits.samples} samples")
    return out
