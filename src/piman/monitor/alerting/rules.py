"""Alert rules: the model and the built-in defaults (the expression language is
:mod:`piman.config.matchers`).

A rule is ``<selector> <op> <number>`` held for ``for``. A selector names a scraped metric or a
field of the agent's ``/events`` snapshot (:data:`~piman.fleet.metrics.EVENT_FIELDS`, e.g.
``memory_percent``), which the collector stores as series of that name.

The seed piman's ``monitoring.config`` thresholds map onto the defaults (:func:`default_rules`):

=====================================  ==========================================
``cpu`` / ``cpu_percent``              HighCpu threshold (percent, default 95)
``memory`` / ``memory_percent``        HighMemory threshold (percent, default 90)
``disk`` / ``disk_percent``            RootDiskFull threshold (percent, default 90)
``temperature`` / ``temp``             HotSoC threshold (°C, default 80)
``timeout``                            NodeDown ``for`` (seconds or ``1m``; default 1m)
=====================================  ==========================================

A ``*_threshold`` suffix is accepted too (``cpu_threshold: 90``).
"""

from __future__ import annotations

import hashlib
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from piman.config.matchers import NAME_PATTERN, Selector, parse_expr
from piman.config.types import parse_duration
from piman.errors import RuleError

__all__ = ["OPS", "Rule", "default_rules", "fingerprint"]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable 16-hex-digit id of a label set (order-independent), as Alertmanager shows one."""
    h = hashlib.sha256()
    for key in sorted(labels):
        h.update(key.encode())
        h.update(b"\xff")
        h.update(labels[key].encode())
        h.update(b"\xff")
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed alert rule."""

    name: str
    selector: Selector
    op: str
    threshold: float
    for_: float = 0.0
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def expr(self) -> str:
        return f"{self.selector} {self.op} {self.threshold:g}"

    def test(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)

    @classmethod
    def parse(
        cls,
        name: str,
        expr: str,
        for_: float = 0.0,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> Rule:
        if not re.fullmatch(NAME_PATTERN, name or ""):
            raise RuleError(f"{name!r} is not an alert name (letters, digits, _ and :)")
        selector, op, threshold = parse_expr(expr)
        return cls(name, selector, op, threshold, for_, dict(labels or {}), dict(annotations or {}))

    @classmethod
    def of(cls, settings: Any) -> Rule:
        """From a :class:`piman.config.monitoring.RuleSettings`."""
        return cls.parse(
            settings.alert, settings.expr, settings.for_, settings.labels, settings.annotations
        )


def _threshold(config: Mapping[str, Any], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        for spelled in (key, f"{key}_threshold"):
            if spelled in config and config[spelled] is not None:
                try:
                    return float(config[spelled])
                except (TypeError, ValueError):
                    raise RuleError(
                        f"monitoring.config.{spelled}: {config[spelled]!r} is not a number"
                    ) from None
    return default


def default_rules(config: Mapping[str, Any] | None = None) -> list[Rule]:
    """The built-in rules, with the seed's ``monitoring.config`` thresholds applied."""
    cfg = dict(config or {})
    timeout = 60.0
    if cfg.get("timeout") is not None:
        try:
            timeout = parse_duration(cfg["timeout"])
        except ValueError as err:
            raise RuleError(f"monitoring.config.timeout: {err}") from None
    cpu = _threshold(cfg, ("cpu", "cpu_percent"), 95.0)
    mem = _threshold(cfg, ("memory", "memory_percent", "mem"), 90.0)
    disk = _threshold(cfg, ("disk", "disk_percent"), 90.0)
    temp = _threshold(cfg, ("temperature", "temp", "temperature_celsius"), 80.0)
    crit, warn = {"severity": "critical"}, {"severity": "warning"}
    return [
        Rule.parse(
            "NodeDown", "up == 0", timeout, crit, {"summary": "{{ node }} is not answering"}
        ),
        Rule.parse(
            "HotSoC",
            f"temperature_celsius >= {temp:g}",
            120.0,
            warn,
            {"summary": "{{ node }} SoC at {{ value }} °C"},
        ),
        Rule.parse(
            "UnderVoltage",
            'rpi_throttle_condition{condition="under_voltage",scope="now"} == 1',
            0.0,
            crit,
            {"summary": "{{ node }} is under-voltage: check its power supply"},
        ),
        Rule.parse(
            "RootDiskFull",
            f"disk_percent >= {disk:g}",
            300.0,
            warn,
            {"summary": "{{ node }} root disk {{ value }} % full"},
        ),
        Rule.parse(
            "HighMemory",
            f"memory_percent >= {mem:g}",
            300.0,
            warn,
            {"summary": "{{ node }} memory {{ value }} % used"},
        ),
        Rule.parse(
            "HighCpu",
            f"cpu_percent >= {cpu:g}",
            300.0,
            warn,
            {"summary": "{{ node }} CPU {{ value }} % busy"},
        ),
    ]
