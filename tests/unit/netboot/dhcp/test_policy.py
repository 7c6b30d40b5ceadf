"""DHCP policy: who gets what, driven through DhcpPolicy.handle with explicit time."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from piman.config import load_config
from piman.fleet.models import PiModel
from piman.netboot.dhcp.packets import (
    BOOTREQUEST,
    DhcpPacket,
    MessageType,
    Options,
    decode,
    encode,
    encode_options,
    mac_bytes,
)
from piman.netboot.dhcp.policy import (
    OFFER_HOLD,
    DhcpOutcome,
    DhcpPolicy,
    PolicySettings,
    Reservation,
)
from piman.netboot.dhcp.pxe import parse_option97, pi_option43
from piman.sim.netboot import PI_VENDOR_CLASS, option97, pi_discover, pi_request

IP = IPv4Address
NOW = 1_700_000_000.0
SERVER = IP("198.18.0.1")
PI4_MAC, PI4_SERIAL, PI4_REV = "dc:a6:32:01:02:03", "1a2b3c4d", 0xC03114
PI3_MAC = "b8:27:eb:00:00:07"


def settings(**changes: object) -> PolicySettings:
    base = PolicySettings(
        server_ip=SERVER,
        network=IPv4Network("198.18.0.0/24"),
        pool=(int(IP("198.18.0.100")), int(IP("198.18.0.103"))),
        lease_time=3600,
        router=SERVER,
        dns=(SERVER,),
        reservations={"dc:a6:32:00:00:02": Reservation(IP("198.18.0.12"), "rack1-02")},
        pi_ouis=frozenset({"b8:27:eb", "dc:a6:32", "e4:5f:01", "2c:cf:67"}),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def client(mac: str, mtype: MessageType, xid: int = 7, **opts: object) -> DhcpPacket:
    return DhcpPacket(
        op=BOOTREQUEST,
        xid=xid,
        chaddr=mac_bytes(mac),
        options=Options(message_type=mtype, **opts),  # type: ignore[arg-type]
    )


def dora(policy: DhcpPolicy, mac: str, now: float = NOW) -> IPv4Address:
    offer = policy.handle(client(mac, MessageType.DISCOVER), now)
    assert offer.outcome is DhcpOutcome.OFFER
    assert offer.reply is not None
    request = client(mac, MessageType.REQUEST, requested_ip=offer.reply.yiaddr, server_id=SERVER)
    ack = policy.handle(request, now)
    assert ack.outcome is DhcpOutcome.ACK
    assert ack.reply is not None
    assert ack.reply.yiaddr == offer.reply.yiaddr
    return ack.reply.yiaddr


def test_reserved_client_gets_its_address_without_a_lease_record() -> None:
    policy = DhcpPolicy(settings())
    d = policy.handle(client("dc:a6:32:00:00:02", MessageType.DISCOVER), NOW)
    assert d.reply is not None
    assert d.reply.yiaddr == IP("198.18.0.12")
    assert d.reply.options.hostname == "rack1-02"
    assert d.reply.options.subnet_mask == IP("255.255.255.0")
    assert d.reply.options.lease_time == 3600
    assert d.reply.options.renewal_time == 1800
    assert d.leases == ()
    assert dora(policy, "dc:a6:32:00:00:02") == IP("198.18.0.12")


def test_unknown_clients_get_distinct_pool_addresses_and_keep_them() -> None:
    policy = DhcpPolicy(settings())
    a = dora(policy, "02:00:00:00:00:01")
    b = dora(policy, "02:00:00:00:00:02")
    assert a != b
    assert {a, b} <= {IP("198.18.0.100"), IP("198.18.0.101")}
    assert dora(policy, "02:00:00:00:00:01", NOW + 10) == a


def test_no_pool_means_unknown_clients_get_no_answer() -> None:
    policy = DhcpPolicy(settings(pool=None))
    d = policy.handle(client("02:00:00:00:00:01", MessageType.DISCOVER), NOW)
    assert d.outcome is DhcpOutcome.IGNORED
    assert d.reply is None


def test_pool_exhaustion_then_expired_leases_are_reused_last() -> None:
    policy = DhcpPolicy(settings())
    got = [dora(policy, f"02:00:00:00:00:0{i}") for i in range(4)]
    assert len(set(got)) == 4
    d = policy.handle(client("02:00:00:00:00:09", MessageType.DISCOVER), NOW + 1)
    assert d.outcome is DhcpOutcome.IGNORED
    assert d.reason == "pool exhausted"
    # After the leases expire, the one that expired first is reused.
    later = NOW + 3600 + 1
    assert dora(policy, "02:00:00:00:00:09", later) == got[0]


def test_request_for_a_foreign_address_is_nakked() -> None:
    policy = DhcpPolicy(settings())
    taken = dora(policy, "02:00:00:00:00:01")
    for address in (taken, IP("198.18.0.12"), IP("10.9.9.9")):  # leased, reserved, off the net
        d = policy.handle(
            client("02:00:00:00:00:02", MessageType.REQUEST, requested_ip=address), NOW
        )
        assert d.outcome is DhcpOutcome.NAK
        assert d.reply is not None
        assert d.reply.options.message_type is MessageType.NAK
        assert d.reply.yiaddr == IP(0)
    # A free address of this network, from a client the server has no record of: silence.
    d = policy.handle(
        client("02:00:00:00:00:02", MessageType.REQUEST, requested_ip=IP("198.18.0.50")), NOW
    )
    assert (d.outcome, d.reply, d.leases) == (DhcpOutcome.IGNORED, None, ())


def test_renewal_by_ciaddr_is_acked() -> None:
    policy = DhcpPolicy(settings())
    ip = dora(policy, "02:00:00:00:00:01")
    renew = replace(client("02:00:00:00:00:01", MessageType.REQUEST), ciaddr=ip)
    d = policy.handle(renew, NOW + 1800)
    assert d.outcome is DhcpOutcome.ACK
    assert d.leases[0].expires == NOW + 1800 + 3600


def test_client_choosing_another_server_frees_our_offer() -> None:
    policy = DhcpPolicy(settings())
    offer = policy.handle(client("02:00:00:00:00:01", MessageType.DISCOVER), NOW)
    assert offer.reply is not None
    other = client(
        "02:00:00:00:00:01",
        MessageType.REQUEST,
        requested_ip=IP("198.18.0.200"),
        server_id=IP("198.18.0.254"),
    )
    d = policy.handle(other, NOW)
    assert d.outcome is DhcpOutcome.IGNORED
    assert d.leases[0].state.value == "released"


def test_decline_quarantines_and_release_frees() -> None:
    policy = DhcpPolicy(settings(pool=(int(IP("198.18.0.100")), int(IP("198.18.0.101")))))
    a = dora(policy, "02:00:00:00:00:01")
    d = policy.handle(client("02:00:00:00:00:01", MessageType.DECLINE, requested_ip=a), NOW)
    assert d.reply is None
    assert d.leases[0].state.value == "declined"
    # The declined address is not offered again, to anyone, during the quarantine.
    b = dora(policy, "02:00:00:00:00:01", NOW + 1)
    assert b != a
    nobody = policy.handle(client("02:00:00:00:00:02", MessageType.DISCOVER), NOW + 2)
    assert nobody.outcome is DhcpOutcome.IGNORED
    release = replace(client("02:00:00:00:00:01", MessageType.RELEASE), ciaddr=b)
    assert policy.handle(release, NOW + 3).leases[0].state.value == "released"
    assert dora(policy, "02:00:00:00:00:02", NOW + 4) == b


def test_inform_gets_options_without_an_address() -> None:
    policy = DhcpPolicy(settings())
    inform = replace(client("02:00:00:00:00:01", MessageType.INFORM), ciaddr=IP("198.18.0.40"))
    d = policy.handle(inform, NOW)
    assert d.outcome is DhcpOutcome.INFORM
    assert d.reply is not None
    assert d.reply.options.message_type is MessageType.ACK
    assert d.reply.yiaddr == IP(0)
    assert d.reply.options.lease_time is None
    assert d.reply.options.router == (SERVER,)


def test_pi4_discover_gets_the_pi_reply_byte_exact() -> None:
    policy = DhcpPolicy(settings())
    discover = pi_discover(PiModel.PI4, PI4_MAC, PI4_SERIAL, PI4_REV, xid=0x1234)
    d = policy.handle(decode(encode(discover)), NOW)
    assert d.reply is not None
    assert d.identity is not None
    assert d.identity.model is PiModel.PI4
    assert d.identity.serial == PI4_SERIAL
    opts = d.reply.options
    assert opts.vendor_specific == bytes.fromhex(
        "0601030a0400505845091400001152617370626572727920506920426f6f74ff"
    )
    assert opts.vendor_class == "PXEClient"
    assert opts.client_machine_id == discover.options.client_machine_id
    assert opts.tftp_server == "198.18.0.1"
    assert d.reply.siaddr == SERVER
    # Held for the offer only; bound, for the full lease, when it REQUESTs.
    assert d.leases[0].state.value == "offered"
    assert d.leases[0].expires == NOW + OFFER_HOLD
    # The Pi 4 REQUEST lacks option 60: it still gets the Pi options in the ACK.
    ack = policy.handle(pi_request(discover, d.reply), NOW)
    assert ack.reply is not None
    assert ack.reply.options.vendor_specific == pi_option43()
    assert ack.leases[0].state.value == "bound"
    assert ack.leases[0].expires == NOW + 3600


def test_pi3_that_never_requests_keeps_its_offered_address() -> None:
    # A Pi 3 the configuration declares (nodes[] with its MAC and no address) is bound at OFFER.
    policy = DhcpPolicy(settings(bind_at_offer=frozenset({PI3_MAC})))
    discover = pi_discover(PiModel.PI3BPLUS, PI3_MAC, "00000007", 0xA020D3, xid=1)
    d = policy.handle(discover, NOW)
    assert d.reply is not None
    assert d.identity is not None
    assert d.identity.serial == "00000007"
    pi3_ip = d.reply.yiaddr
    later = NOW + OFFER_HOLD * 10
    others = [dora(policy, f"02:00:00:00:00:0{i}", later) for i in range(3)]
    assert pi3_ip not in others
    assert policy.handle(client("02:00:00:00:00:09", MessageType.DISCOVER), later).reply is None


def test_reply_delay_and_padded_option43_per_class() -> None:
    policy = DhcpPolicy(
        settings(reply_delay={"b8:27:eb": 1.0, "pi5": 0.5}, padded_models=frozenset({"pi3"}))
    )
    pi3 = policy.handle(pi_discover(PiModel.PI3BPLUS, PI3_MAC, "00000007", 0xA020D3, xid=1), NOW)
    assert pi3.delay == 1.0
    assert pi3.reply is not None
    assert pi3.reply.options.vendor_specific == pi_option43(padded=True)
    pi5 = policy.handle(
        pi_discover(PiModel.PI5, "2c:cf:67:00:00:01", "cafe0001", 0xD04170, xid=2), NOW
    )
    assert pi5.delay == 0.5
    assert pi5.reply is not None
    assert pi5.reply.options.vendor_specific == pi_option43()
    plain = policy.handle(client("02:00:00:00:00:01", MessageType.DISCOVER), NOW)
    assert plain.delay == 0.0
    assert plain.reply is not None
    assert plain.reply.options.vendor_specific is None


def test_option93_alone_does_not_make_a_pi() -> None:
    policy = DhcpPolicy(settings())
    x86 = client("02:00:00:00:00:01", MessageType.DISCOVER, client_arch=(0,))
    d = policy.handle(x86, NOW)
    assert d.identity is None
    assert d.reply is not None
    assert d.reply.options.vendor_specific is None


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize(
    ("model", "revision", "expected"),
    [(PiModel.PI4, 0xC03114, PiModel.PI4), (PiModel.PI5, 0xD04170, PiModel.PI5)],
)
def test_option97_both_byte_orders(
    model: PiModel, revision: int, expected: PiModel, big_endian: bool
) -> None:
    value = option97(model, "e4:5f:01:aa:bb:cc", "0badf00d", revision, big_endian=big_endian)
    ident = parse_option97(value)
    assert ident is not None
    assert ident.model is expected
    assert ident.serial == "0badf00d"
    assert ident.revision == revision


def test_option97_magic_identifies_a_pi_with_a_foreign_oui() -> None:
    policy = DhcpPolicy(settings())
    discover = pi_discover(PiModel.PI4, "02:11:22:33:44:55", PI4_SERIAL, PI4_REV, xid=3)
    d = policy.handle(discover, NOW)
    assert d.identity is not None
    assert d.reply is not None
    assert d.reply.options.vendor_specific == pi_option43()


def test_proxy_mode_answers_pis_only_with_boot_options() -> None:
    policy = DhcpPolicy(settings(mode="proxy"))
    discover = pi_discover(PiModel.PI4, PI4_MAC, PI4_SERIAL, PI4_REV, xid=9)
    d = policy.handle(discover, NOW)
    assert d.reply is not None
    assert d.reply.yiaddr == IP(0)
    assert d.leases == ()
    assert d.reply.siaddr == SERVER
    area = encode_options(d.reply.options)
    i = 0
    codes = []
    while area[i] != 255:
        codes.append(area[i])
        i += 2 + area[i + 1]
    assert sorted(codes) == [43, 53, 54, 60, 97]
    assert policy.handle(client("02:00:00:00:00:01", MessageType.DISCOVER), NOW).reply is None
    request = pi_request(discover, d.reply)
    assert policy.handle(request, NOW).reply is None


def test_pxe_clients_get_boot_file_by_architecture() -> None:
    policy = DhcpPolicy(settings(boot_file={0: "undionly.kpxe", 7: "ipxe.efi"}))
    for arch, name in ((0, "undionly.kpxe"), (7, "ipxe.efi")):
        pxe = client(
            "52:54:00:00:00:01",
            MessageType.DISCOVER,
            vendor_class=f"PXEClient:Arch:{arch:05d}:UNDI:002001",
            client_arch=(arch,),
        )
        d = policy.handle(pxe, NOW)
        assert d.reply is not None
        assert d.identity is None
        assert d.reply.file == name.encode()
        assert d.reply.options.bootfile_name == name
        assert d.reply.siaddr == SERVER
        assert d.reply.options.vendor_specific is None
    ipxe = DhcpPolicy(settings(boot_file="boot.ipxe")).handle(
        client("52:54:00:00:00:02", MessageType.DISCOVER, unknown=((77, b"iPXE"),)), NOW
    )
    assert ipxe.reply is not None
    assert ipxe.reply.file == b"boot.ipxe"
    plain = policy.handle(client("02:00:00:00:00:03", MessageType.DISCOVER), NOW)
    assert plain.reply is not None
    assert plain.reply.file == b""
    assert plain.reply.siaddr == IP(0)


def test_pi_vendor_class_constant_is_what_pis_send() -> None:
    assert PI_VENDOR_CLASS == "PXEClient:Arch:00000:UNDI:002001"


def test_settings_from_config_take_nodes_and_hosts_csv(tmp_path: Path) -> None:
    (tmp_path / "hosts.csv").write_text("b8:27:eb:00:00:21,198.18.0.21,pi21\n")
    (tmp_path / "piman.yaml").write_text(
        "manager: {address: 198.18.0.1, network: 198.18.0.0/24}\n"
        "dhcp: {pool: 198.18.0.100-198.18.0.199, hosts_file: hosts.csv, router: 198.18.0.1,\n"
        "       reply_delay: {b8:27:eb: 1s}, option43_padded_models: [pi3b]}\n"
        "nodes: [{name: rack1-02, mac: 'dc:a6:32:00:00:02', ip: 198.18.0.12}]\n"
    )
    s = PolicySettings.from_config(load_config(tmp_path / "piman.yaml"))
    assert s.reservations == {
        "b8:27:eb:00:00:21": Reservation(IP("198.18.0.21"), "pi21"),
        "dc:a6:32:00:00:02": Reservation(IP("198.18.0.12"), "rack1-02"),
    }
    assert s.pool == (int(IP("198.18.0.100")), int(IP("198.18.0.199")))
    assert s.reply_delay == {"b8:27:eb": 1.0}
    assert s.padded_models == frozenset({"pi3b"})
    assert {int(IP("198.18.0.21")), int(IP("198.18.0.12")), int(SERVER)} <= s.excluded()
    policy = DhcpPolicy(s)
    assert dora(policy, "b8:27:eb:00:00:21") == IP("198.18.0.21")


def test_pool_none_in_config_means_no_pool(tmp_path: Path) -> None:
    (tmp_path / "piman.yaml").write_text(
        "manager: {address: 198.18.0.1}\ndhcp: {pool: none, mode: proxy}\n"
    )
    s = PolicySettings.from_config(load_config(tmp_path / "piman.yaml"))
    assert s.pool is None
    assert s.mode == "proxy"


def test_requests_relayed_from_another_network_are_ignored() -> None:
    policy = DhcpPolicy(settings())
    far = replace(client("02:00:00:00:00:01", MessageType.DISCOVER), giaddr=IP("10.1.2.1"))
    assert policy.handle(far, NOW).outcome is DhcpOutcome.IGNORED
    near = replace(far, giaddr=IP("198.18.0.2"))
    assert policy.handle(near, NOW).outcome is DhcpOutcome.OFFER
