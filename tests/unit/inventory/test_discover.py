"""Discovery's merge: one candidate per device from every source, Pis first, known nodes apart,
and the ``nodes:`` line that declares a candidate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network

import yaml

from piman.config.models import NodeSettings
from piman.fleet.records import DiscoveredDevice
from piman.inventory.discover import (
    Candidate,
    Observation,
    Seen,
    from_discovered,
    merge,
    node_line,
    vendor_of,
)

T0 = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)
PI4 = "dc:a6:32:00:00:02"
PI3 = "b8:27:eb:00:00:07"
PC = "00:11:22:33:44:55"
VM = "52:54:00:12:34:56"


def seen(source: str, minutes: int = 0, where: str = "eth0") -> Seen:
    return Seen(source, where, T0 + timedelta(minutes=minutes))


def test_vendor_by_oui_pis_named_others_noted_or_unknown() -> None:
    assert vendor_of(PI4) == "Raspberry Pi"
    assert vendor_of("2C:CF:67:01:02:03") == "Raspberry Pi"
    assert vendor_of(VM) == "QEMU/KVM"
    assert vendor_of("02:00:00:00:01:00") == "locally administered"
    assert vendor_of(PC) == "unknown"
    assert vendor_of(None) == "unknown"


def test_sources_of_one_mac_become_one_candidate_with_every_sighting() -> None:
    found = merge(
        [
            Observation(seen("arp", 1), PI4, ip="198.18.0.12"),
            Observation(seen("bridge", 2, "rack1:5"), PI4, switch="rack1", port=5),
            Observation(seen("mdns", 3, "_workstation"), PI4, ip="198.18.0.12", hostname="pi"),
        ]
    )
    (c,) = found
    assert (c.mac, c.vendor, c.model, c.ip, c.hostname, c.switch_port) == (
        PI4, "Raspberry Pi", "pi4", "198.18.0.12", "pi", "rack1:5",
    )  # fmt: skip
    assert [s.source for s in c.sources] == ["arp", "bridge", "mdns"]
    assert c.source_names == ["arp", "mdns", "bridge"]  # in SOURCES order
    assert c.node is None


def test_the_newest_address_wins_and_the_netboot_model_beats_the_oui() -> None:
    (c,) = merge(
        [
            Observation(seen("arp", 5), PI3, ip="198.18.0.50"),
            Observation(seen("dhcp", 1, "manager"), PI3, ip="198.18.0.100", model="pi3b"),
        ]
    )
    assert c.ip == "198.18.0.50"
    assert c.model == "pi3b"  # the OUI alone says pi3b+


def test_an_mdns_address_without_mac_joins_the_device_seen_at_that_address() -> None:
    found = merge(
        [
            Observation(seen("arp"), PI4, ip="198.18.0.12"),
            Observation(seen("mdns", 1, "_ssh._tcp"), None, ip="198.18.0.12", hostname="pi-a"),
            Observation(seen("mdns", 1, "_ssh._tcp"), None, ip="198.18.0.77", hostname="nas"),
        ]
    )
    assert [(c.mac, c.ip, c.hostname) for c in found] == [
        (PI4, "198.18.0.12", "pi-a"),
        (None, "198.18.0.77", "nas"),  # nobody saw its MAC: shown, not acceptable
    ]


def test_pis_sort_first_then_by_address() -> None:
    found = merge(
        [
            Observation(seen("arp"), PC, ip="198.18.0.2"),
            Observation(seen("arp"), VM, ip="198.18.0.3"),
            Observation(seen("arp"), PI3, ip="198.18.0.40"),
            Observation(seen("arp"), PI4, ip="198.18.0.9"),
        ]
    )
    assert [c.mac for c in found] == [PI4, PI3, PC, VM]


def test_known_nodes_are_left_out_unless_asked_for_and_then_named() -> None:
    observations = [
        Observation(seen("arp"), PI4, ip="198.18.0.12"),
        Observation(seen("arp"), PI3, ip="198.18.0.13"),
    ]
    known = {PI4: "rack1-02"}
    assert [c.mac for c in merge(observations, known=known)] == [PI3]
    both = merge(observations, known=known, include_known=True)
    assert [(c.mac, c.node) for c in both] == [(PI3, None), (PI4, "rack1-02")]


def test_discovered_devices_are_dhcp_sightings_or_tftp_ones() -> None:
    devices = [
        DiscoveredDevice(PI4, T0, T0, 3, ip="198.18.0.100", model="pi4", vendor_class="PXEClient"),
        DiscoveredDevice(PI3, T0, T0 + timedelta(seconds=5), 1, ip="198.18.0.101", serial="abc"),
    ]
    got = from_discovered(devices, "manager http://127.0.0.1:8000")
    assert [(o.mac, o.seen.source, o.seen.when, o.ip, o.model) for o in got] == [
        (PI4, "dhcp", T0, "198.18.0.100", "pi4"),
        (PI3, "tftp", T0 + timedelta(seconds=5), "198.18.0.101", None),
    ]
    assert {o.seen.where for o in got} == {"manager http://127.0.0.1:8000"}


def test_node_line_is_a_config_entry_that_loads_as_a_node() -> None:
    c = Candidate(PI4, "Raspberry Pi", "pi4", "198.18.0.12", "raspberrypi", "rack1", 5,
                  (seen("bridge"),))  # fmt: skip
    line = node_line(c, "rack1-05", network=IPv4Network("198.18.0.0/24"), switches=["rack1"])
    assert line == (
        '  - {name: rack1-05, mac: "dc:a6:32:00:00:02", ip: 198.18.0.12, model: pi4, '
        "switch: rack1, port: 5, hostname: raspberrypi}"
    )
    (entry,) = yaml.safe_load(line)
    node = NodeSettings.model_validate(entry)
    assert (node.name, node.mac, str(node.ip), node.switch, node.port) == (
        "rack1-05", PI4, "198.18.0.12", "rack1", 5,
    )  # fmt: skip


def test_node_line_leaves_out_what_the_config_would_refuse() -> None:
    c = Candidate(PI3, "Raspberry Pi", "pi", "10.0.0.7", None, "other", 3, (seen("arp"),))
    line = node_line(c, "pi-b827eb000007", network=IPv4Network("198.18.0.0/24"), switches=[])
    assert line == (
        '  - {name: pi-b827eb000007, mac: "b8:27:eb:00:00:07"}'
        "  # seen at 10.0.0.7, outside manager.network"
    )
    (entry,) = yaml.safe_load(line)
    assert NodeSettings.model_validate(entry).ip is None
