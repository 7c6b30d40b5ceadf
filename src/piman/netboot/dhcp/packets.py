"""BOOTP/DHCP wire format (RFC 951, RFC 2131, RFC 2132): bytes ⇄ frozen dataclasses, no I/O.

``decode(data) -> DhcpPacket`` and ``encode(packet) -> bytes``. Every decode failure raises
:class:`MalformedPacket`, and nothing else. The options piman uses are typed fields of
:class:`Options`; every other option is kept as raw bytes, in the order it came, in
``Options.unknown`` and is written back unchanged.

Normalisation (so that ``encode(decode(x))`` is a fixed point after one pass):

- options that occur more than once are concatenated (RFC 3396); values over 255 bytes are split
  again on encode; pad options are dropped; option 52 (overload) is honoured on decode — options
  found in ``sname``/``file`` join the others — and never written;
- encode writes option 53 first, then the typed options by code, then the unknown ones, then END;
- ``chaddr`` keeps ``hlen`` bytes; ``sname`` and ``file`` are cut at the first NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from ipaddress import IPv4Address
from typing import Any

from piman.errors import ProtocolError

__all__ = [
    "BOOTREPLY",
    "BOOTREQUEST",
    "BROADCAST_FLAG",
    "DhcpPacket",
    "MalformedPacket",
    "MessageType",
    "Options",
    "decode",
    "encode",
    "mac_bytes",
    "mac_text",
]

BOOTREQUEST = 1
BOOTREPLY = 2
BROADCAST_FLAG = 0x8000  # RFC 2131 §2, flags field
MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 §3
ZERO = IPv4Address(0)
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes, RFC 2131 figure 1
_MIN_SIZE = _HEADER.size + len(MAGIC_COOKIE)
_PAD, _END, _OVERLOAD = 0, 255, 52


class MalformedPacket(ProtocolError, ValueError):
    """Bytes that are not a well-formed BOOTP/DHCP message."""


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 §9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


@dataclass(frozen=True, slots=True)
class Options:
    """DHCP options. ``None``/empty means absent. Text options are Latin-1 (byte-exact)."""

    message_type: MessageType | None = None  # 53
    subnet_mask: IPv4Address | None = None  # 1
    router: tuple[IPv4Address, ...] = ()  # 3
    dns: tuple[IPv4Address, ...] = ()  # 6
    hostname: str | None = None  # 12
    domain_name: str | None = None  # 15
    broadcast_address: IPv4Address | None = None  # 28
    vendor_specific: bytes | None = None  # 43 (PXE sub-options for Pis)
    requested_ip: IPv4Address | None = None  # 50
    lease_time: int | None = None  # 51, seconds
    server_id: IPv4Address | None = None  # 54
    parameter_request: tuple[int, ...] | None = None  # 55
    renewal_time: int | None = None  # 58 (T1)
    rebinding_time: int | None = None  # 59 (T2)
    vendor_class: str | None = None  # 60
    client_id: bytes | None = None  # 61
    tftp_server: str | None = None  # 66
    bootfile_name: str | None = None  # 67
    relay_agent: bytes | None = None  # 82 (RFC 3046, kept raw and echoed)
    client_arch: tuple[int, ...] | None = None  # 93 (RFC 4578, 16-bit types)
    client_machine_id: bytes | None = None  # 97 (RFC 4578; Pi 4/5 identity)
    unknown: tuple[tuple[int, bytes], ...] = field(default=())


# code → (field name, kind). Kinds: ip, ips, str, bytes, u32, u8s, u16s, mtype.
_TYPED: dict[int, tuple[str, str]] = {
    53: ("message_type", "mtype"),
    1: ("subnet_mask", "ip"),
    3: ("router", "ips"),
    6: ("dns", "ips"),
    12: ("hostname", "str"),
    15: ("domain_name", "str"),
    28: ("broadcast_address", "ip"),
    43: ("vendor_specific", "bytes"),
    50: ("requested_ip", "ip"),
    51: ("lease_time", "u32"),
    54: ("server_id", "ip"),
    55: ("parameter_request", "u8s"),
    58: ("renewal_time", "u32"),
    59: ("rebinding_time", "u32"),
    60: ("vendor_class", "str"),
    61: ("client_id", "bytes"),
    66: ("tftp_server", "str"),
    67: ("bootfile_name", "str"),
    82: ("relay_agent", "bytes"),
    93: ("client_arch", "u16s"),
    97: ("client_machine_id", "bytes"),
}
_ENCODE_ORDER = [53, *sorted(c for c in _TYPED if c != 53)]


def mac_text(raw: bytes) -> str:
    """``b"\\xdc\\xa6\\x32..."`` → ``"dc:a6:32:…"``."""
    return raw.hex(":")


def mac_bytes(mac: str) -> bytes:
    """``"dc:a6:32:00:00:02"`` → 6 bytes."""
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


@dataclass(frozen=True, slots=True)
class DhcpPacket:
    """One BOOTP/DHCP message (RFC 2131 §2)."""

    op: int  # BOOTREQUEST or BOOTREPLY
    xid: int
    chaddr: bytes  # hlen bytes: the client's hardware address
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    sname: bytes = b""
    file: bytes = b""
    options: Options = field(default_factory=Options)

    @property
    def mac(self) -> str:
        return mac_text(self.chaddr)

    @property
    def message_type(self) -> MessageType | None:
        return self.options.message_type

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)


# --- decoding -----------------------------------------------------------------------------------


def _scan(data: bytes, out: dict[int, bytearray], where: str) -> None:
    """Collect options of one area into ``out`` (insertion order = first occurrence)."""
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == _PAD:
            i += 1
            continue
        if code == _END:
            return
        if i + 1 >= n:
            raise MalformedPacket(f"option {code} in {where} has no length byte")
        length = data[i + 1]
        end = i + 2 + length
        if end > n:
            raise MalformedPacket(f"option {code} in {where} runs past the end ({length} bytes)")
        out.setdefault(code, bytearray()).extend(data[i + 2 : end])
        i = end
    # A missing END is tolerated (some clients forget it).


def _ip(code: int, value: bytes) -> IPv4Address:
    if len(value) != 4:
        raise MalformedPacket(f"option {code}: an address needs 4 bytes, got {len(value)}")
    return IPv4Address(value)


def _typed(code: int, kind: str, value: bytes) -> Any:
    if kind == "ip":
        return _ip(code, value)
    if kind == "ips":
        if not value or len(value) % 4:
            raise MalformedPacket(f"option {code}: address list of {len(value)} bytes")
        return tuple(IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))
    if kind == "str":
        return value.decode("latin-1")
    if kind == "bytes":
        return bytes(value)
    if kind == "u32":
        if len(value) != 4:
            raise MalformedPacket(f"option {code}: a 32-bit time needs 4 bytes, got {len(value)}")
        return int.from_bytes(value, "big")
    if kind == "u8s":
        return tuple(value)
    if kind == "u16s":
        if not value or len(value) % 2:
            raise MalformedPacket(f"option {code}: architecture list of {len(value)} bytes")
        return tuple(int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2))
    # mtype
    if len(value) != 1:
        raise MalformedPacket(f"option 53: message type needs 1 byte, got {len(value)}")
    try:
        return MessageType(value[0])
    except ValueError:
        raise MalformedPacket(f"option 53: unknown message type {value[0]}") from None


def decode(data: bytes) -> DhcpPacket:
    """Parse one UDP payload; raises :class:`MalformedPacket` on anything not DHCP."""
    if len(data) < _MIN_SIZE:
        raise MalformedPacket(f"{len(data)} bytes is too short for DHCP (at least {_MIN_SIZE})")
    (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file) = (
        _HEADER.unpack_from(data)
    )
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"op {op} is neither BOOTREQUEST nor BOOTREPLY")
    if hlen > 16:
        raise MalformedPacket(f"hlen {hlen} is larger than chaddr (16)")
    if data[_HEADER.size : _MIN_SIZE] != MAGIC_COOKIE:
        raise MalformedPacket("no DHCP magic cookie")
    raw: dict[int, bytearray] = {}
    _scan(data[_MIN_SIZE:], raw, "options")
    overload = raw.pop(_OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedPacket(f"option 52: bad overload value {bytes(overload).hex()}")
        if overload[0] & 1:
            _scan(file, raw, "file")
            file = b""
        if overload[0] & 2:
            _scan(sname, raw, "sname")
            sname = b""
        raw.pop(_OVERLOAD, None)
    typed: dict[str, Any] = {}
    unknown: list[tuple[int, bytes]] = []
    for code, value in raw.items():
        spec = _TYPED.get(code)
        if spec is None:
            unknown.append((code, bytes(value)))
        else:
            typed[spec[0]] = _typed(code, spec[1], bytes(value))
    return DhcpPacket(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        htype=htype,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=IPv4Address(ci),
        yiaddr=IPv4Address(yi),
        siaddr=IPv4Address(si),
        giaddr=IPv4Address(gi),
        sname=sname.split(b"\0", 1)[0],
        file=file.split(b"\0", 1)[0],
        options=Options(**typed, unknown=tuple(unknown)),
    )


# --- encoding -----------------------------------------------------------------------------------


def _value_bytes(code: int, kind: str, value: Any) -> bytes:
    if kind == "ip":
        return bytes(value.packed)
    if kind == "ips":
        return b"".join(a.packed for a in value)
    if kind == "str":
        return str(value).encode("latin-1")
    if kind == "u32":
        return int(value).to_bytes(4, "big")
    if kind == "u8s":
        return bytes(value)
    if kind == "u16s":
        return b"".join(int(v).to_bytes(2, "big") for v in value)
    if kind == "mtype":
        return bytes([int(value)])
    return bytes(value)


def _put(out: bytearray, code: int, value: bytes) -> None:
    """Append one option; long values are split into several instances (RFC 3396)."""
    if not value:
        out += bytes((code, 0))
        return
    for i in range(0, len(value), 255):
        chunk = value[i : i + 255]
        out += bytes((code, len(chunk)))
        out += chunk


def encode_options(options: Options) -> bytes:
    """The options area (without cookie), END included."""
    out = bytearray()
    for code in _ENCODE_ORDER:
        name, kind = _TYPED[code]
        value = getattr(options, name)
        if value is None or (kind == "ips" and not value):
            continue
        _put(out, code, _value_bytes(code, kind, value))
    for code, value in options.unknown:
        _put(out, code, value)
    out.append(_END)
    return bytes(out)


def encode(packet: DhcpPacket) -> bytes:
    """The UDP payload of ``packet`` (at least 300 bytes, as BOOTP relays expect)."""
    if len(packet.chaddr) > 16 or len(packet.sname) > 64 or len(packet.file) > 128:
        raise ValueError("chaddr, sname or file is too long")
    header = _HEADER.pack(
        packet.op,
        packet.htype,
        len(packet.chaddr),
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        packet.ciaddr.packed,
        packet.yiaddr.packed,
        packet.siaddr.packed,
        packet.giaddr.packed,
        packet.chaddr,
        packet.sname,
        packet.file,
    )
    body = header + MAGIC_COOKIE + encode_options(packet.options)
    return body.ljust(300, b"\0")
