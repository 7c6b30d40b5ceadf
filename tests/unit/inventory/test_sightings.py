"""Sightings against a real SQLite store: known MACs are recorded, unknown ones only listed.

An unknown device seen on the wire (a Pi netbooting, or anything saying option 97 "RPi4") goes to
a bounded, expiring list of discovered devices, and becomes a node only when it is accepted.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from piman.errors import ConflictError, NotFoundError
from piman.inventory.sightings import DISCOVERED_TTL, Sightings
from piman.store import Store

PI = "dc:a6:32:00:00:01"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_unknown_pi_is_listed_as_discovered_not_made_a_node(store: Store) -> None:
    sightings = Sightings(store.nodes)
    await sightings.load()
    sightings.note(PI, ip="198.18.0.100", serial="1a2b3c4d", model="pi4", vendor_class="PXEClient")
    sightings.note(PI, ip="198.18.0.100")
    await sightings.drain()
    assert await store.nodes.find(mac=PI) is None
    assert await store.nodes.list() == []
    (seen,) = sightings.discovered()
    assert (seen.mac, seen.ip, seen.serial, seen.model, seen.vendor_class, seen.sightings) == (
        PI,
        "198.18.0.100",
        "1a2b3c4d",
        "pi4",
        "PXEClient",
        2,
    )
    assert seen.first_seen <= seen.last_seen <= datetime.now(UTC)
    assert not sightings.is_known(PI)


async def test_accepting_a_discovered_device_makes_the_node(store: Store) -> None:
    sightings = Sightings(store.nodes)
    await sightings.load()
    sightings.note(PI, ip="198.18.0.100", serial="1a2b3c4d", model="pi4")
    sightings.note("dc:a6:32:00:00:02", serial="0badf00d", model="pi4")
    node = await sightings.accept(PI)
    assert (node.name, node.mac, node.state, node.serial, node.ip) == (
        "pi-dca632000001",
        PI,
        "new",
        "1a2b3c4d",
        "198.18.0.100",
    )
    named = await sightings.accept("DC-A6-32-00-00-02", name="rack9-02")
    assert (named.name, named.serial) == ("rack9-02", "0badf00d")
    assert sightings.discovered() == []
    assert sightings.is_known(PI)
    # From now on its sightings go to the node.
    sightings.note(PI, ip="198.18.0.101")
    await sightings.drain()
    assert (await store.nodes.get("pi-dca632000001")).ip == "198.18.0.101"
    with pytest.raises(NotFoundError, match="no discovered device"):
        await sightings.accept("dc:a6:32:00:00:99")
    sightings.note("dc:a6:32:00:00:03")
    with pytest.raises(ConflictError, match="rack9-02"):
        await sightings.accept("dc:a6:32:00:00:03", name="rack9-02")
    assert [d.mac for d in sightings.discovered()] == ["dc:a6:32:00:00:03"]


async def test_the_discovered_list_is_bounded_expires_and_counts(store: Store) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    sightings = Sightings(store.nodes, max_discovered=3, clock=clock, registry=registry)
    await sightings.load()
    for i in range(5):  # a flood of forged Pis
        clock.now += 1
        sightings.note(f"02:66:00:00:00:{i:02x}", model="pi4")
    assert [d.mac for d in sightings.discovered()] == [
        "02:66:00:00:00:04",
        "02:66:00:00:00:03",
        "02:66:00:00:00:02",
    ]
    assert registry.get_sample_value("piman_discovered_devices") == 3.0
    assert registry.get_sample_value("piman_discovered_dropped_total") == 2.0
    clock.now += DISCOVERED_TTL + 1
    assert sightings.discovered() == []
    assert registry.get_sample_value("piman_discovered_devices") == 0.0
    await sightings.drain()
    assert await store.nodes.list() == []


async def test_known_macs_are_still_recorded_and_the_throttle_is_bounded(store: Store) -> None:
    macs = [f"dc:a6:32:00:01:{i:02x}" for i in range(8)]
    for mac in macs:
        await store.nodes.record_sighting(mac)  # nodes the store knows
    clock = Clock()
    sightings = Sightings(store.nodes, max_tracked=4, clock=clock)
    await sightings.load()
    assert sightings.note(macs[0], ip="198.18.0.100")
    assert not sightings.note(macs[0], ip="198.18.0.100")  # the same news within the interval
    clock.now += 31
    assert sightings.note(macs[0], ip="198.18.0.100")  # … and again after it
    for mac in macs[1:]:
        assert sightings.note(mac, ip="198.18.0.200")
    assert len(sightings._last) == 4  # the oldest MACs were forgotten
    await sightings.drain()
    assert (await store.nodes.get("pi-dca632000100")).ip == "198.18.0.100"
    assert (await store.nodes.get("pi-dca632000107")).ip == "198.18.0.200"
    assert sightings.discovered() == []
