"""The agent's HTTP/1.1 subset, without I/O: request heads in, response bytes out.

The agent answers ``GET``/``HEAD`` for a few paths to scrapers, so it needs far less than
``http.server`` (whose import alone costs a Pi ~10 MB): a request head parser, keep-alive rules
(RFC 9112 §9.3: HTTP/1.1 persists unless ``Connection: close``; HTTP/1.0 only with
``keep-alive``) and a response encoder. Request bodies are not accepted (a request announcing
one is answered and the connection closed). Both shells, the threaded server of ``piman agent``
and the asyncio one the simulator runs, use this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from piman.errors import ProtocolError

__all__ = [
    "MAX_HEAD",
    "MalformedRequest",
    "Request",
    "Response",
    "encode_response",
    "find_head_end",
    "parse_request",
]

MAX_HEAD = 16 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class MalformedRequest(ProtocolError, ValueError):
    """The client sent bytes that are not an HTTP/1.x request head."""


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head; header names are lower-case, repeated headers joined by ``,``."""

    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def has_body(self) -> bool:
        length = self.headers.get("content-length", "0").strip()
        return "transfer-encoding" in self.headers or length not in ("", "0")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


def find_head_end(buffer: bytes | bytearray) -> int:
    """Index just past the blank line ending the head in ``buffer``, or -1 if not there yet."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_request(head: bytes) -> Request:
    """Parse a request head (request line and header fields, up to the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as err:  # pragma: no cover - latin-1 decodes any byte
        raise MalformedRequest(str(err)) from err
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        raise MalformedRequest(f"bad request line {lines[0][:80]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise MalformedRequest(f"unsupported version {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise MalformedRequest(f"bad header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Request(method, target, version, headers)


def encode_response(
    response: Response, *, head_only: bool = False, keep_alive: bool = True
) -> bytes:
    """The bytes of a response; ``head_only`` leaves the body out (for ``HEAD``)."""
    reason = _REASONS.get(response.status, "Unknown")
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    lines += [f"{k}: {v}" for k, v in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
