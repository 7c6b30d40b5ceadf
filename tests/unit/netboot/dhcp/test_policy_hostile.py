"""DHCP policy against hostile clients: spoofed DECLINE/RELEASE, bare REQUESTs, pool floods.

Each test is one attack from the provisioning network, driven through ``DhcpPolicy.handle``
with explicit time, and what the real client (or the next honest one) must still see.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from piman.config import load_config
from piman.fleet.models import PiModel
from piman.netboot.dhcp import policy as policy_mod
from piman.netboot.dhcp.leases import LeaseState
from piman.netboot.dhcp.packets import MessageType
from piman.netboot.dhcp.policy import (
    OFFER_HOLD,
    QUARANTINE,
    DhcpOutcome,
    DhcpPolicy,
    PolicySettings,
)
from piman.sim.netboot import pi_discover, pi_request
from tests.unit.netboot.dhcp.test_policy import NOW, SERVER, client, dora, settings

IP = IPv4Address
HOLDER, ATTACKER, OTHER = "02:00:00:00:00:01", "02:00:00:00:00:66", "02:00:00:00:00:03"
ONE = (int(IP("198.18.0.100")), int(IP("198.18.0.100")))  # a pool of one address
HUNDRED = (int(IP("198.18.0.100")), int(IP("198.18.0.199")))


def renew(policy: DhcpPolicy, mac: str, ip: IPv4Address, now: float) -> DhcpOutcome:
    return policy.handle(replace(client(mac, MessageType.REQUEST), ciaddr=ip), now).outcome


def test_decline_from_another_mac_does_not_take_the_holders_address() -> None:
    policy = DhcpPolicy(settings(pool=ONE))
    held = dora(policy, HOLDER)
    spoof = client(ATTACKER, MessageType.DECLINE, requested_ip=held, server_id=SERVER)
    d = policy.handle(spoof, NOW + 1)
    assert (d.reply, d.leases) == (None, ())
    assert renew(policy, HOLDER, held, NOW + 2) is DhcpOutcome.ACK
    # After the quarantine a DECLINE would have imposed, the lease still runs: nobody else gets it.
    later = NOW + QUARANTINE + 1
    assert policy.handle(client(OTHER, MessageType.DISCOVER), later).reply is None
    assert renew(policy, HOLDER, held, later) is DhcpOutcome.ACK


def test_release_or_decline_with_another_client_id_is_ignored() -> None:
    policy = DhcpPolicy(settings(pool=ONE))
    own, forged = b"\x01" + bytes.fromhex("020000000001"), b"\x01forged"
    offer = policy.handle(client(HOLDER, MessageType.DISCOVER, client_id=own), NOW)
    assert offer.reply is not None
    held = offer.reply.yiaddr
    ack = policy.handle(
        client(HOLDER, MessageType.REQUEST, requested_ip=held, server_id=SERVER, client_id=own),
        NOW,
    )
    assert ack.outcome is DhcpOutcome.ACK
    release = replace(client(HOLDER, MessageType.RELEASE, client_id=forged), ciaddr=held)
    assert policy.handle(release, NOW + 1).leases == ()
    decline = client(HOLDER, MessageType.DECLINE, requested_ip=held, client_id=forged)
    assert policy.handle(decline, NOW + 2).leases == ()
    assert policy.handle(client(OTHER, MessageType.DISCOVER), NOW + 3).reply is None
    # The holder itself may give the address back.
    mine = replace(client(HOLDER, MessageType.RELEASE, client_id=own), ciaddr=held)
    assert policy.handle(mine, NOW + 4).leases[0].state is LeaseState.RELEASED
    assert dora(policy, OTHER, NOW + 5) == held


def test_a_request_from_a_client_without_a_record_binds_nothing() -> None:
    policy = DhcpPolicy(settings(pool=ONE))
    free = IP("198.18.0.100")
    # INIT-REBOOT for a free pool address the server never gave this client: silence (§4.3.2).
    bare = policy.handle(client(ATTACKER, MessageType.REQUEST, requested_ip=free), NOW)
    assert (bare.reply, bare.leases) == (None, ())
    # SELECTING an offer this server never made: NAK, and nothing bound.
    selecting = client(ATTACKER, MessageType.REQUEST, requested_ip=free, server_id=SERVER)
    assert policy.handle(selecting, NOW).leases == ()
    # RENEWING an address it never had: silence.
    assert (
        policy.handle(replace(client(ATTACKER, MessageType.REQUEST), ciaddr=free), NOW).leases == ()
    )
    # An address that is wrong for the network: NAK.
    far = policy.handle(client(ATTACKER, MessageType.REQUEST, requested_ip=IP("10.9.9.9")), NOW)
    assert far.outcome is DhcpOutcome.NAK
    # The address is still there for an honest client.
    assert dora(policy, OTHER, NOW + 1) == free


def test_a_forged_pi_discover_holds_its_address_only_for_the_offer() -> None:
    policy = DhcpPolicy(settings(pool=ONE))
    forged = pi_discover(PiModel.PI4, ATTACKER, "0badf00d", 0xC03114, xid=5)
    d = policy.handle(forged, NOW)
    assert d.reply is not None
    assert d.identity is not None
    assert [(lease.state, lease.expires) for lease in d.leases] == [
        (LeaseState.OFFERED, NOW + OFFER_HOLD)
    ]
    assert dora(policy, OTHER, NOW + OFFER_HOLD + 1) == d.reply.yiaddr


def test_a_real_pi4_is_bound_when_it_requests() -> None:
    policy = DhcpPolicy(settings())
    discover = pi_discover(PiModel.PI4, "dc:a6:32:01:02:03", "1a2b3c4d", 0xC03114, xid=6)
    offer = policy.handle(discover, NOW)
    assert offer.reply is not None
    ack = policy.handle(pi_request(discover, offer.reply), NOW + 1)
    assert ack.outcome is DhcpOutcome.ACK
    assert [(lease.state, lease.expires) for lease in ack.leases] == [
        (LeaseState.BOUND, NOW + 1 + 3600)
    ]


def test_a_pi3_declared_in_the_configuration_is_bound_at_offer() -> None:
    pi3 = "b8:27:eb:00:00:07"
    policy = DhcpPolicy(settings(pool=ONE, bind_at_offer=frozenset({pi3})))
    d = policy.handle(pi_discover(PiModel.PI3BPLUS, pi3, "00000007", 0xA020D3, xid=1), NOW)
    assert d.reply is not None
    assert [(lease.state, lease.expires) for lease in d.leases] == [(LeaseState.BOUND, NOW + 3600)]
    assert policy.handle(client(OTHER, MessageType.DISCOVER), NOW + OFFER_HOLD * 10).reply is None


def test_a_flood_of_new_clients_cannot_take_the_whole_pool() -> None:
    # 100 addresses; 100 DORAs from 100 made-up MACs in one second (200 packets).
    policy = DhcpPolicy(settings(pool=HUNDRED))
    taken = 0
    for i in range(100):
        mac = f"02:66:00:00:00:{i:02x}"
        offer = policy.handle(client(mac, MessageType.DISCOVER, xid=i), NOW + i / 100)
        if offer.reply is None:
            assert offer.reason == policy_mod.GUARDED
            continue
        request = client(
            mac, MessageType.REQUEST, xid=i, requested_ip=offer.reply.yiaddr, server_id=SERVER
        )
        if policy.handle(request, NOW + i / 100).outcome is DhcpOutcome.ACK:
            taken += 1
    assert 0 < taken <= 50
    # Known clients are never held back: a bound client renews, a reserved one gets its address.
    assert renew(policy, "02:66:00:00:00:00", IP("198.18.0.100"), NOW + 2) is DhcpOutcome.ACK
    assert dora(policy, "dc:a6:32:00:00:02", NOW + 2) == IP("198.18.0.12")
    # A minute later, new clients are served again.
    assert policy.handle(client(OTHER, MessageType.DISCOVER), NOW + 62).reply is not None


def test_one_client_cannot_walk_through_the_pool() -> None:
    # DISCOVER, REQUEST, DECLINE, again: each round would quarantine one more address.
    policy = DhcpPolicy(settings(pool=HUNDRED))
    declined = 0
    for i in range(50):
        offer = policy.handle(client(ATTACKER, MessageType.DISCOVER, xid=i), NOW + i / 10)
        if offer.reply is None:
            continue
        ip = offer.reply.yiaddr
        policy.handle(
            client(ATTACKER, MessageType.REQUEST, requested_ip=ip, server_id=SERVER), NOW + i / 10
        )
        d = policy.handle(client(ATTACKER, MessageType.DECLINE, requested_ip=ip), NOW + i / 10)
        declined += len(d.leases)
    assert 0 < declined <= 10


def test_a_flood_of_forged_pis_does_not_forget_the_pi_that_just_booted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy_mod, "_MAX_REMEMBERED_PIS", 8)
    policy = DhcpPolicy(settings(pool=HUNDRED))
    for i in range(7):
        policy.handle(
            pi_discover(PiModel.PI4, f"02:66:00:00:01:{i:02x}", "0", 0xC03114, xid=i), NOW
        )
    real = pi_discover(PiModel.PI4, "02:11:22:33:44:55", "1a2b3c4d", 0xC03114, xid=99)
    offer = policy.handle(real, NOW)
    assert offer.reply is not None
    policy.handle(pi_discover(PiModel.PI4, "02:66:00:00:02:00", "0", 0xC03114, xid=100), NOW)
    # The Pi 4's REQUEST carries neither option 60 nor 97: it is known by its MAC.
    request = pi_request(real, offer.reply)
    bare = replace(request, options=replace(request.options, client_machine_id=None))
    ack = policy.handle(bare, NOW + 1)
    assert ack.outcome is DhcpOutcome.ACK
    assert ack.identity is not None
    assert ack.reply is not None
    assert ack.reply.options.vendor_specific is not None


def test_pi3s_declared_without_an_address_are_the_ones_bound_at_offer(tmp_path: Path) -> None:
    (tmp_path / "piman.yaml").write_text(
        "manager: {address: 198.18.0.1, network: 198.18.0.0/24}\n"
        "dhcp: {pool: 198.18.0.100-198.18.0.199, new_leases_per_minute: 0,"
        " new_leases_per_client: 2}\n"
        "nodes:\n"
        "  - {name: a, mac: 'b8:27:eb:00:00:01', model: pi3b+}\n"
        "  - {name: b, mac: '02:00:00:00:00:02', model: pi3b}\n"
        "  - {name: c, mac: 'b8:27:eb:00:00:03'}\n"
        "  - {name: d, mac: 'dc:a6:32:00:00:04', model: pi4}\n"
        "  - {name: e, mac: 'b8:27:eb:00:00:05', model: pi3b+, ip: 198.18.0.15}\n"
    )
    s = PolicySettings.from_config(load_config(tmp_path / "piman.yaml"))
    assert s.bind_at_offer == {"b8:27:eb:00:00:01", "02:00:00:00:00:02", "b8:27:eb:00:00:03"}
    assert (s.new_leases_per_minute, s.new_leases_per_client) == (0, 2)
