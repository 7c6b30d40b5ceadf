"""Seeded mutation of the captured corpus: bit flips, truncation, splicing and lies about lengths.

:class:`Mutator` turns the real captures of ``corpus/`` into an endless, reproducible stream of
hostile inputs: each is a seed (or two spliced) with one to four mutations applied, some generic
(flip bits, set bytes to boundary values, cut, extend, insert, delete, repeat a span) and some
that know the format: DHCP options that lie about their length, lose their END or repeat; TFTP
requests whose strings lose their NUL, whose options ask for absurd values, whose opcode
changes; HTTP heads with broken lines, huge or repeated headers, other methods and versions.
The same seed always gives the same stream (``random.Random(seed)``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["CORPUS", "Mutator", "seeds"]

CORPUS = Path(__file__).parent / "corpus"

_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


def seeds(kind: str) -> list[bytes]:
    """The captured inputs of ``corpus/<kind>/`` (``dhcp``, ``tftp``, ``agent``), by name."""
    files = sorted((CORPUS / kind).iterdir())
    return [f.read_bytes() for f in files if f.is_file()]


Mutation = Callable[[random.Random, bytearray, Sequence[bytes]], bytearray]


def _flip(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    if data:
        for _i in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    return data


def _set(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    if data:
        data[rng.randrange(len(data))] = rng.choice(_INTERESTING)
    return data


def _truncate(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    return data[: rng.randint(0, len(data))]


def _extend(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    return data + rng.randbytes(rng.choice((1, 4, 64, 600, 1500)))


def _insert(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    i = rng.randint(0, len(data))
    return data[:i] + rng.randbytes(rng.randint(1, 16)) + data[i:]


def _delete(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 32) :]


def _repeat(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    if not data:
        return data
    i = rng.randrange(len(data))
    span = data[i : i + rng.randint(1, 64)]
    return data[:i] + span * rng.randint(2, 20) + data[i:]


def _splice(rng: random.Random, data: bytearray, pool: Sequence[bytes]) -> bytearray:
    other = rng.choice(pool)
    return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]


GENERIC: tuple[Mutation, ...] = (_flip, _set, _truncate, _extend, _insert, _delete, _repeat,
                                 _splice)  # fmt: skip


# -- DHCP: the options area after the magic cookie (offset 240) --------------------------------


def _dhcp_options(data: bytearray) -> list[int]:
    """Offsets of the options (their code byte) as the packet claims them."""
    found, i = [], 240
    while i + 1 < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        found.append(i)
        i += 2 + data[i + 1]
    return found


def _option_length_lie(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    options = _dhcp_options(data)
    if options:
        i = rng.choice(options) + 1
        data[i] = rng.choice((0, 1, 255, (data[i] + 1) % 256, (data[i] - 1) % 256))
    return data


def _option_inject(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    code = rng.choice((1, 3, 6, 12, 15, 43, 50, 51, 53, 54, 55, 57, 60, 61, 77, 82, 93, 97,
                       rng.randrange(256)))  # fmt: skip
    size = rng.choice((0, 1, 2, 4, 16, 255))
    value = bytes([rng.randrange(1, 9)]) if code == 53 and size == 1 else rng.randbytes(size)
    at = rng.choice([*_dhcp_options(data), min(240, len(data))])
    return data[:at] + bytes([code, size]) + value + data[at:]


def _option_end_lost(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    end = data.rfind(b"\xff")
    return data[:end] if end >= 240 else data


def _header_field(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    """op, htype, hlen, hops, flags, ciaddr … : the fixed header's bytes at boundary values."""
    i = rng.choice((0, 1, 2, 3, 10, 11, 12, 16, 20, 24, 28, 44, 108, 236, 237, 238, 239))
    if i < len(data):
        data[i] = rng.choice((*_INTERESTING, rng.randrange(256)))
    return data


DHCP: tuple[Mutation, ...] = (*GENERIC, _option_length_lie, _option_length_lie, _option_inject,
                              _option_inject, _option_end_lost, _header_field)  # fmt: skip


# -- TFTP -------------------------------------------------------------------------------------

_TFTP_OPTIONS = (b"blksize", b"tsize", b"timeout", b"windowsize", b"utimeout", b"BLKSIZE")
_TFTP_VALUES = (b"0", b"1", b"7", b"8", b"512", b"65464", b"65535", b"65536", b"-1", b"255",
                b"256", b"99999999999999999999", b"", b"1e3", b" 512", b"0x10")  # fmt: skip
_TFTP_NAMES = (b"../../../etc/passwd", b"/etc/shadow", b"start4.elf", b"config.txt",
               b"a" * 600, b"dc-a6-32-00-00-01/cmdline.txt", b"\\..\\x", b"", b"%s%n",
               "é".encode(), b"\xff\xfe", b"sub/../../x")  # fmt: skip


def _tftp_opcode(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    if len(data) >= 2:
        data[0:2] = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 255, 65535)).to_bytes(2, "big")
    return data


def _tftp_option(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    pairs = b"".join(
        rng.choice(_TFTP_OPTIONS) + b"\0" + rng.choice(_TFTP_VALUES) + b"\0"
        for _ in range(rng.randint(1, 6))
    )
    return data + pairs


def _tftp_name(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    mode = rng.choice((b"octet", b"netascii", b"NETASCII", b"mail", b"", b"octet\0octet"))
    return bytearray(data[:2] + rng.choice(_TFTP_NAMES) + b"\0" + mode + b"\0")


def _tftp_nul(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    nuls = [i for i, b in enumerate(data) if b == 0 and i >= 2]
    if nuls and rng.random() < 0.5:
        i = rng.choice(nuls)
        return data[:i] + data[i + 1 :]
    i = rng.randint(2, max(2, len(data)))
    return data[:i] + b"\0" + data[i:]


def _tftp_block(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    """An ACK, DATA or ERROR with a block number at a boundary."""
    opcode = rng.choice((3, 4, 5))
    block = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 65535, rng.randrange(65536)))
    tail = rng.choice((b"", b"\0", rng.randbytes(rng.choice((1, 512, 1468))), b"x\0"))
    return bytearray(opcode.to_bytes(2, "big") + block.to_bytes(2, "big") + tail)


TFTP: tuple[Mutation, ...] = (*GENERIC, _tftp_opcode, _tftp_option, _tftp_option, _tftp_name,
                              _tftp_nul, _tftp_block)  # fmt: skip


# -- HTTP request heads -----------------------------------------------------------------------

_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT",
            b"PRI", b"G\x00T", b"", b"get")  # fmt: skip
_TARGETS = (b"/metrics", b"/events", b"/", b"*", b"http://x/metrics",
            b"/metrics?x=" + b"a" * 5000, b"/../../etc/passwd", b"/%00", b"/events#frag", b"",
            b"/metrics/", b"//metrics")  # fmt: skip
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1 extra", b"",
             b"http/1.1")  # fmt: skip
_HEADERS = (
    b"Content-Length: 10",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: 0\r\nContent-Length: 5",
    b"Transfer-Encoding: chunked",
    b"Connection: keep-alive",
    b"Connection: close",
    b"Authorization: Bearer ",
    b"Authorization: Bearer " + b"A" * 9000,
    b"Authorization: Basic YWRtaW46YWRtaW4=",
    b"Accept-Encoding: gzip, deflate, br",
    b"Accept-Encoding: " + b"gzip," * 2000,
    b"X: " + bytes(range(256)),
    b" Folded: header",
    b"NoColonHere",
    b":empty-name",
    b"Host:",
)


def _http_line(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    _head, sep, rest = bytes(data).partition(b"\r\n")
    line = b" ".join((rng.choice(_METHODS), rng.choice(_TARGETS), rng.choice(_VERSIONS)))
    return bytearray(line + (sep or b"\r\n") + rest)


def _http_header(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    end = data.find(b"\r\n\r\n")
    at = end if end >= 0 else len(data)
    return data[:at] + b"\r\n" + rng.choice(_HEADERS) + data[at:]


def _http_crlf(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    choice = rng.randrange(4)
    if choice == 0:
        return bytearray(data.replace(b"\r\n", b"\n"))
    if choice == 1:
        return bytearray(data.replace(b"\r\n\r\n", b"\r\n"))  # a head that never ends
    if choice == 2:
        return data + b"\r\n" * rng.randint(1, 50)
    return data + data  # two requests in one write (pipelining)


def _http_huge(rng: random.Random, data: bytearray, _: Sequence[bytes]) -> bytearray:
    end = data.find(b"\r\n\r\n")
    at = end if end >= 0 else len(data)
    return data[:at] + (b"\r\nX-Pad: " + b"p" * 1000) * rng.randint(1, 40) + data[at:]


HTTP: tuple[Mutation, ...] = (*GENERIC, _http_line, _http_header, _http_header, _http_crlf,
                              _http_huge)  # fmt: skip


class Mutator:
    """An endless, reproducible stream of mutated ``pool`` items."""

    def __init__(self, pool: Sequence[bytes], mutations: Sequence[Mutation], seed: int) -> None:
        if not pool:
            raise ValueError("an empty corpus")
        self.pool = list(pool)
        self.mutations = tuple(mutations)
        self.rng = random.Random(seed)

    def __iter__(self) -> Mutator:
        return self

    def __next__(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.choice(self.pool))
        if rng.random() < 0.05:  # now and then a seed exactly as captured
            return bytes(data)
        for _ in range(rng.randint(1, 4)):
            data = rng.choice(self.mutations)(rng, data, self.pool)
        return bytes(data)
