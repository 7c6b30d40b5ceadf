"""The login throttle, with time passed in."""

from __future__ import annotations

from piman.access.throttle import LoginThrottle


def test_the_nth_failure_closes_the_key_until_the_oldest_leaves_the_window() -> None:
    t = LoginThrottle(attempts=3, window=60)
    for now in (0, 10, 20):
        assert t.retry_after(["alice"], now) is None
        t.failed(["alice"], now)
    assert t.retry_after(["alice"], 21) == 39  # the failure at 0 leaves at 60
    assert t.retry_after(["bob"], 21) is None  # other keys are not affected
    assert t.retry_after(["alice"], 60) is None
    t.failed(["alice"], 60)
    assert t.retry_after(["alice"], 61) == 9  # failures at 10, 20, 60: the one at 10 leaves at 70


def test_a_success_clears_the_key() -> None:
    t = LoginThrottle(attempts=2, window=60)
    t.failed(["alice"], 0)
    t.succeeded("alice")
    t.failed(["alice"], 1)
    assert t.retry_after(["alice"], 2) is None


def test_memory_is_bounded_under_a_flood_of_names() -> None:
    t = LoginThrottle(attempts=1, window=60, max_keys=100)
    for i in range(10_000):
        t.failed([f"user{i}"], 0)
    assert len(t._failures) == 100
    assert t.retry_after(["user9999"], 1) is not None  # the newest are kept
