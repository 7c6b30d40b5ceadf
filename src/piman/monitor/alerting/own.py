"""The manager's own gauges as alert input, beside the metrics store.

Some conditions are facts of the manager, not samples of a node: self-healing quarantined a
node (``piman_node_quarantined{node}``), or held back because a whole switch looks down
(``piman_healing_held{policy,scope}``). They live in the manager's Prometheus registry (so
``/metrics`` shows them to an outside Prometheus too). :class:`OwnGauges` lets the evaluator's
rules read them: for a selector whose metric starts with :data:`PREFIX`, it adds the registry's
current samples to what the store answers, but only at the present (a catch-up replay of the
past sees the store alone: the registry has no history). :func:`healing_rules` are the rules
that watch them, added when ``healing:`` is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from piman.config.matchers import Selector, matches
from piman.fleet.metrics import Sample, Series
from piman.monitor.alerting.book import SampleSource
from piman.monitor.alerting.rules import Rule

__all__ = ["PREFIX", "OwnGauges", "healing_rules"]

PREFIX = "piman_"


class OwnGauges:
    """A :class:`~piman.monitor.alerting.book.SampleSource`: ``inner``, plus the registry's
    ``piman_*`` samples at the present (module doc)."""

    def __init__(
        self,
        inner: SampleSource,
        registry: CollectorRegistry,
        *,
        lookback: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.registry = registry
        self.lookback = lookback
        self.clock = clock

    async def instant(self, selector: Selector, at: float) -> list[Sample]:
        out = await self.inner.instant(selector, at)
        if not selector.metric.startswith(PREFIX) or abs(self.clock() - at) > self.lookback:
            return out
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name != selector.metric or not matches(selector.matchers, sample.labels):
                    continue
                out.append(Sample(sample.name, dict(sample.labels), at, float(sample.value)))
        return out

    async def series(self, selector: Selector, start: float, end: float) -> list[Series]:
        return await self.inner.series(selector, start, end)


def healing_rules() -> list[Rule]:
    """What self-healing raises: a quarantined node, and a policy held back by a mass failure."""
    return [
        Rule.parse(
            "NodeQuarantined",
            "piman_node_quarantined == 1",
            0.0,
            {"severity": "warning"},
            {
                "summary": "{{ node }} is broken: quarantined by self-healing (out of "
                "reservations and scrapes until an operator makes it ready)"
            },
        ),
        Rule.parse(
            "HealingHeld",
            "piman_healing_held > 0",
            0.0,
            {"severity": "critical"},
            {
                "summary": "{{ value }} nodes down at once in healing policy {{ policy }} "
                "({{ scope }}): a switch or uplink failure? Nothing is power-cycled or "
                "reinstalled there meanwhile"
            },
        ),
    ]
