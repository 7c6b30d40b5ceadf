"""The DHCP and TFTP codecs and the configuration loader under hypothesis, at the fuzz profile's
counts (``tests/fuzz/conftest.py``: a few hundred examples in ``dev``, thousands in ``ci``).

The properties say what the result must be, not only that nothing else was raised:

- a packet built from any field values encodes and decodes back to itself (round trip);
- any datagram (random bytes, well-framed garbage, mutated captures of real clients) either
  decodes to a packet whose fields are the bytes at their places in the datagram, and which is a
  fixed point of encode/decode, or is refused with the codec's one exception type and one of
  the reasons it documents;
- any text either loads or is refused with a :class:`ConfigError` whose every problem is one
  line naming the file; a valid configuration with one value replaced by junk is refused with
  a problem at that field, or loads with that field (what was replaced is what changed);
- nodes written with any valid names, MAC spellings and addresses load as those nodes.

The unit tests (``tests/unit``) keep their own smaller counts; these run with the fuzz suite.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from piman.config import parse_config
from piman.errors import ConfigError
from piman.netboot.dhcp import packets as dhcp
from piman.netboot.tftp import packets as tftp
from tests.fuzz.conftest import budget
from tests.fuzz.mutate import CORPUS, DHCP, GENERIC, TFTP, Mutator, seeds

PLAN = budget()

Report = Callable[[str], None]


def _reason(message: str, reasons: dict[str, str]) -> str:
    """The documented reason ``message`` gives (the test fails on any other message)."""
    for name, pattern in reasons.items():
        if re.search(pattern, message):
            return name
    raise AssertionError(f"an undocumented refusal: {message!r}")


def _mutated(pool: list[bytes], mutations: Any) -> st.SearchStrategy[bytes]:
    """A capture with one to four mutations, chosen by a seed hypothesis draws."""
    return st.integers(0, 2**64 - 1).map(lambda seed: next(Mutator(pool, mutations, seed)))


# -- DHCP ---------------------------------------------------------------------------------------

# The options the codec types (RFC 2132 codes); every other code travels as raw bytes.
TYPED_CODES = frozenset(
    {1, 3, 6, 12, 15, 28, 43, 50, 51, 53, 54, 55, 58, 59, 60, 61, 66, 67, 82, 93, 97}
)
_UNTYPED = sorted(set(range(1, 255)) - TYPED_CODES - {52})  # 52: overload, never kept
_ip = st.integers(0, 2**32 - 1).map(IPv4Address)
_ips = st.lists(_ip, max_size=4).map(tuple)
_latin = st.text(st.characters(max_codepoint=255), max_size=20)
_blob = st.binary(max_size=20)
# An option value past 255 bytes travels split in several (RFC 3396) and is joined again.
_long = st.binary(min_size=256, max_size=600)
_u32 = st.integers(0, 2**32 - 1)
_no_nul = st.binary(max_size=64).map(lambda b: b.replace(b"\0", b"\1"))


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


_options = st.builds(
    dhcp.Options,
    message_type=_maybe(st.sampled_from(dhcp.MessageType)),
    subnet_mask=_maybe(_ip),
    router=_ips,
    dns=_ips,
    hostname=_maybe(_latin),
    domain_name=_maybe(_latin),
    broadcast_address=_maybe(_ip),
    vendor_specific=_maybe(_blob | _long),
    requested_ip=_maybe(_ip),
    lease_time=_maybe(_u32),
    server_id=_maybe(_ip),
    parameter_request=_maybe(st.binary(max_size=20).map(tuple)),
    renewal_time=_maybe(_u32),
    rebinding_time=_maybe(_u32),
    vendor_class=_maybe(_latin),
    client_id=_maybe(_blob),
    tftp_server=_maybe(_latin),
    bootfile_name=_maybe(_latin),
    relay_agent=_maybe(_blob),
    client_arch=_maybe(st.lists(st.integers(0, 65535), min_size=1, max_size=8).map(tuple)),
    client_machine_id=_maybe(_blob),
    unknown=st.lists(
        st.tuples(st.sampled_from(_UNTYPED), _blob | _long),
        max_size=3,
        unique_by=lambda option: option[0],
    ).map(tuple),
)
_dhcp_packets = st.builds(
    dhcp.DhcpPacket,
    op=st.sampled_from([dhcp.BOOTREQUEST, dhcp.BOOTREPLY]),
    xid=_u32,
    chaddr=st.binary(max_size=16),
    htype=st.integers(0, 255),
    hops=st.integers(0, 255),
    secs=st.integers(0, 65535),
    flags=st.integers(0, 65535),
    ciaddr=_ip,
    yiaddr=_ip,
    siaddr=_ip,
    giaddr=_ip,
    sname=_no_nul,
    file=st.binary(max_size=128).map(lambda b: b.replace(b"\0", b"\1")),
    options=_options,
)

DHCP_REASONS = {
    "short": r"^\d+ bytes is too short for DHCP",
    "op": r"^op \d+ is neither BOOTREQUEST nor BOOTREPLY$",
    "hlen": r"^hlen \d+ is larger than chaddr",
    "cookie": r"^no DHCP magic cookie$",
    "no length": r"^option \d+ in (options|file|sname) has no length byte$",
    "overrun": r"^option \d+ in (options|file|sname) runs past the end",
    "address": r"^option \d+: an address needs 4 bytes, got \d+$",
    "address list": r"^option \d+: address list of \d+ bytes$",
    "time": r"^option \d+: a 32-bit time needs 4 bytes, got \d+$",
    "arch": r"^option 93: architecture list of \d+ bytes$",
    "type size": r"^option 53: message type needs 1 byte, got \d+$",
    "type": r"^option 53: unknown message type \d+$",
    "overload": r"^option 52: bad overload value",
}

# Options areas as the RFC frames them (code, length, value … END), values of any size.
_option_areas = st.lists(st.tuples(st.integers(1, 254), st.binary(max_size=40)), max_size=12).map(
    lambda opts: b"".join(bytes([c, len(v)]) + v for c, v in opts) + b"\xff"
)
_framed = st.builds(
    lambda head, area: bytes([1 + head[0] % 2]) + head[1:2] + bytes([head[2] % 17]) + head[3:236]
    + dhcp.MAGIC_COOKIE + area,
    st.binary(min_size=236, max_size=236),
    _option_areas,
)  # fmt: skip
_dhcp_datagrams = (
    st.binary(max_size=600)
    | _framed
    | _mutated(seeds("dhcp"), DHCP)
    | _dhcp_packets.map(dhcp.encode)
)


def _check_dhcp_fields(data: bytes, packet: dhcp.DhcpPacket) -> None:
    """The decoded header is the datagram's bytes at their RFC 2131 places."""
    assert packet.op == data[0]
    assert packet.htype == data[1]
    assert len(packet.chaddr) == data[2]
    assert packet.chaddr == data[28 : 28 + data[2]]
    assert packet.hops == data[3]
    assert packet.xid == int.from_bytes(data[4:8], "big")
    assert packet.secs == int.from_bytes(data[8:10], "big")
    assert packet.flags == int.from_bytes(data[10:12], "big")
    assert [a.packed for a in (packet.ciaddr, packet.yiaddr, packet.siaddr, packet.giaddr)] == [
        data[12:16],
        data[16:20],
        data[20:24],
        data[24:28],
    ]
    assert data[236:240] == dhcp.MAGIC_COOKIE
    # sname and file: up to their first NUL, or emptied when option 52 moved options there.
    assert packet.sname in (data[44:108].split(b"\0", 1)[0], b"")
    assert packet.file in (data[108:236].split(b"\0", 1)[0], b"")


def _longest_value(options: dhcp.Options) -> int:
    """The size of the longest option value (over 255: it travels split in several)."""
    sizes = [len(v) for _, v in options.unknown]
    for name in dhcp.Options.__dataclass_fields__:
        value = getattr(options, name)
        if isinstance(value, bytes | str):
            sizes.append(len(value))
        elif isinstance(value, tuple) and value and isinstance(value[0], IPv4Address):
            sizes.append(4 * len(value))
    return max(sizes, default=0)


def test_dhcp_packets_round_trip(fuzz_report: Report) -> None:
    tried: Counter[str] = Counter()

    @PLAN.hypothesis(0.5)
    @given(_dhcp_packets)
    def round_trip(packet: dhcp.DhcpPacket) -> None:
        data = dhcp.encode(packet)
        assert len(data) >= 300
        assert dhcp.decode(data) == packet
        _check_dhcp_fields(data, packet)
        tried["packets"] += 1
        tried["with a value split"] += _longest_value(packet.options) > 255

    round_trip()
    fuzz_report(f"fuzz dhcp codec round trip: {dict(tried)}")
    assert tried["packets"] >= 50


def test_any_dhcp_datagram_decodes_to_its_own_fields_or_is_refused_with_a_reason(
    fuzz_report: Report,
) -> None:
    tried: Counter[str] = Counter()

    @PLAN.hypothesis(0.6)
    @given(_dhcp_datagrams)
    def decode_or_refuse(data: bytes) -> None:
        try:
            packet = dhcp.decode(data)
        except dhcp.MalformedPacket as err:
            tried[_reason(str(err), DHCP_REASONS)] += 1
            return
        tried["decoded"] += 1
        _check_dhcp_fields(data, packet)
        once = dhcp.encode(packet)
        assert dhcp.decode(once) == packet  # what it decoded to is what it encodes to
        assert dhcp.encode(dhcp.decode(once)) == once

    decode_or_refuse()
    fuzz_report(f"fuzz dhcp codec decode: {sum(tried.values())} datagrams, {dict(tried)}")
    assert tried["decoded"] > 0


_DHCP_KINDS = {
    "discover": 1,
    "offer": 2,
    "request": 3,
    "decline": 4,
    "ack": 5,
    "nak": 6,
    "release": 7,
    "inform": 8,
    "bootp": None,
}  # as corpus/capture.py names them


@pytest.mark.parametrize("path", sorted((CORPUS / "dhcp").iterdir()), ids=lambda p: p.name)
def test_every_dhcp_capture_decodes_as_what_it_was(path: Any) -> None:
    data = path.read_bytes()
    packet = dhcp.decode(data)
    kind = path.name.split("-")[1]
    assert packet.message_type == _DHCP_KINDS[kind]
    assert packet.op == (dhcp.BOOTREPLY if kind in ("offer", "ack", "nak") else dhcp.BOOTREQUEST)
    assert dhcp.decode(dhcp.encode(packet)) == packet


# -- TFTP ---------------------------------------------------------------------------------------

TFTP_REASONS = {
    "short": r"^\d+ bytes is too short for a TFTP packet$",
    "ack size": r"^ACK of \d+ bytes \(expected 4\)$",
    "data": r"^DATA without a block number$",
    "nul": r"^string not NUL-terminated$",
    "request parts": r"^request needs a file name, a mode and option name/value pairs$",
    "empty name": r"^request with an empty file name$",
    "empty option": r"^request with an empty option name$",
    "error": r"^ERROR without a code and message$",
    "oack": r"^OACK with an option name but no value$",
    "opcode": r"^unknown opcode \d+$",
}
_KIND = {1: tftp.Request, 2: tftp.Request, 3: tftp.Data, 4: tftp.Ack, 5: tftp.Error, 6: tftp.OAck}
_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
_name = _text.filter(bool)
_tftp_options = st.lists(st.tuples(_name, _text), max_size=5).map(tuple)
_blocks = st.integers(0, 65535)
_tftp_packets = st.one_of(
    st.builds(tftp.Request, st.sampled_from([tftp.Opcode.RRQ, tftp.Opcode.WRQ]), _name, _text,
              _tftp_options),
    st.builds(tftp.Data, _blocks, st.binary(max_size=1500)),
    st.builds(tftp.Ack, _blocks),
    st.builds(tftp.Error, _blocks, _text),
    st.builds(tftp.OAck, _tftp_options),
)  # fmt: skip
_tftp_datagrams = (
    st.binary(max_size=600)
    | _mutated(seeds("tftp"), TFTP)
    | _tftp_packets.map(tftp.encode)
    | st.builds(lambda op, body: op.to_bytes(2, "big") + body, st.integers(0, 7),
                st.binary(max_size=80))
)  # fmt: skip


def _text_at(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _check_tftp_fields(data: bytes, packet: tftp.Packet) -> None:
    """The decoded packet is the datagram's opcode, numbers and strings (RFC 1350, 2347)."""
    opcode = int.from_bytes(data[:2], "big")
    assert type(packet) is _KIND[opcode]
    if isinstance(packet, tftp.Request):
        assert packet.opcode == opcode
        name, mode, *rest = data[2:-1].split(b"\0")
        assert packet.filename == _text_at(name) != ""
        assert packet.mode == _text_at(mode)
        assert [x for kv in packet.options for x in kv] == [_text_at(r) for r in rest]
        assert tftp.encode(packet) == data  # nothing lost
    elif isinstance(packet, tftp.Data):
        assert packet.block == int.from_bytes(data[2:4], "big")
        assert packet.data == data[4:]
    elif isinstance(packet, tftp.Ack):
        assert len(data) == 4
        assert packet.block == int.from_bytes(data[2:4], "big")
    elif isinstance(packet, tftp.Error):
        assert packet.code == int.from_bytes(data[2:4], "big")
        assert packet.message == _text_at(data[4:].split(b"\0", 1)[0])
    else:
        assert tftp.encode(packet) == data


def test_tftp_packets_round_trip(fuzz_report: Report) -> None:
    tried: Counter[str] = Counter()

    @PLAN.hypothesis()
    @given(_tftp_packets)
    def round_trip(packet: tftp.Packet) -> None:
        data = tftp.encode(packet)
        assert tftp.decode(data) == packet
        _check_tftp_fields(data, packet)
        tried[type(packet).__name__] += 1

    round_trip()
    fuzz_report(f"fuzz tftp codec round trip: {sum(tried.values())} packets, {dict(tried)}")


def test_any_tftp_datagram_decodes_to_its_own_fields_or_is_refused_with_a_reason(
    fuzz_report: Report,
) -> None:
    tried: Counter[str] = Counter()

    @PLAN.hypothesis()
    @given(_tftp_datagrams)
    def decode_or_refuse(data: bytes) -> None:
        try:
            packet = tftp.decode(data)
        except tftp.MalformedPacket as err:
            tried[_reason(str(err), TFTP_REASONS)] += 1
            return
        tried[type(packet).__name__] += 1
        _check_tftp_fields(data, packet)
        assert tftp.decode(tftp.encode(packet)) == packet

    decode_or_refuse()
    fuzz_report(f"fuzz tftp codec decode: {sum(tried.values())} datagrams, {dict(tried)}")
    assert tried["Request"] > 0


@pytest.mark.parametrize("path", sorted((CORPUS / "tftp").iterdir()), ids=lambda p: p.name)
def test_every_tftp_capture_decodes_as_what_it_was(path: Any) -> None:
    packet = tftp.decode(path.read_bytes())
    kind = {"rrq": 1, "wrq": 2, "data": 3, "ack": 4, "error": 5, "oack": 6}[path.name.split("-")[0]]
    assert type(packet) is _KIND[kind]
    _check_tftp_fields(path.read_bytes(), packet)


# -- the configuration loader -----------------------------------------------------------------

SOURCE = "fuzz.yaml"
GOOD = """\
manager:
  address: 198.18.0.1
  interface: eth1
  network: 198.18.0.0/24
  data_dir: /tmp/piman-fuzz
  http: "127.0.0.1:8000"
dhcp: {mode: authoritative, pool: 198.18.0.100-198.18.0.199, lease_time: 1h, router: 198.18.0.1}
tftp: {enabled: true, max_transfers: 64, retransmit_timeout: 1s}
switches:
  - name: rack1
    address: 198.18.0.254
    uplink_port: 24
    snmp: {version: 3, user: piman, auth: {protocol: sha256, key: secret1234}}
nodes:
  - {name: rack1-02, switch: rack1, port: 2, mac: "DC-A6-32-00-00-02", ip: 198.18.0.12, model: pi4}
  - {name: lab-pi, ip: 10.0.0.7, agent_url: "http://10.0.0.7:9110/metrics"}
monitoring:
  scrape_interval: 15s
  rules: [{alert: NodeDown, expr: up == 0, for: 1m, labels: {severity: critical}}]
"""


def _check_refusal(err: ConfigError) -> list[str]:
    """Every problem is one line that names the file; the paths of the problems."""
    assert err.problems, "a refusal without a reason"
    for problem in err.problems:
        line = str(problem)
        assert "\n" not in line, line
        assert line.startswith(f"{SOURCE}: "), line
        assert problem.message.strip(), line
        assert "Traceback" not in line
    return [p.path for p in err.problems]


_yaml_junk = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
_good_mutated = _mutated([GOOD.encode()], GENERIC).map(lambda b: b.decode("latin-1"))


def test_any_text_loads_or_is_refused_with_one_line_per_problem(fuzz_report: Report) -> None:
    tried: Counter[str] = Counter()

    @PLAN.hypothesis()
    @given(_yaml_junk | _good_mutated)
    def load(text: str) -> None:
        try:
            parse_config(text, SOURCE)
        except ConfigError as err:
            _check_refusal(err)
            tried["refused"] += 1
            tried["problems"] += len(err.problems)
            return
        tried["loaded"] += 1

    load()
    fuzz_report(f"fuzz config text: {tried['loaded'] + tried['refused']} texts, {dict(tried)}")
    assert tried["refused"] > 0


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of the scalars of a YAML document (keys and list indexes)."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))]
    return [path]


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_DOC = yaml.safe_load(GOOD)
_LEAVES = _leaves(_DOC)
_junk_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
    | st.sampled_from(["", "0", "-1", "1e400", "198.18.0.300", "::1", "nan", "1h", "yes", "~"])
)


# Fields whose change the cross-checks report where the field is used, not where it is.
REFERRED_FROM = {
    "switches[0].name": ("nodes[0].switch",),
}


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], value)
    return copy


def _value_at(config: Any, path: tuple[Any, ...]) -> Any:
    node = config
    for part in path:
        node = node[part] if isinstance(part, int) else getattr(node, str(part))
    return node


def test_one_junk_value_is_refused_at_its_field_or_loads_as_that_field(
    fuzz_report: Report,
) -> None:
    """The only change to a valid file is one value: a refusal names that field (or the
    section that holds it), and a file that still loads differs from the good one there."""
    tried: Counter[str] = Counter()
    good = parse_config(GOOD, SOURCE)

    @PLAN.hypothesis(0.35)
    @given(st.sampled_from(_LEAVES), _junk_values)
    def replace_one(path: tuple[Any, ...], value: Any) -> None:
        text = yaml.safe_dump(_replace(_DOC, path, value))
        where = _dotted(path)
        try:
            config = parse_config(text, SOURCE)
        except ConfigError as err:
            paths = _check_refusal(err)
            section = _dotted(path[:2] if isinstance(path[1], int) else path[:1])
            named = (section, *REFERRED_FROM.get(where, ()))
            assert any(p.startswith(named) for p in paths), (where, value, paths)
            tried["refused at the field" if where in paths else "refused at its section"] += 1
            return
        tried["loaded"] += 1
        # Everything outside the replaced value's section loads as it did.
        top = path[0]
        for name in type(good).model_fields:
            if name != top:
                assert getattr(config, name) == getattr(good, name), (name, where, value)

    replace_one()
    fuzz_report(f"fuzz config field: {sum(tried.values())} one-value changes, {dict(tried)}")
    assert tried["refused at the field"] > 0


_mac_spelling = st.tuples(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-", ""]),
                          st.booleans())  # fmt: skip


def _spell(raw: bytes, sep: str, upper: bool) -> str:
    text = sep.join(f"{b:02x}" for b in raw)
    return text.upper() if upper else text


_node_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")


def test_nodes_load_as_written(fuzz_report: Report) -> None:
    tried: Counter[str] = Counter()

    @PLAN.hypothesis(0.25)
    @given(
        st.lists(
            st.tuples(_node_names, _mac_spelling, st.integers(2, 250), st.integers(1, 48)),
            min_size=1,
            max_size=8,
            unique_by=(lambda n: n[0], lambda n: n[1][0], lambda n: n[2], lambda n: n[3]),
        )
    )
    def nodes(rows: list[tuple[str, tuple[bytes, str, bool], int, int]]) -> None:
        assume(all(name != "rack1" for name, *_ in rows))
        doc = {
            "manager": {"address": "198.18.0.1", "network": "198.18.0.0/24"},
            "switches": [{"name": "rack1", "address": "198.18.0.254"}],
            "nodes": [
                {"name": name, "switch": "rack1", "port": port, "mac": _spell(*mac),
                 "ip": f"198.18.0.{host}"}
                for name, mac, host, port in rows
            ],
        }  # fmt: skip
        config = parse_config(yaml.safe_dump(doc), SOURCE)
        assert [(n.name, n.mac, n.ip, n.switch, n.port) for n in config.nodes] == [
            (name, mac[0].hex(":"), IPv4Address(f"198.18.0.{host}"), "rack1", port)
            for name, mac, host, port in rows
        ]
        tried["configs"] += 1
        tried["nodes"] += len(rows)

    nodes()
    fuzz_report(f"fuzz config nodes: {dict(tried)}")
