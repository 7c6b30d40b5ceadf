"""The pool guard: how fast new clients may take pool addresses. Pure; time is passed in.

Theory of operation
-------------------
A *new lease* is a pool address given to a client that does not hold it now: an OFFER of an
address the client has no live lease on, or a REQUEST that takes back an expired one. Renewals,
repeated OFFERs of the address a client already holds, and reservations never count. Each new
lease takes one token from two buckets, and is refused (no answer; DHCP clients retry) unless
both have one:

- the pool's bucket: ``per_minute`` tokens, refilled evenly over a minute;
- the client's bucket: ``per_client`` tokens a minute. The client is the switch port when a relay
  says which (option 82, with the relay's ``giaddr``), otherwise the MAC.

So a flood of made-up MACs takes at most ``per_minute`` addresses at once and ``per_minute`` more
each minute, however fast it sends (offers it never REQUESTs are free again after the short
offer hold), and one client cannot walk through the pool DECLINE after DECLINE. A limit of 0 is
no limit. Buckets of the :data:`MAX_CLIENTS` most recent clients are kept (least recently used
forgotten first), so a flood cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["MAX_CLIENTS", "PoolGuard", "TokenBucket", "default_per_minute"]

MAX_CLIENTS = 4096


def default_per_minute(pool_size: int) -> int:
    """New leases a minute when the configuration does not say: a quarter of the pool, at least
    8 (a flood needs four minutes to empty the pool, and the exhaustion log says so meanwhile)."""
    return max(8, pool_size // 4)


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` a minute; starts full."""

    __slots__ = ("capacity", "stamp", "tokens")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = capacity
        self.tokens = float(capacity)
        self.stamp = now

    def ready(self, now: float) -> bool:
        """Refill for the time since the last call; is there a whole token?"""
        elapsed = max(0.0, now - self.stamp)
        self.stamp = max(self.stamp, now)
        self.tokens = min(float(self.capacity), self.tokens + elapsed * self.capacity / 60.0)
        return self.tokens >= 1.0

    def take(self) -> None:
        self.tokens -= 1.0


class PoolGuard:
    """The two buckets of the module docstring. ``refused`` counts refusals since start."""

    def __init__(self, per_minute: int, per_client: int, *, max_clients: int = MAX_CLIENTS) -> None:
        self.per_minute = per_minute
        self.per_client = per_client
        self.max_clients = max_clients
        self.refused = 0
        self._pool: TokenBucket | None = None
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()

    def admit(self, client: str, now: float) -> bool:
        """May ``client`` take a new lease at ``now``? Takes the tokens when it may."""
        pool: TokenBucket | None = None
        if self.per_minute > 0:
            if self._pool is None:
                self._pool = TokenBucket(self.per_minute, now)
            pool = self._pool
            if not pool.ready(now):
                self.refused += 1
                return False
        own: TokenBucket | None = None
        if self.per_client > 0:
            own = self._clients.get(client)
            if own is None:
                own = TokenBucket(self.per_client, now)
                self._clients[client] = own
                if len(self._clients) > self.max_clients:
                    self._clients.popitem(last=False)
            else:
                self._clients.move_to_end(client)
            if not own.ready(now):
                self.refused += 1
                return False
        if pool is not None:
            pool.take()
        if own is not None:
            own.take()
        return True
