"""The neighbour table's parsers, the sweep's bounds, and mDNS names: pure parts of discovery."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Network

import pytest

from piman.inventory.mdns import MdnsDevice, host_of, mac_in_name, observations
from piman.inventory.neighbours import (
    Neighbour,
    check_scope,
    parse_ip_json,
    parse_proc_arp,
)
from piman.inventory.neighbours import observations as arp_observations

# `ip -j -4 neigh show` as iproute2 6.1 prints it (one line; here split for reading).
IP_JSON = (
    '[{"dst":"198.18.0.10","dev":"eth0","lladdr":"dc:a6:32:00:00:0a","state":["REACHABLE"]},'
    '{"dst":"198.18.0.11","dev":"eth0","lladdr":"DC:A6:32:00:00:0B","state":["STALE"]},'
    '{"dst":"198.18.0.12","dev":"eth0","lladdr":"02:00:00:00:01:02","state":["DELAY"]},'
    '{"dst":"198.18.0.13","dev":"eth0","state":["INCOMPLETE"]},'
    '{"dst":"198.18.0.14","dev":"eth0","state":["FAILED"]},'
    '{"dst":"198.18.0.15","dev":"eth0","lladdr":"02:00:00:00:01:05","state":["FAILED"]},'
    '{"dst":"10.1.2.3","dev":"wlan0","lladdr":"00:11:22:33:44:55","router":null,'
    '"state":["STALE"]},'
    '{"dst":"198.18.0.16","dev":"eth0","lladdr":"00:00:00:00:00:00","state":["PERMANENT"]}]'
)

PROC_ARP = """\
IP address       HW type     Flags       HW address            Mask     Device
198.18.0.10      0x1         0x2         dc:a6:32:00:00:0a     *        eth0
198.18.0.13      0x1         0x0         00:00:00:00:00:00     *        eth0
198.18.0.20      0x1         0x6         b8:27:eb:00:00:14     *        eth0
garbage line
"""


def test_ip_json_keeps_entries_with_a_mac_in_a_usable_state() -> None:
    assert parse_ip_json(IP_JSON) == [
        Neighbour("198.18.0.10", "dc:a6:32:00:00:0a", "eth0", "REACHABLE"),
        Neighbour("198.18.0.11", "dc:a6:32:00:00:0b", "eth0", "STALE"),
        Neighbour("198.18.0.12", "02:00:00:00:01:02", "eth0", "DELAY"),
        Neighbour("10.1.2.3", "00:11:22:33:44:55", "wlan0", "STALE"),
    ]


@pytest.mark.parametrize("text", ["", "not json", "{}", '[1, null, {"dst": 3}]'])
def test_ip_json_that_is_not_a_table_gives_nothing(text: str) -> None:
    assert parse_ip_json(text) == []


def test_proc_arp_keeps_the_complete_entries() -> None:
    assert [(n.ip, n.mac) for n in parse_proc_arp(PROC_ARP)] == [
        ("198.18.0.10", "dc:a6:32:00:00:0a"),
        ("198.18.0.20", "b8:27:eb:00:00:14"),
    ]


def test_only_entries_inside_the_scope_are_observations() -> None:
    table = parse_ip_json(IP_JSON)
    got = arp_observations(table, IPv4Network("198.18.0.0/24"))
    assert [o.ip for o in got] == ["198.18.0.10", "198.18.0.11", "198.18.0.12"]
    assert {(o.seen.source, o.seen.where) for o in got} == {("arp", "eth0")}
    assert len(arp_observations(table, None)) == 4


def test_a_sweep_is_bounded_to_a_slash_20_unless_forced() -> None:
    assert check_scope(IPv4Network("198.18.0.0/20")) == IPv4Network("198.18.0.0/20")
    with pytest.raises(ValueError, match=r"/20 \(4094\) at most without --force"):
        check_scope(IPv4Network("198.18.0.0/19"))
    assert check_scope(IPv4Network("198.18.0.0/16"), force=True).prefixlen == 16


def test_the_mac_a_workstation_name_carries() -> None:
    assert mac_in_name("raspberrypi [dc:a6:32:01:02:03]._workstation._tcp.local.") == (
        "dc:a6:32:01:02:03"
    )
    assert mac_in_name("pi [DC-A6-32-01-02-03]._workstation._tcp.local.") == "dc:a6:32:01:02:03"
    assert mac_in_name("raspberrypi._ssh._tcp.local.") is None
    assert mac_in_name("x [not a mac]._workstation._tcp.local.") is None


def test_the_host_name_from_the_srv_target_else_the_instance_label() -> None:
    service = "_workstation._tcp.local."
    name = "rack-pi [dc:a6:32:01:02:03]._workstation._tcp.local."
    assert host_of("pi-07.local.", name, service) == "pi-07"
    assert host_of(None, name, service) == "rack-pi"


def test_mdns_observations_one_per_address() -> None:
    when = datetime(2026, 12, 5, tzinfo=UTC)
    device = MdnsDevice("_ssh._tcp.local.", "pi._ssh._tcp.local.", "pi", ("198.18.0.5",
                        "198.18.1.5"), None, when)  # fmt: skip
    got = observations([device])
    assert [(o.mac, o.ip, o.hostname, o.seen.source, o.seen.where) for o in got] == [
        (None, "198.18.0.5", "pi", "mdns", "_ssh._tcp"),
        (None, "198.18.1.5", "pi", "mdns", "_ssh._tcp"),
    ]
