"""TFTP wire format (RFC 1350, options RFC 2347): bytes ⇄ frozen dataclasses, no I/O.

``decode(data) -> Packet`` and ``encode(packet) -> bytes``. Every decode failure raises
:class:`MalformedPacket`, and nothing else.

Strings (file names, modes, option names and values, error messages) travel as NUL-terminated
bytes. They are decoded as UTF-8 with ``surrogateescape``, so any byte string round-trips and a
file name maps onto the file system exactly as :func:`os.fsdecode` would map it. Option names
and the transfer mode keep the case the peer used; :meth:`Request.option` looks names up
case-insensitively (RFC 2347 §"Option Format"). A name that contains NUL cannot be encoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from piman.errors import ProtocolError

__all__ = [
    "MAX_BLOCK",
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "MalformedPacket",
    "OAck",
    "Opcode",
    "Packet",
    "Request",
    "decode",
    "encode",
    "encode_data",
    "pack_header",
]

MAX_BLOCK = 0xFFFF
_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class MalformedPacket(ProtocolError, ValueError):
    """Bytes that are not a well-formed TFTP packet."""


class Opcode(IntEnum):
    """Packet types (RFC 1350 §5; OACK RFC 2347)."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    """ERROR packet codes (RFC 1350 appendix; 8 from RFC 2347)."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


Options = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Request:
    """RRQ or WRQ: a file name, a mode and options in the order the client sent them."""

    opcode: Opcode
    filename: str
    mode: str
    options: Options = ()

    def option(self, name: str) -> str | None:
        """The value of an option, name matched case-insensitively; the first one wins."""
        wanted = name.lower()
        for key, value in self.options:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Data:
    """One block of file data; ``block`` is the 16-bit wire number."""

    block: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledgement of block ``block`` (0 acknowledges an OACK)."""

    block: int


@dataclass(frozen=True, slots=True)
class Error:
    """An ERROR packet; ``code`` is kept as sent (codes beyond 8 occur in the wild)."""

    code: int
    message: str


@dataclass(frozen=True, slots=True)
class OAck:
    """Option acknowledgement (RFC 2347): the options the server accepted."""

    options: Options


Packet = Request | Data | Ack | Error | OAck


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"{text!r} contains NUL and cannot travel in a TFTP string")
    return raw


def _strings(body: bytes) -> list[str]:
    """NUL-terminated strings; the body must end with NUL."""
    if not body.endswith(b"\0"):
        raise MalformedPacket("string not NUL-terminated")
    return [_text(part) for part in body[:-1].split(b"\0")]


def decode(data: bytes) -> Packet:
    """Parse one datagram; raises :class:`MalformedPacket` for anything that is not TFTP."""
    if len(data) < 2:
        raise MalformedPacket(f"{len(data)} bytes is too short for a TFTP packet")
    (op,) = _OPCODE.unpack_from(data)
    if op == Opcode.ACK:
        if len(data) != 4:
            raise MalformedPacket(f"ACK of {len(data)} bytes (expected 4)")
        return Ack(_HEADER.unpack(data)[1])
    if op == Opcode.DATA:
        if len(data) < 4:
            raise MalformedPacket("DATA without a block number")
        return Data(_HEADER.unpack_from(data)[1], bytes(data[4:]))
    if op in (Opcode.RRQ, Opcode.WRQ):
        parts = _strings(data[2:])
        if len(parts) < 2 or len(parts) % 2:
            raise MalformedPacket("request needs a file name, a mode and option name/value pairs")
        if not parts[0]:
            raise MalformedPacket("request with an empty file name")
        options = tuple(zip(parts[2::2], parts[3::2], strict=True))
        if any(not name for name, _ in options):
            raise MalformedPacket("request with an empty option name")
        return Request(Opcode(op), parts[0], parts[1], options)
    if op == Opcode.ERROR:
        if len(data) < 5:
            raise MalformedPacket("ERROR without a code and message")
        code = _HEADER.unpack_from(data)[1]
        message = data[4:]
        # Some peers omit the final NUL or pad after it: keep the text up to the first NUL.
        return Error(code, _text(message.split(b"\0", 1)[0]))
    if op == Opcode.OACK:
        parts = _strings(data[2:]) if len(data) > 2 else []
        if len(parts) % 2:
            raise MalformedPacket("OACK with an option name but no value")
        return OAck(tuple(zip(parts[0::2], parts[1::2], strict=True)))
    raise MalformedPacket(f"unknown opcode {op}")


pack_header = _HEADER.pack
"""``pack_header(opcode, number)``: the four bytes in front of a packet, for hot paths that pass
a plain int opcode (an :class:`Opcode` member costs a conversion per call)."""

_DATA = int(Opcode.DATA)


def encode_data(block: int, payload: bytes) -> bytes:
    """A DATA packet (the hot path: no dataclass in between)."""
    return pack_header(_DATA, block & MAX_BLOCK) + payload


def _pairs(options: Options) -> bytes:
    return b"".join(_raw(k) + b"\0" + _raw(v) + b"\0" for k, v in options)


def encode(packet: Packet) -> bytes:
    """Serialise a packet; raises ValueError for fields that cannot travel (NUL, range)."""
    if isinstance(packet, Ack):
        return _HEADER.pack(Opcode.ACK, _block(packet.block))
    if isinstance(packet, Data):
        return _HEADER.pack(Opcode.DATA, _block(packet.block)) + packet.data
    if isinstance(packet, Request):
        if packet.opcode not in (Opcode.RRQ, Opcode.WRQ):
            raise ValueError(f"{packet.opcode!r} is not a request opcode")
        if not packet.filename:
            raise ValueError("empty file name")
        head = _raw(packet.filename) + b"\0" + _raw(packet.mode) + b"\0"
        return _OPCODE.pack(packet.opcode) + head + _pairs(packet.options)
    if isinstance(packet, Error):
        return _HEADER.pack(Opcode.ERROR, _block(packet.code)) + _raw(packet.message) + b"\0"
    if isinstance(packet, OAck):
        return _OPCODE.pack(Opcode.OACK) + _pairs(packet.options)
    raise TypeError(f"not a TFTP packet: {packet!r}")


def _block(value: int) -> int:
    if not 0 <= value <= MAX_BLOCK:
        raise ValueError(f"{value} does not fit in 16 bits")
    return value
