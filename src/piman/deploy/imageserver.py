"""The image stream: installers fetch their image's ranges here, zero-copy (``sendfile``).

Why a server of its own: through the ASGI stack an image leaves at ~0.4 GB/s on this machine
(a Python copy per chunk); ``loop.sendfile`` hands the file to the kernel and serves 16 clients
as fast as nginx does (bench/deploy.py). So the plan's ``image`` URL points here
(``deploy.image_listen``), not at the API.

The protocol is the part of HTTP/1.1 installers and curl speak: ``GET`` or ``HEAD`` of
``/deploy/<id>/image[?start=<a>&end=<b>]`` with ``Authorization: Bearer <session>`` and an
optional single ``Range: bytes=a-b`` (``a-``, ``-n``), keep-alive, nothing else. The ``end``
query caps the answer at byte ``b``: busybox ``wget -c`` can only say where to start; the
``start`` query starts a ``200`` answer at byte ``a``, for ``wget -O -`` which cannot send a
Range at all (docs/boot-protocol.md §3).
A request head is at most 8 KiB; a connection idle for ``idle_timeout`` is closed; at most
``max_connections`` at once.
Who may read which image is the deploy service's decision (``resolve``): this module never
looks at tokens itself. Bytes sent are counted per deployment (``on_sent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_HEAD",
    "BadRequest",
    "ImageServer",
    "RangeNotSatisfiable",
    "Request",
    "parse_head",
    "parse_range",
]

logger = logging.getLogger(__name__)

MAX_HEAD = 8192
_PATH = re.compile(
    r"^/deploy/(\d{1,12})/image"
    r"(?:\?(?:start=(\d{1,19})(?:&end=(\d{1,19}))?|end=(\d{1,19})))?$"
)

Resolve = Callable[[int, str, str], Awaitable[Path | None]]
"""(deployment id, bearer token, client address) → the image file, or None (refused)."""


class BadRequest(ValueError):
    """The request cannot be parsed (answered 400)."""


class RangeNotSatisfiable(ValueError):
    """The Range lies outside the image (answered 416)."""


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names; the first of repeated headers wins
    keep_alive: bool


def parse_head(data: bytes) -> Request:
    """A request line and headers (``data`` ends with the blank line); BadRequest if not."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable head") from err
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:80]!r}")
        headers.setdefault(name.lower(), value.strip())
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method, target, headers, keep)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` bytes (inclusive) of a single ``bytes=`` range; None for no Range.

    RangeNotSatisfiable when it starts past the end; BadRequest for anything else than one
    ``bytes=a-b`` / ``a-`` / ``-n`` range (multipart ranges are not served).
    """
    if value is None:
        return None
    unit, sep, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or not sep or "," in spec:
        raise BadRequest(f"unsupported Range {value[:80]!r}")
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        raise BadRequest(f"bad Range {value[:80]!r}")
    try:
        first = int(first_text) if first_text else None
        last = int(last_text) if last_text else None
    except ValueError as err:
        raise BadRequest(f"bad Range {value[:80]!r}") from err
    if first is None:  # the last n bytes
        if last is None:
            raise BadRequest(f"bad Range {value[:80]!r}")
        if last <= 0:
            raise RangeNotSatisfiable(value)
        return max(0, size - last), size - 1
    if first < 0 or (last is not None and last < first):
        raise BadRequest(f"bad Range {value[:80]!r}")
    if first >= size:
        raise RangeNotSatisfiable(value)
    return first, size - 1 if last is None else min(last, size - 1)


def _head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ImageServer:
    """``image`` service: serves deployments' images until cancelled."""

    name = "images"

    def __init__(
        self,
        listen: tuple[str, int],
        resolve: Resolve,
        *,
        max_connections: int = 256,
        idle_timeout: float = 30.0,
        on_sent: Callable[[int, int], None] | None = None,
    ) -> None:
        self.listen = listen
        self.resolve = resolve
        self.idle_timeout = idle_timeout
        self.on_sent = on_sent
        self.bound: tuple[str, int] | None = None
        self.ready = asyncio.Event()
        self._slots = asyncio.Semaphore(max_connections)

    async def serve(self) -> None:
        server = await asyncio.start_server(
            self._connection, *self.listen, reuse_address=True, limit=MAX_HEAD
        )
        sock = server.sockets[0]
        self.bound = sock.getsockname()[:2]
        logger.info("deploy: images on http://%s:%d/", *self.bound)
        self.ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            self.ready.clear()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("-", 0)
        if self._slots.locked():
            writer.close()
            return
        async with self._slots:
            try:
                while await self._one(reader, writer, peer[0]):
                    pass
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            except asyncio.LimitOverrunError:
                with contextlib.suppress(ConnectionError):
                    writer.write(
                        _head("431 Request Header Fields Too Large", [("Content-Length", "0")])
                    )
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> bool:
        """Serve one request; False when the connection should close."""
        async with asyncio.timeout(self.idle_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise asyncio.LimitOverrunError("head too large", len(head))
        try:
            request = parse_head(head[:-4])
        except BadRequest as err:
            await self._reply(writer, "400 Bad Request", str(err))
            return False
        if request.method not in ("GET", "HEAD"):
            await self._reply(
                writer, "405 Method Not Allowed", "GET or HEAD", [("Allow", "GET, HEAD")]
            )
            return request.keep_alive
        match = _PATH.match(request.target)
        if match is None:
            await self._reply(writer, "404 Not Found", "no such image")
            return request.keep_alive
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        path = None
        if scheme.lower() == "bearer" and token.strip():
            path = await self.resolve(int(match.group(1)), token.strip(), peer)
        if path is None:
            await self._reply(writer, "403 Forbidden", "not this deployment's session")
            return False
        start, end = (int(g) if g else None for g in (match[2], match[3] or match[4]))
        return await self._send_file(writer, request, path, int(match.group(1)), start, end)

    async def _send_file(
        self,
        writer: asyncio.StreamWriter,
        request: Request,
        path: Path,
        deployment: int,
        start: int | None,
        end: int | None,
    ) -> bool:
        try:
            file = path.open("rb")
        except OSError:
            await self._reply(writer, "404 Not Found", "the image file is gone")
            return False
        with file:
            size = os.fstat(file.fileno()).st_size
            limit = size if end is None else min(size, end + 1)  # the answer stops at ``end``
            partial = "range" in request.headers  # 206; ``start`` alone answers 200
            try:
                wanted = parse_range(request.headers.get("range"), limit)
                if wanted is None and start is not None:
                    wanted = parse_range(f"bytes={start}-", limit)  # 416 past the end
            except RangeNotSatisfiable:
                await self._reply(
                    writer, "416 Range Not Satisfiable", "outside the image",
                    [("Content-Range", f"bytes */{size}")],
                )  # fmt: skip
                return request.keep_alive
            except BadRequest as err:
                await self._reply(writer, "400 Bad Request", str(err))
                return False
            first, last = wanted if wanted is not None else (0, limit - 1)
            count = last - first + 1 if limit else 0
            headers = [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(count)),
                ("Accept-Ranges", "bytes"),
            ]
            if partial:
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
            if not request.keep_alive:
                headers.append(("Connection", "close"))
            status = "206 Partial Content" if partial else "200 OK"
            writer.write(_head(status, headers))
            if request.method == "HEAD" or count == 0:
                await writer.drain()
                return request.keep_alive
            await writer.drain()
            loop = asyncio.get_running_loop()
            sent = await loop.sendfile(writer.transport, file, first, count)
            if self.on_sent is not None:
                self.on_sent(deployment, sent)
        return request.keep_alive

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        status: str,
        text: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        body = (text + "\n").encode()
        writer.write(
            _head(
                status,
                [
                    ("Content-Type", "text/plain"),
                    ("Content-Length", str(len(body))),
                    *(extra or []),
                ],
            )
            + body
        )
        await writer.drain()
