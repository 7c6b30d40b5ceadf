"""The threaded shell of ``piman agent``: sockets in, an app's responses out
(:class:`~piman.monitor.agent.app.AgentApp`, or anything with its ``handle``).

One thread per connection (``socketserver``), keep-alive, and TLS done in the connection's
thread so that a slow handshake never blocks ``accept``. ``ssl`` is imported only when TLS is
configured: OpenSSL's libraries cost a Pi several MB of memory.

A client cannot hold the agent: at most ``max_connections`` (16) connections are served at
once, and one more is answered 503 and closed at once; each request head must arrive whole
within ``idle_timeout`` of the agent starting to wait for it (a byte now and then does not
extend it), and each connection, TLS handshake included, ends ``max_age`` after it was
accepted (the server's loop shuts down the socket of one that is late, whatever its thread is
blocked on). A scraper's kept-alive connection is simply opened again.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from piman.monitor.agent.http import (
    MAX_HEAD,
    MalformedRequest,
    Request,
    Response,
    encode_response,
    find_head_end,
    parse_request,
)

if TYPE_CHECKING:
    import ssl

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_AGE",
    "MAX_CONNECTIONS",
    "AgentServer",
    "Handler",
    "make_ssl_context",
    "serve_socket",
]

MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 60.0  # seconds for a whole request head (a scraper asks every 15 s)
MAX_AGE = 300.0  # seconds a connection lives, whatever it does
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n"


class Handler(Protocol):
    """What the server serves: one response per request (the agent's app)."""

    def handle(self, request: Request) -> Response: ...


logger = logging.getLogger(__name__)


def make_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) from PEM certificate and key files."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def serve_socket(
    sock: socket.socket,
    app: Handler,
    peer: str,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
    deadline: float | None = None,
) -> None:
    """Answer requests on one connected socket until the client closes, a request head takes
    longer than ``idle_timeout``, or ``deadline`` (``time.monotonic()``) passes."""
    buf = bytearray()
    end_of_life = float("inf") if deadline is None else deadline
    while True:
        end = find_head_end(buf)
        head_by = min(time.monotonic() + idle_timeout, end_of_life)
        while end < 0:
            if len(buf) > MAX_HEAD:
                sock.sendall(encode_response(Response(431, b"head too large\n"), keep_alive=False))
                return
            left = head_by - time.monotonic()
            if left <= 0:
                logger.debug("[peer=%s] no whole request in time: closing", peer)
                return
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return
            buf += chunk
            end = find_head_end(buf)
        try:
            request = parse_request(bytes(buf[: end - 4]))
        except MalformedRequest as err:
            logger.warning("[peer=%s] bad request: %s", peer, err)
            sock.sendall(encode_response(Response(400, b"bad request\n"), keep_alive=False))
            return
        del buf[:end]
        keep_alive = request.keep_alive and not request.has_body
        response = app.handle(request)
        left = end_of_life - time.monotonic()
        if left <= 0:
            return
        sock.settimeout(min(left, idle_timeout))  # for the whole answer (sendall)
        sock.sendall(
            encode_response(response, head_only=request.method == "HEAD", keep_alive=keep_alive)
        )
        if not keep_alive:
            return


@dataclass(slots=True)
class _Connection:
    """What the server's loop needs to end a connection at its deadline."""

    deadline: float  # time.monotonic()
    sock: socket.socket  # the socket its thread uses now (the TLS one after wrapping)


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        server = self.server
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        conn = server.connection(sock)
        deadline = conn.deadline if conn is not None else time.monotonic() + server.max_age
        try:
            sock.settimeout(max(0.001, min(server.idle_timeout, deadline - time.monotonic())))
            if server.ssl_context is not None:
                sock = server.ssl_context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                if conn is not None:
                    conn.sock = sock  # the raw one is detached now
                sock.do_handshake()
            serve_socket(
                sock, server.app, peer, idle_timeout=server.idle_timeout, deadline=deadline
            )
        except OSError as err:  # resets, timeouts, TLS failures: the client's problem
            logger.debug("[peer=%s] connection ended: %s", peer, err)
        finally:
            try:
                sock.close()
            except OSError:
                pass


class AgentServer(socketserver.ThreadingTCPServer):
    """Serves ``app`` on ``host:port`` (port 0 picks a free one; see :attr:`port`)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        app: Handler,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_age: float = MAX_AGE,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_age = max_age
        self._lock = threading.Lock()
        self._open: dict[socket.socket, _Connection] = {}  # by the accepted socket
        self._refused = 0
        self._refused_logged = 0.0
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def connection(self, request: socket.socket) -> _Connection | None:
        """The bookkeeping of an accepted socket (None once it is closed)."""
        with self._lock:
            return self._open.get(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a connection's thread, or answer 503 and close it when all slots are taken."""
        with self._lock:
            busy = len(self._open) >= self.max_connections
            if not busy:
                self._open[request] = _Connection(time.monotonic() + self.max_age, request)
        if not busy:
            super().process_request(request, client_address)
            return
        try:
            request.setblocking(False)
            request.send(_BUSY)
        except OSError:
            pass
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 60.0:
            self._refused_logged = now
            logger.warning(
                "[agent] %d connections open (the most it serves): refused %d since (last: %s)",
                self.max_connections,
                self._refused,
                client_address[0],
            )
            self._refused = 0
        super().shutdown_request(request)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def service_actions(self) -> None:
        """On the server's loop (every poll interval): end the connections past ``max_age``."""
        now = time.monotonic()
        with self._lock:
            late = [c.sock for c in self._open.values() if c.deadline <= now]
        for sock in late:
            try:  # the plain socket's shutdown, also under TLS: its thread's recv ends
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def port(self) -> int:
        address: Any = self.server_address
        return int(address[1])
