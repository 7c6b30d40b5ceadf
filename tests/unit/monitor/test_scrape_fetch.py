"""The scraper's keep-alive HTTP/1.1 client against a small server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from piman.monitor.collector.fetch import BadResponse, StreamFetcher, parse_head


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"HTTP/1.1 200 OK", (200, {})),
        (b"HTTP/1.0 404 Not Found\r\nContent-Length: 3", (404, {"content-length": "3"})),
        (b"HTTP/1.1 500\r\nX-A:  b ", (500, {"x-a": "b"})),
    ],
)
def test_response_heads_parse(head: bytes, expected: tuple[int, dict[str, str]]) -> None:
    assert parse_head(head) == expected


@pytest.mark.parametrize(
    "head", [b"SSH-2.0-OpenSSH", b"HTTP/2 200", b"HTTP/1.1 2x0", b"HTTP/1.1 200\r\nbad"]
)
def test_bad_response_heads_raise_bad_response(head: bytes) -> None:
    with pytest.raises(BadResponse):
        parse_head(head)


class Server:
    """Answers by path: /len (Content-Length), /chunked, /close (then closes), /junk."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                path = head.split(b" ")[1]
                if path == b"/len":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                elif path == b"/chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n"
                    )
                elif path == b"/close":
                    writer.write(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nbye")
                    await writer.drain()
                    break
                else:
                    writer.write(b"garbage\r\n\r\n")
                    await writer.drain()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, int]]:
    srv = Server()
    s = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    try:
        yield srv, s.sockets[0].getsockname()[1]
    finally:
        s.close()
        await s.wait_closed()


async def test_bodies_by_length_chunks_and_close_and_one_connection_reused(
    server: tuple[Server, int],
) -> None:
    srv, port = server
    fetcher = StreamFetcher()
    try:
        base = f"http://127.0.0.1:{port}"
        assert await fetcher.get(f"{base}/len", token="s3cret") == (200, "hello")
        assert await fetcher.get(f"{base}/chunked", token="s3cret") == (200, "abcdefg")
        assert await fetcher.get(f"{base}/len", token="s3cret") == (200, "hello")
        assert srv.connections == 1
        assert await fetcher.get(f"{base}/close", token="s3cret") == (503, "bye")
        assert await fetcher.get(f"{base}/len", token="s3cret") == (200, "hello")
        assert srv.connections == 2
        with pytest.raises(BadResponse):
            await fetcher.get(f"{base}/junk", token="s3cret")
    finally:
        await fetcher.aclose()
    assert all(b"Authorization: Bearer s3cret\r\n" in r for r in srv.requests)
    assert all(b"Host: 127.0.0.1:" in r for r in srv.requests)


async def test_a_refused_connection_raises_oserror() -> None:
    fetcher = StreamFetcher()
    with pytest.raises(ConnectionRefusedError):
        await fetcher.get("http://127.0.0.1:9/metrics")
