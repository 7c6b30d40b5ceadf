"""The scraper's HTTP client against a hostile server on 127.0.0.1: bodies are bounded, whatever
the framing, and a body sized by the connection's end is read whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from piman.monitor.collector.fetch import BadResponse, StreamFetcher

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]  # (request head, writer)
MIB = 1 << 20


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Reply], Awaitable[str]]]:
    """``await serve(reply)`` → the URL of a server answering every request with ``reply``."""
    servers: list[asyncio.Server] = []

    async def start(reply: Reply) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:  # keep-alive: every request on the connection
                    await reply(await reader.readuntil(b"\r\n\r\n"), writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/metrics"

    try:
        yield start
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


def _big(n: int) -> bytes:
    return b"m 1\n" * (n // 4)


async def test_a_content_length_over_the_limit_is_refused_before_reading(
    serve: Callable[[Reply], Awaitable[str]],
) -> None:
    async def reply(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (5 * MIB))
        w.write(_big(5 * MIB))
        await w.drain()

    url = await serve(reply)
    fetcher = StreamFetcher()
    try:
        with pytest.raises(BadResponse, match="body_size_limit"):
            await fetcher.get(url)  # the default limit: 4 MiB
        assert (await _small(serve, fetcher))[0] == 200  # a well-behaved peer still works
    finally:
        await fetcher.aclose()


async def _small(serve: Callable[[Reply], Awaitable[str]], f: StreamFetcher) -> tuple[int, str]:
    async def reply(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nm 1\n")
        await w.drain()

    return await f.get(await serve(reply))


@pytest.mark.parametrize("framing", ["chunked", "close"])
async def test_unsized_bodies_over_the_limit_are_refused(
    serve: Callable[[Reply], Awaitable[str]], framing: str
) -> None:
    async def reply(_: bytes, w: asyncio.StreamWriter) -> None:
        if framing == "chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(64):
                w.write(b"%x\r\n%s\r\n" % (256 * 1024, _big(256 * 1024)))
                await w.drain()
            w.write(b"0\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\n\r\n")
            for _ in range(64):
                w.write(_big(256 * 1024))
                await w.drain()
        await w.drain()
        w.close()

    url = await serve(reply)
    fetcher = StreamFetcher(max_body=MIB)
    try:
        with pytest.raises(BadResponse, match="body_size_limit"):
            await fetcher.get(url)
    finally:
        await fetcher.aclose()


async def test_a_body_ended_by_close_is_read_whole(
    serve: Callable[[Reply], Awaitable[str]],
) -> None:
    """No Content-Length, no chunks: the body is everything until the peer closes."""

    async def reply(_: bytes, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\n\r\n")
        for i in range(3):
            w.write(b"part%d " % i)
            await w.drain()
            await asyncio.sleep(0.05)  # separate segments: the reader sees them one by one
        w.close()

    fetcher = StreamFetcher()
    try:
        assert await fetcher.get(await serve(reply)) == (200, "part0 part1 part2 ")
    finally:
        await fetcher.aclose()


async def test_the_token_goes_only_with_the_request_that_carries_it(
    serve: Callable[[Reply], Awaitable[str]],
) -> None:
    seen: list[bytes] = []

    async def reply(head: bytes, w: asyncio.StreamWriter) -> None:
        seen.append(head)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()

    url = await serve(reply)
    fetcher = StreamFetcher()
    try:
        assert await fetcher.get(url, token="per-node") == (200, "ok")
        assert await fetcher.get(url) == (200, "ok")  # same kept-alive connection, no token
    finally:
        await fetcher.aclose()
    assert b"Authorization: Bearer per-node\r\n" in seen[0]
    assert b"Authorization" not in seen[1]
