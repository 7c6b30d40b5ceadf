"""Reservations in the store, on SQLite and on a real PostgreSQL: two managers booking the same
nodes at once never both get one; timers are claimed by one manager at a time; a warning's
timer and its outbox row are written together, once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from piman.access.reservations import Candidate, choose, timers_for
from piman.config.reservations import ReservationSettings
from piman.errors import ReservationConflict
from piman.fleet.reservations import (
    NodeSelection,
    ReservationDraft,
    ReservationRecord,
    TimerKind,
)
from piman.store import Store, reconcile
from tests.integration.store.test_store import (  # noqa: F401 - fixtures
    _SchemaStore,
    db_url,
    make_config,
    store,
)

NODES = "".join(f"  - {{name: n{i}, switch: rack2, port: {i}}}\n" for i in range(1, 9))
CANDIDATES = [Candidate(f"n{i}", "ready") for i in range(1, 9)]
SETTINGS = ReservationSettings(warnings=[600.0], unused_after=None)
T0 = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def second(store: Store) -> AsyncIterator[Store]:  # noqa: F811
    """Another manager's connection to the same database (and schema)."""
    other = (
        _SchemaStore(store.url, store.schema)
        if isinstance(store, _SchemaStore)
        else Store(store.url)
    )
    await other.open()
    try:
        yield other
    finally:
        await other.close()


async def book(s: Store, owner: str, selection: NodeSelection) -> ReservationRecord:
    start, end = T0, T0 + timedelta(hours=1)

    def decide(live: list[ReservationRecord]) -> ReservationDraft:
        nodes = choose(selection, CANDIDATES, live, start, end, SETTINGS.buffer)
        return ReservationDraft(owner, nodes, start, end, None, (), owner,
                                timers_for(start, end, SETTINGS))  # fmt: skip

    lock = list(selection.names) or [c.name for c in CANDIDATES]
    return await s.reservations.create(lock, decide, now=T0)


async def test_two_managers_booking_at_once_never_share_a_node(
    store: Store,  # noqa: F811
    second: Store,
    tmp_path: Path,
) -> None:
    await reconcile(store, make_config("sqlite://", tmp_path, NODES))

    async def books(s: Store, owner: str) -> list[tuple[str, ...] | str]:
        out: list[tuple[str, ...] | str] = []
        for i in range(1, 5):  # each asks for n1…n4 by name, then for 2 of any
            for selection in (NodeSelection(names=(f"n{i}",)), NodeSelection(count=2)):
                try:
                    out.append((await book(s, owner, selection)).nodes)
                except ReservationConflict:
                    out.append("refused")
                await asyncio.sleep(0)
        return out

    a, b = await asyncio.gather(books(store, "ann"), books(second, "bob"))
    got = [n for r in a + b if r != "refused" for n in r]
    assert sorted(got) == sorted(set(got)), (a, b)  # no node booked twice
    assert "refused" in a + b  # 16 requests for 8 nodes: some had to be refused
    live = await store.reservations.live()
    assert sorted(n for r in live for n in r.nodes) == sorted(got)


async def test_timers_are_claimed_by_one_manager_at_a_time(
    store: Store,  # noqa: F811
    second: Store,
    tmp_path: Path,
) -> None:
    await reconcile(store, make_config("sqlite://", tmp_path, NODES))
    made = [await book(store, "ann", NodeSelection(names=(f"n{i}",))) for i in range(1, 7)]
    now = T0 + timedelta(hours=2)  # every start, warning and end is due
    lease = now + timedelta(seconds=60)

    async def claims(s: Store, owner: str) -> set[int]:
        got: set[int] = set()
        for _ in range(4):
            taken = await s.reservations.claim_timers(owner, now=now, lease_until=lease, limit=4)
            got |= {t.id for t in taken}
            await asyncio.sleep(0)
        return got

    a, b = await asyncio.gather(claims(store, "manager-a"), claims(second, "manager-b"))
    assert a.isdisjoint(b)
    assert a
    assert b
    # manager-a renews its own and takes every free one, never manager-b's.
    rest = await store.reservations.claim_timers("manager-a", now=now, lease_until=lease, limit=100)
    a = {t.id for t in rest}
    assert a.isdisjoint(b)
    assert len(a | b) == 3 * len(made)  # start, warning, end of each
    # The loser cannot finish a timer it does not hold; the holder can, once.
    one = min(a)
    assert not await second.reservations.finish_timer(one, "manager-b", at=now, outcome="x")
    assert await store.reservations.finish_timer(one, "manager-a", at=now, outcome="done")
    assert not await store.reservations.finish_timer(one, "manager-a", at=now, outcome="again")
    # A lapsed lease passes to the other manager (manager-a died).
    later = lease + timedelta(seconds=1)
    taken = await second.reservations.claim_timers(
        "manager-b", now=later, lease_until=later + timedelta(seconds=60), limit=100
    )
    assert {t.id for t in taken} == (a | b) - {one}


async def test_a_warning_and_its_mail_are_written_together_once(
    store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    await reconcile(store, make_config("sqlite://", tmp_path, NODES))
    r = await book(store, "ann", NodeSelection(names=("n1",)))
    now = T0 + timedelta(minutes=55)
    [start, warn] = await store.reservations.claim_timers(
        "m", now=now, lease_until=now + timedelta(seconds=60), limit=10
    )
    assert (start.kind, warn.kind) == (TimerKind.START, TimerKind.WARN)
    mail = ("mail:owner", f"reservation-{r.id}-warn", {"to": "ann@lab.org"})
    assert await store.reservations.finish_timer(
        warn.id, "m", at=now, outcome="warned", outbox=mail
    )
    assert await store.reservations.finish_timer(
        start.id,
        "m",
        at=now,
        outcome="started",
        outbox=mail,  # the same key: not queued again
    )
    outbox = await store.alerts.outbox()
    assert [(o.receiver, o.key, o.payload) for o in outbox] == [
        ("mail:owner", f"reservation-{r.id}-warn", {"to": "ann@lab.org"})
    ]
    assert await store.reservations.next_due("m", now) == r.end_at
    # Another manager's lease counts: it may take the end only once that lapses.
    [end] = await store.reservations.claim_timers(
        "m", now=r.end_at, lease_until=r.end_at + timedelta(seconds=60), limit=10
    )
    assert await store.reservations.next_due("other", r.end_at) == end.lease_until
    assert await store.reservations.next_due("m", r.end_at) == r.end_at
