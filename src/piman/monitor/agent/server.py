"""The threaded shell of ``piman agent``: sockets in, an app's responses out
(:class:`~piman.monitor.agent.app.AgentApp`, or anything with its ``handle``).

One thread per connection (``socketserver``), keep-alive, an idle timeout, and TLS done in the
connection's thread so that a slow handshake never blocks ``accept``. ``ssl`` is imported only
when TLS is configured: OpenSSL's libraries cost a Pi several MB of memory.
"""

from __future__ import annotations

import logging
import socket
import socketserver
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

__all__ = ["AgentServer", "Handler", "make_ssl_context", "serve_socket"]


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


def serve_socket(sock: socket.socket, app: Handler, peer: str) -> None:
    """Answer requests on one connected socket until the client closes or idles out."""
    buf = bytearray()
    while True:
        end = find_head_end(buf)
        while end < 0:
            if len(buf) > MAX_HEAD:
                sock.sendall(encode_response(Response(431, b"head too large\n"), keep_alive=False))
                return
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
        sock.sendall(
            encode_response(response, head_only=request.method == "HEAD", keep_alive=keep_alive)
        )
        if not keep_alive:
            return


class _Handler(socketserver.BaseRequestHandler):
    server: AgentServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        sock.settimeout(self.server.idle_timeout)
        try:
            if self.server.ssl_context is not None:
                sock = self.server.ssl_context.wrap_socket(sock, server_side=True)
            serve_socket(sock, self.server.app, peer)
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
        idle_timeout: float = 60.0,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def port(self) -> int:
        address: Any = self.server_address
        return int(address[1])
