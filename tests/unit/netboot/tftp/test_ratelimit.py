"""The listener's request limiter: per source (a bounded LRU table), and for all sources."""

from __future__ import annotations

from ipaddress import IPv4Network

from piman.netboot.tftp.ratelimit import Refusal, RequestLimiter


def spoofed(i: int) -> str:
    return f"198.{18 + (i >> 16 & 1)}.{i >> 8 & 255}.{i & 255}"


def test_the_table_of_sources_stays_bounded_under_spoofed_sources() -> None:
    limiter = RequestLimiter(rate=50, total=1e9, max_sources=1000)
    for i in range(50_000):  # all within the same second
        limiter.check(spoofed(i), now=0.0)
        assert len(limiter) <= 1000
    assert len(limiter) == 1000


def test_a_source_that_keeps_asking_keeps_its_bucket_while_others_churn() -> None:
    limiter = RequestLimiter(rate=1, total=1e9, max_sources=100)
    assert limiter.check("198.18.0.7", 0.0) is None
    for i in range(1000):
        limiter.check(spoofed(1000 + i), 0.0)
        if i % 50 == 0:  # still asking: its empty bucket is the most recent, not pushed out
            assert limiter.check("198.18.0.7", 0.0) is Refusal.RATE_LIMITED
    assert limiter.check("198.18.0.7", 1.0) is None  # a second later: one more token


def test_all_sources_together_meet_the_total() -> None:
    limiter = RequestLimiter(rate=50, total=100)
    answers = [limiter.check(spoofed(i), 0.0) for i in range(300)]
    assert answers.count(None) == 100
    assert answers.count(Refusal.OVERLOAD) == 200
    assert limiter.check(spoofed(1000), 0.5) is None  # 50 tokens came back in half a second


def test_one_source_is_limited_before_it_spends_the_total() -> None:
    limiter = RequestLimiter(rate=2, total=10)
    answers = [limiter.check("198.18.0.9", 0.0) for _ in range(20)]
    assert answers == [None, None] + [Refusal.RATE_LIMITED] * 18
    others = [limiter.check(spoofed(i), 0.0) for i in range(10)]
    assert others.count(None) == 8  # what the noisy source did not take


def test_exempt_networks_skip_both_limits_and_take_no_room() -> None:
    limiter = RequestLimiter(rate=1, total=1, exempt=[IPv4Network("127.0.0.0/8")])
    assert all(limiter.check("127.0.0.1", 0.0) is None for _ in range(100))
    assert len(limiter) == 0
    assert limiter.check("198.18.0.5", 0.0) is None
    assert limiter.check("198.18.0.6", 0.0) is Refusal.OVERLOAD
