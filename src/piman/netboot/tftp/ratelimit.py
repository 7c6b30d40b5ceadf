"""How many new TFTP requests the listener takes: per source address, and from all together.

Each source address has a token bucket of ``rate`` requests per second (a burst of as many,
at least one). The buckets live in a table of at most ``max_sources`` entries, least recently
used first out: each request costs O(1), however many sources there are. A source pushed out
comes back with a full bucket, so the table alone bounds nothing against spoofed sources
(each one new): a bucket shared by every source, ``total`` requests per second (a burst of as
many), bounds what the event loop takes on. Sources in the ``exempt`` networks (loopback by
default: it cannot be spoofed from the network) skip both.

Pure: time is passed in, nothing here reads the clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

__all__ = ["MAX_SOURCES", "Refusal", "RequestLimiter"]

MAX_SOURCES = 10_000  # source addresses whose buckets are kept


class Refusal(StrEnum):
    """Why a request was not taken (the ``reason`` label of the dropped-requests metric)."""

    RATE_LIMITED = "rate_limited"  # its source asked more than ``rate`` per second
    OVERLOAD = "overload"  # all sources together asked more than ``total`` per second


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last

    def take(self, rate: float, burst: float, now: float) -> bool:
        """One token if there is one, after refilling for the time since the last call."""
        tokens = self.tokens + (now - self.last) * rate
        self.tokens = burst if tokens > burst else tokens
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RequestLimiter:
    """Token buckets per source address (an LRU table) and one for all sources together."""

    def __init__(
        self,
        rate: float,
        total: float,
        exempt: Sequence[IPv4Network] = (),
        *,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.rate = rate
        self.total = total
        self.exempt = tuple(exempt)
        self.max_sources = max_sources
        self._burst = max(rate, 1.0)
        self._total_burst = max(total, 1.0)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._all: _Bucket | None = None

    def __len__(self) -> int:
        """Source addresses whose buckets are kept (at most ``max_sources``)."""
        return len(self._buckets)

    def check(self, source: str, now: float) -> Refusal | None:
        """Take a request from ``source`` at ``now``? None if so, else why not."""
        buckets = self._buckets
        bucket = buckets.get(source)
        if bucket is None:
            if self._is_exempt(source):
                return None
            if len(buckets) >= self.max_sources:
                buckets.popitem(last=False)
            bucket = buckets[source] = _Bucket(self._burst, now)
        else:
            buckets.move_to_end(source)
        if not bucket.take(self.rate, self._burst, now):
            return Refusal.RATE_LIMITED
        everyone = self._all
        if everyone is None:
            everyone = self._all = _Bucket(self._total_burst, now)
        if not everyone.take(self.total, self._total_burst, now):
            return Refusal.OVERLOAD
        return None

    def _is_exempt(self, source: str) -> bool:
        if not self.exempt:
            return False
        try:
            address = IPv4Address(source)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)
