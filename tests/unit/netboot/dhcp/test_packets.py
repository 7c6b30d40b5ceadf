"""BOOTP/DHCP codec: round-trip tables (value, hex) and fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piman.netboot.dhcp.packets import (
    BOOTREQUEST,
    MAGIC_COOKIE,
    DhcpPacket,
    MalformedPacket,
    MessageType,
    Options,
    decode,
    encode,
    encode_options,
)
from piman.netboot.dhcp.pxe import pi_option43

IP = IPv4Address

# (options, hex of the options area including END)
OPTION_TABLE: list[tuple[Options, str]] = [
    (Options(message_type=MessageType.DISCOVER), "350101ff"),
    (Options(message_type=MessageType.INFORM), "350108ff"),
    (Options(subnet_mask=IP("255.255.255.0")), "0104ffffff00ff"),
    (Options(router=(IP("198.18.0.1"),)), "0304c6120001ff"),
    (Options(dns=(IP("1.1.1.1"), IP("8.8.8.8"))), "06080101010108080808ff"),
    (Options(hostname="rack1-02"), "0c087261636b312d3032ff"),
    (Options(domain_name="lab"), "0f036c6162ff"),
    (Options(broadcast_address=IP("198.18.0.255")), "1c04c61200ffff"),
    (Options(vendor_specific=b"\x06\x01\x03\xff"), "2b04060103ffff"),
    (Options(requested_ip=IP("198.18.0.12")), "3204c612000cff"),
    (Options(lease_time=3600), "330400000e10ff"),
    (Options(server_id=IP("198.18.0.1")), "3604c6120001ff"),
    (Options(parameter_request=(1, 3, 43, 60, 66, 67)), "370601032b3c4243ff"),
    (Options(renewal_time=1800, rebinding_time=3150), "3a04000007083b0400000c4eff"),
    (Options(vendor_class="PXEClient"), "3c09505845436c69656e74ff"),
    (Options(client_id=b"\x01\xdc\xa6\x32\x00\x00\x02"), "3d0701dca632000002ff"),
    (Options(tftp_server="198.18.0.1"), "420a3139382e31382e302e31ff"),
    (Options(bootfile_name="boot.ipxe"), "4309626f6f742e69707865ff"),
    (Options(relay_agent=b"\x01\x02ab"), "520401026162ff"),
    (Options(client_arch=(0, 7)), "5d0400000007ff"),
    (
        Options(client_machine_id=b"\x00" + b"RPi4" + bytes(12)),
        "6111" + "00" + "52506934" + "00" * 12 + "ff",
    ),
    (Options(unknown=((94, b"\x01\x02\x01"), (128, b""))), "5e03010201" + "8000" + "ff"),
    (Options(), "ff"),
]


@pytest.mark.parametrize(("options", "hexdata"), OPTION_TABLE)
def test_options_round_trip_byte_exact(options: Options, hexdata: str) -> None:
    area = encode_options(options)
    assert area.hex() == hexdata
    packet = DhcpPacket(op=BOOTREQUEST, xid=1, chaddr=bytes(6), options=options)
    assert decode(encode(packet)).options == options


def _raw(options_area: bytes, *, hlen: int = 6, op: int = 1) -> bytes:
    header = bytes([op, 1, hlen, 0]) + (0x12345678).to_bytes(4, "big") + bytes(228)
    return header + MAGIC_COOKIE + options_area


def test_header_fields_round_trip() -> None:
    packet = DhcpPacket(
        op=2,
        xid=0xDEADBEEF,
        chaddr=bytes.fromhex("dca632000002"),
        hops=1,
        secs=4,
        flags=0x8000,
        ciaddr=IP("198.18.0.5"),
        yiaddr=IP("198.18.0.12"),
        siaddr=IP("198.18.0.1"),
        giaddr=IP("198.18.1.1"),
        sname=b"manager",
        file=b"bootcode.bin",
        options=Options(message_type=MessageType.ACK),
    )
    data = encode(packet)
    assert len(data) == 300
    back = decode(data)
    assert back == packet
    assert back.mac == "dc:a6:32:00:00:02"
    assert back.broadcast


def test_repeated_options_are_concatenated_and_long_values_split() -> None:
    long_value = bytes(range(256)) + b"x" * 44  # 300 bytes → two instances on the wire
    data = _raw(bytes([200, 2]) + b"ab" + bytes([200, 1]) + b"c" + b"\xff")
    assert decode(data).options.unknown == ((200, b"abc"),)
    area = encode_options(Options(unknown=((201, long_value),)))
    assert area[:2] == bytes([201, 255])
    assert area[257:259] == bytes([201, 45])
    assert decode(_raw(area)).options.unknown == ((201, long_value),)


def test_overloaded_file_field_options_are_read() -> None:
    header = bytearray(_raw(b"")[:236])
    file_area = bytes([60, 9]) + b"PXEClient" + b"\xff"
    header[108 : 108 + len(file_area)] = file_area
    data = bytes(header) + MAGIC_COOKIE + bytes([52, 1, 1, 53, 1, 1, 255])
    packet = decode(data)
    assert packet.options.vendor_class == "PXEClient"
    assert packet.file == b""


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "too short"),
        (b"\x01" * 239, "too short"),
        (_raw(b"\xff")[:236] + b"\x00\x00\x00\x00\xff", "no DHCP magic cookie"),
        (_raw(b"\xff", op=3), "neither BOOTREQUEST"),
        (_raw(b"\xff", hlen=17), "hlen 17"),
        (_raw(b"\x35"), "no length byte"),
        (_raw(b"\x35\x05\x01"), "runs past the end"),
        (_raw(b"\x35\x01\x09\xff"), "unknown message type 9"),
        (_raw(b"\x35\x02\x01\x01\xff"), "message type needs 1 byte"),
        (_raw(b"\x01\x03\xff\xff\xff\xff"), "address needs 4 bytes"),
        (_raw(b"\x03\x05\x01\x02\x03\x04\x05\xff"), "address list of 5 bytes"),
        (_raw(b"\x33\x02\x00\x01\xff"), "32-bit time"),
        (_raw(b"\x5d\x03\x00\x00\x00\xff"), "architecture list"),
        (_raw(b"\x34\x01\x04\xff"), "bad overload"),
    ],
)
def test_malformed_packets_raise_one_exception_type(data: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        decode(data)


def test_malformed_packet_is_a_value_error_and_protocol_error() -> None:
    from piman.errors import ProtocolError

    assert issubclass(MalformedPacket, ValueError)
    assert issubclass(MalformedPacket, ProtocolError)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_malformed_packet(data: bytes) -> None:
    try:
        packet = decode(data)
    except MalformedPacket:
        return
    once = encode(packet)
    assert encode(decode(once)) == once


_option_bytes = st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=40)), max_size=12).map(
    lambda opts: b"".join(bytes([c, len(v)]) + v for c, v in opts) + b"\xff"
)


@settings(max_examples=400, deadline=None)
@given(_option_bytes, st.binary(min_size=236, max_size=236))
def test_well_framed_options_decode_or_raise_and_encoding_is_stable(
    area: bytes, header: bytes
) -> None:
    data = bytes([1]) + header[1:2] + bytes([header[2] % 17]) + header[3:] + MAGIC_COOKIE + area
    try:
        packet = decode(data)
    except MalformedPacket:
        return
    once = encode(packet)
    assert encode(decode(once)) == once
    assert decode(once) == packet


def test_pi_option43_is_byte_exact() -> None:
    # PROTOCOLS.md §1: 06 01 03 · 0a 04 00 50 58 45 · 09 14 00 00 11 "Raspberry Pi Boot" · ff
    expected = bytes.fromhex("0601030a04005058450914000011") + b"Raspberry Pi Boot" + b"\xff"
    assert pi_option43() == expected
    padded = bytes.fromhex("0601030a04005058450917000014") + b"Raspberry Pi Boot   " + b"\xff"
    assert pi_option43(padded=True) == padded


def test_public_names_of_the_dhcp_package() -> None:
    import piman.netboot.dhcp as dhcp

    assert dhcp.__all__ == [
        "Decision",
        "DhcpOutcome",
        "DhcpPacket",
        "DhcpPolicy",
        "Lease",
        "LeaseJournal",
        "LeaseState",
        "LeaseTable",
        "MalformedPacket",
        "MessageType",
        "Options",
        "PiIdentity",
        "PolicySettings",
        "PoolGuard",
        "Reservation",
        "decode",
        "encode",
        "parse_option97",
        "pi_identity",
        "pi_option43",
    ]
    assert all(hasattr(dhcp, name) for name in dhcp.__all__)
