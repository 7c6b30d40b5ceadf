"""When the pump spins for a client's datagram: the budget, the rest after misses, off at 0."""

from __future__ import annotations

import pytest

from piman.netboot.tftp.busypoll import BusyPoll


def test_every_wait_spins_the_budget_while_spins_pay_off() -> None:
    busy = BusyPoll(100e-6, misses=3, rest=5)
    for _ in range(20):
        assert busy.spin_for() == 100e-6
        busy.hit()
    assert (busy.hits, busy.missed, busy.rests) == (20, 0, 0)


def test_misses_in_a_row_make_it_rest_then_it_tries_again() -> None:
    busy = BusyPoll(100e-6, misses=3, rest=5)
    for _ in range(3):
        assert busy.spin_for() == 100e-6
        busy.miss()
    assert [busy.spin_for() for _ in range(5)] == [0.0] * 5  # the rest: sleep at once
    assert busy.spin_for() == 100e-6  # and then spin again
    assert busy.rests == 1


def test_a_hit_between_misses_keeps_it_spinning() -> None:
    busy = BusyPoll(100e-6, misses=3, rest=5)
    for outcome in ["miss", "miss", "hit"] * 10:
        assert busy.spin_for() == 100e-6
        getattr(busy, outcome)()
    assert busy.rests == 0


def test_a_budget_of_zero_never_spins() -> None:
    busy = BusyPoll(0.0)
    assert [busy.spin_for() for _ in range(3)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs", [{"budget": -1.0}, {"budget": 1e-4, "misses": 0}, {"budget": 1e-4, "rest": -1}]
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BusyPoll(**kwargs)  # type: ignore[arg-type]
