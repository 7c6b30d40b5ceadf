"""The image stream: Range requests answered zero-copy, to curl and busybox wget, refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from piman.deploy.imageserver import (
    BadRequest,
    ImageServer,
    RangeNotSatisfiable,
    parse_head,
    parse_range,
)
from tests.support import needs_tool

SIZE = 3 * 1024 * 1024 + 123


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        (" Bytes = 5-5 ", (5, 5)),
    ],
)
def test_ranges(value: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, 1000) == expected


@pytest.mark.parametrize("value", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_ranges_outside_the_image(value: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(value, 1000)


@pytest.mark.parametrize("value", ["items=0-1", "bytes=0-1,5-9", "bytes=a-b", "bytes=9-1", "bytes"])
def test_bad_ranges(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_range(value, 1000)


def test_request_heads() -> None:
    r = parse_head(b"GET /deploy/4/image HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\nrange: no")
    assert (r.method, r.target, r.headers["range"], r.keep_alive) == (
        "GET", "/deploy/4/image", "bytes=1-2", True,
    )  # fmt: skip
    assert not parse_head(b"GET / HTTP/1.0\r\nHost: x").keep_alive
    assert not parse_head(b"GET / HTTP/1.1\r\nConnection: close").keep_alive
    for bad in (
        b"GET /",
        b"GET / SPDY/3",
        b"GET / HTTP/1.1\r\nNoColon",
        b"GET / HTTP/1.1\r\n x: y",
    ):
        with pytest.raises(BadRequest):
            parse_head(bad)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Path, list[tuple[int, int]]]]:
    image = tmp_path / "image.img"
    image.write_bytes(os.urandom(SIZE))
    sent: list[tuple[int, int]] = []

    async def resolve(deployment: int, token: str, peer: str) -> Path | None:
        return image if (deployment, token, peer) == (7, "s3ssion", "127.0.0.1") else None

    server = ImageServer(
        ("127.0.0.1", 0), resolve, idle_timeout=1.0, on_sent=lambda d, n: sent.append((d, n))
    )
    task = asyncio.create_task(server.serve())
    await asyncio.wait_for(server.ready.wait(), 5)
    assert server.bound is not None
    try:
        yield f"http://127.0.0.1:{server.bound[1]}", image, sent
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def run(*argv: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_curl_ranges_and_the_whole_image(
    served: tuple[str, Path, list[tuple[int, int]]],
) -> None:
    needs_tool("curl")
    url, image, sent = served
    data = image.read_bytes()
    auth = ["-H", "Authorization: Bearer s3ssion"]
    code, out, err = await run("curl", "-sf", *auth, "-r", "4096-8191", f"{url}/deploy/7/image")
    assert code == 0, err
    assert out == data[4096:8192]
    code, out, _ = await run("curl", "-sf", *auth, f"{url}/deploy/7/image")
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert sent == [(7, 4096), (7, SIZE)]
    # Keep-alive: several ranges on one connection.
    code, out, err = await run(
        "curl", "-sf", *auth, "-r", "0-9", f"{url}/deploy/7/image", "--next", "-sf", *auth,
        "-r", "10-19", f"{url}/deploy/7/image",
    )  # fmt: skip
    assert out == data[0:10] + data[10:20]
    code, out, _ = await run(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *auth, "-r", f"{SIZE}-",
        f"{url}/deploy/7/image",
    )  # fmt: skip
    assert out == b"416"


async def test_busybox_wget_continues_into_a_sparse_file_as_the_installer_does(
    served: tuple[str, Path, list[tuple[int, int]]], tmp_path: Path
) -> None:
    needs_tool("busybox")
    url, image, sent = served
    data = image.read_bytes()
    out = tmp_path / "range"
    first, last = 1048576, 2097151
    with out.open("wb") as f:
        f.truncate(first)  # wget -c starts where the file ends
    auth = ("--header", "Authorization: Bearer s3ssion")
    wget = (
        "busybox",
        "wget",
        "-q",
        "-c",
        *auth,
        "-O",
        str(out),
        f"{url}/deploy/7/image?end={last}",
    )
    code, _, err = await run(*wget)
    assert code == 0, err
    assert out.stat().st_size == last + 1
    assert out.read_bytes()[first:] == data[first : last + 1]
    assert sent == [(7, last + 1 - first)]
    # A cut download resumes where it stopped: the file holds the first half only.
    with out.open("r+b") as f:
        f.truncate(first + 500_000)
    code, _, err = await run(*wget)
    assert code == 0, err
    assert out.read_bytes()[first:] == data[first : last + 1]
    assert sent[-1] == (7, last + 1 - first - 500_000)
    # Without a Range, the answer is the image from 0 to ``end``.
    whole = tmp_path / "head"
    code, _, err = await run(*wget[:6], "-O", str(whole), f"{url}/deploy/7/image?end=4095")
    assert code == 0, err
    assert whole.read_bytes() == data[:4096]


async def test_busybox_wget_streams_a_window_as_the_installer_does(
    served: tuple[str, Path, list[tuple[int, int]]], tmp_path: Path
) -> None:
    """``?start=a&end=b`` answers 200 with bytes a..b: what ``wget -O - | dd`` streams onto the
    disk (and asks again from where dd stopped after a cut)."""
    needs_tool("busybox")
    url, image, sent = served
    data = image.read_bytes()
    disk = tmp_path / "disk"
    disk.write_bytes(b"\0" * SIZE)
    auth = "Authorization: Bearer s3ssion"
    first, last = 1048576, 2097151
    for start in (first, first + 65536 * 3):  # the whole window, then the rest after a cut
        code, _, err = await run(
            "sh", "-c", 'busybox wget -q --header "$1" -O - "$2" | '
            'busybox dd of="$3" bs=65536 seek="$4" iflag=fullblock oflag=seek_bytes conv=notrunc',
            "sh", auth, f"{url}/deploy/7/image?start={start}&end={last}", str(disk), str(start),
        )  # fmt: skip
        assert code == 0, err
        assert b"records out" in err
    assert disk.read_bytes() == b"\0" * first + data[first : last + 1] + b"\0" * (SIZE - last - 1)
    assert sent == [(7, last + 1 - first), (7, last + 1 - first - 65536 * 3)]
    # start alone: to the end of the image; a start past the end (or past end=): 416
    code, out, err = await run(
        "curl", "-sf", "-H", auth, f"{url}/deploy/7/image?start={SIZE - 10}"
    )  # fmt: skip
    assert (code, out) == (0, data[-10:]), err
    for query in (f"start={SIZE}", "start=20&end=19"):
        _, out, _ = await run(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", auth,
            f"{url}/deploy/7/image?{query}",
        )  # fmt: skip
        assert out == b"416", query
    for query in ("start=1&start=2", "end=5&start=1", "start=", "start=x"):
        _, out, _ = await run(
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", auth,
            f"{url}/deploy/7/image?{query}",
        )  # fmt: skip
        assert out == b"404", query


@pytest.mark.parametrize(
    ("header", "path", "status"),
    [
        ("Authorization: Bearer wrong", "/deploy/7/image", "403"),
        ("X-None: 1", "/deploy/7/image", "403"),
        ("Authorization: Basic czNzc2lvbg==", "/deploy/7/image", "403"),
        ("Authorization: Bearer s3ssion", "/deploy/8/image", "403"),
        ("Authorization: Bearer s3ssion", "/deploy/7/../../etc/passwd", "404"),
        ("Authorization: Bearer s3ssion", "/", "404"),
    ],
)
async def test_refusals(
    served: tuple[str, Path, list[tuple[int, int]]], header: str, path: str, status: str
) -> None:
    needs_tool("curl")
    url, _, sent = served
    _, out, _ = await run(
        "curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "-H", header,
        f"{url}{path}",
    )  # fmt: skip
    assert out.decode() == status
    assert sent == []


async def test_only_get_and_head_and_bounded_heads(
    served: tuple[str, Path, list[tuple[int, int]]],
) -> None:
    url, _, _ = served
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /deploy/7/image HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 405")
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /deploy/7/image HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 10_000 + b"\r\n\r\n")
    line = await asyncio.wait_for(reader.readline(), 5)
    assert line.startswith(b"HTTP/1.1 431") or line == b""  # refused or closed, never served
    writer.close()
    # A client that says nothing is dropped after the idle timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
