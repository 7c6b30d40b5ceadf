"""The login throttle: too many wrong passwords for one name, or from one address, wait (pure).

Each key (a user name, or a client address) counts its failures in a sliding window; once a key
reaches ``attempts`` failures it is refused until the oldest one leaves the window. A success
clears the name's count (not the address's: one right password must not launder a guessing
client). Memory is bounded: at most ``max_keys`` keys, the stalest dropped first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(self, attempts: int, window: float, *, max_keys: int = 65_536) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _live(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, keys: Iterable[str], now: float) -> float | None:
        """Seconds to wait when any key is over its budget, else None."""
        worst = 0.0
        for key in keys:
            times = self._live(key, now)
            if times is not None and len(times) >= self.attempts:
                worst = max(worst, times[0] + self.window - now)
        return worst if worst > 0 else None

    def failed(self, keys: Iterable[str], now: float) -> None:
        for key in keys:
            times = self._live(key, now)
            if times is None:
                if len(self._failures) >= self.max_keys:
                    self._failures.popitem(last=False)
                times = self._failures[key] = deque()
            else:
                self._failures.move_to_end(key)
            times.append(now)
            while len(times) > self.attempts:
                times.popleft()

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
