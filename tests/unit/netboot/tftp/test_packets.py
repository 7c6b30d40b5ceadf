"""TFTP codec: round-trip tables against hand-written wire bytes, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piman.netboot.tftp.packets import (
    Ack,
    Data,
    Error,
    MalformedPacket,
    OAck,
    Opcode,
    Packet,
    Request,
    decode,
    encode,
    encode_data,
)

TABLE: list[tuple[Packet, str]] = [
    (Request(Opcode.RRQ, "bootcode.bin", "octet"), "0001 626f6f74636f64652e62696e00 6f6374657400"),
    (
        Request(Opcode.RRQ, "1234abcd/start4.elf", "octet", (("tsize", "0"), ("blksize", "1024"))),
        "0001 31323334616263642f7374617274342e656c6600 6f6374657400"
        " 7473697a650030 00 626c6b73697a6500 3130323400",
    ),
    (Request(Opcode.WRQ, "f", "netascii"), "0002 6600 6e65746173636969 00"),
    (Data(1, b"abc"), "0003 0001 616263"),
    (Data(65535, b""), "0003 ffff"),
    (Ack(0), "0004 0000"),
    (Ack(65535), "0004 ffff"),
    (Error(0, "Early terminate"), "0005 0000 4561726c79207465726d696e61746500"),
    (Error(8, ""), "0005 0008 00"),
    (
        OAck((("blksize", "1468"), ("tsize", "30000000"))),
        "0006 626c6b73697a6500 3134363800 7473697a6500 333030303030303000",
    ),
    (OAck(()), "0006"),
]


@pytest.mark.parametrize(("packet", "wire"), TABLE)
def test_round_trip_table(packet: Packet, wire: str) -> None:
    raw = bytes.fromhex(wire.replace(" ", ""))
    assert encode(packet) == raw
    assert decode(raw) == packet


def test_encode_data_matches_dataclass_encoding_and_wraps_block_numbers() -> None:
    assert encode_data(7, b"x") == encode(Data(7, b"x"))
    assert encode_data(65536, b"") == encode(Data(0, b""))


def test_option_lookup_is_case_insensitive() -> None:
    request = decode(bytes.fromhex("0001") + b"f\0OCTET\0BLKSIZE\x001468\0")
    assert isinstance(request, Request)
    assert request.option("blksize") == "1468"
    assert request.mode == "OCTET"


def test_non_utf8_file_names_round_trip() -> None:
    raw = bytes.fromhex("0001") + b"caf\xe9\0octet\0"
    assert encode(decode(raw)) == raw


def test_error_without_final_nul_is_accepted() -> None:
    assert decode(bytes.fromhex("0005 0000".replace(" ", "")) + b"stop") == Error(0, "stop")


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"\x00",
        b"\x00\x07abc",  # unknown opcode
        b"\x00\x04\x00",  # short ACK
        b"\x00\x04\x00\x01\x00",  # long ACK
        b"\x00\x03\x00",  # DATA without block
        b"\x00\x01file\0",  # no mode
        b"\x00\x01file\0octet",  # mode not terminated
        b"\x00\x01\0octet\0",  # empty file name
        b"\x00\x01f\0octet\0blksize\0",  # option without value
        b"\x00\x01f\0octet\0\x001\0",  # empty option name
        b"\x00\x05\x00",  # ERROR too short
        b"\x00\x06blksize\0",  # OACK option without value
    ],
)
def test_malformed_packets_raise_malformed_packet(wire: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode(wire)


def test_encode_refuses_nul_in_strings_and_out_of_range_blocks() -> None:
    with pytest.raises(ValueError, match="NUL"):
        encode(Request(Opcode.RRQ, "a\0b", "octet"))
    with pytest.raises(ValueError, match="16 bits"):
        encode(Ack(65536))


# Datagrams that get past the opcode: a known or unknown opcode, then random bytes or a run of
# NUL-terminated strings (what requests and OACKs are made of).
_strings = st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"")), max_size=6).map(
    lambda parts: b"".join(part + b"\0" for part in parts)
)
_datagrams = st.binary(max_size=600) | st.builds(
    lambda op, body: op.to_bytes(2, "big") + body,
    st.integers(0, 8) | st.integers(0, 65535),
    st.binary(max_size=600) | _strings,
)


@given(_datagrams)
def test_a_decoded_datagram_encodes_back_to_its_own_bytes(data: bytes) -> None:
    """Decoding loses nothing but what follows an ERROR message's NUL; anything shorter than an
    opcode or with an opcode outside 1-6 is refused."""
    try:
        packet = decode(data)
    except MalformedPacket:
        return
    assert len(data) >= 2
    assert 1 <= int.from_bytes(data[:2], "big") <= 6
    if isinstance(packet, Error):
        assert encode(packet) == data[:4] + data[4:].split(b"\0", 1)[0] + b"\0"
    else:
        assert encode(packet) == data
    assert decode(encode(packet)) == packet


@given(st.binary(max_size=1) | st.builds(
    lambda op, body: op.to_bytes(2, "big") + body,
    st.sampled_from([0, 7, 8, 255, 0x0100, 65535]),
    st.binary(max_size=40),
))  # fmt: skip
def test_datagrams_without_a_tftp_opcode_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedPacket):
        decode(data)


@given(st.integers(0, 65535), st.binary(max_size=64) | st.binary(min_size=500, max_size=1500))
def test_any_data_and_ack_datagram_decodes_to_its_fields(block: int, payload: bytes) -> None:
    header = block.to_bytes(2, "big")
    assert decode(b"\x00\x03" + header + payload) == Data(block, payload)
    assert decode(b"\x00\x04" + header) == Ack(block)
    if payload:
        with pytest.raises(MalformedPacket, match="ACK of"):
            decode(b"\x00\x04" + header + payload)


_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
_name = _text.filter(bool)
_options = st.lists(st.tuples(_name, _text), max_size=5).map(tuple)
_blocks = st.integers(0, 65535)
_packets = st.one_of(
    st.builds(Request, st.sampled_from([Opcode.RRQ, Opcode.WRQ]), _name, _text, _options),
    st.builds(Data, _blocks, st.binary(max_size=1500)),
    st.builds(Ack, _blocks),
    st.builds(Error, _blocks, _text),
    st.builds(OAck, _options),
)


@given(_packets)
def test_every_encodable_packet_decodes_to_itself(packet: Packet) -> None:
    assert decode(encode(packet)) == packet
