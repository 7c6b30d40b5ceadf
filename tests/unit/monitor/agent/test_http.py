"""The agent's HTTP/1.1 subset: request heads, keep-alive rules, response bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from piman.errors import ProtocolError
from piman.monitor.agent.http import (
    MalformedRequest,
    Response,
    encode_response,
    find_head_end,
    parse_request,
)


def test_request_head_is_parsed_with_lower_case_headers() -> None:
    head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: pi\r\nAccept-Encoding: gzip\r\nX-A: 1\r\nx-a: 2"
    req = parse_request(head)
    assert (req.method, req.target, req.path, req.version) == (
        "GET",
        "/metrics?x=1",
        "/metrics",
        "HTTP/1.1",
    )
    assert req.headers["accept-encoding"] == "gzip"
    assert req.headers["x-a"] == "1, 2"


@pytest.mark.parametrize(
    ("head", "keep"),
    [
        (b"GET / HTTP/1.1\r\nHost: a", True),
        (b"GET / HTTP/1.1\r\nConnection: close", False),
        (b"GET / HTTP/1.0\r\nHost: a", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive", True),
    ],
)
def test_keep_alive_follows_rfc_9112(head: bytes, keep: bool) -> None:
    assert parse_request(head).keep_alive is keep


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"GET /\r\n",
        b"GET / HTTP/2.0",
        b"GET / HTTP/1.1\r\nno colon",
        b"G3T / HTTP/1.1",
        b"GET  HTTP/1.1",
    ],
)
def test_garbage_is_a_malformed_request(head: bytes) -> None:
    with pytest.raises(MalformedRequest) as info:
        parse_request(head)
    assert isinstance(info.value, ProtocolError)
    assert isinstance(info.value, ValueError)


def test_head_end_is_found_after_the_blank_line() -> None:
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1
    data = b"GET / HTTP/1.1\r\n\r\nGET /x"
    assert data[find_head_end(data) :] == b"GET /x"


def test_response_has_length_and_optionally_closes() -> None:
    raw = encode_response(Response(200, b"hello", "text/plain"), keep_alive=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 5" in head
    assert b"Connection: close" in head
    assert body == b"hello"
    only_head = encode_response(Response(200, b"hello"), head_only=True)
    assert only_head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 5" in only_head


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_malformed_request(data: bytes) -> None:
    try:
        req = parse_request(data)
    except MalformedRequest:
        return
    assert req.method.isalpha()
    assert req.version in ("HTTP/1.1", "HTTP/1.0")


@given(
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
    ),
    st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True),
        st.from_regex(r"[ -~]{0,30}", fullmatch=True).map(str.strip),
        max_size=5,
    ),
)
def test_well_formed_heads_round_trip(method: str, target: str, headers: dict[str, str]) -> None:
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    req = parse_request("\r\n".join(lines).encode())
    assert (req.method, req.target) == (method, target)
    expected: dict[str, list[str]] = {}
    for k, v in headers.items():
        expected.setdefault(k.lower(), []).append(v)
    assert req.headers == {k: ", ".join(v) for k, v in expected.items()}
