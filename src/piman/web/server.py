"""The HTTP service: FastAPI on uvicorn, inside the manager's event loop (HTTPS with
``manager.tls``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from piman.config.types import parse_host_port
from piman.context import AppContext
from piman.errors import PimanError
from piman.web.app import create_app, create_installer_app

__all__ = ["HttpService", "bind_tcp"]

logger = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the manager owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a PimanError that says which address could not be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise PimanError(f"cannot listen on {host}:{port} for HTTP: {err.strerror}") from err
    sock.set_inheritable(True)
    return sock


class HttpService:
    """Serves the REST API, the web UI, ``/metrics`` and ``/healthz``."""

    name = "http"

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.app = create_app(ctx)
        self.host, self.port = parse_host_port(ctx.config.manager.http)
        self.bound_port: int | None = None

    async def serve(self) -> None:
        tls = self.ctx.config.manager.tls
        if tls is not None:
            for what, path in (("cert", tls.cert), ("key", tls.key)):
                if not path.is_file():
                    raise PimanError(f"manager.tls.{what}: {path} is not a readable file")
        sock = bind_tcp(self.host, self.port)
        self.bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
        try:
            server = _EmbeddedServer(config)
            if tls is not None:
                config.load()  # reads the certificate now: a bad one is one clear line
        except (OSError, ValueError) as err:
            sock.close()
            raise PimanError(f"manager.tls: cannot use {tls.cert if tls else ''}: {err}") from err
        scheme = "https" if tls else "http"
        logger.info("HTTP on %s://%s:%d/", scheme, self.host, self.bound_port)
        deploy = self.ctx.config.deploy
        try:
            if tls is None or self.ctx.deploy is None or deploy is None:
                await server.serve(sockets=[sock])
                return
            async with asyncio.TaskGroup() as group:  # and /boot/v1 in plain HTTP
                group.create_task(server.serve(sockets=[sock]))
                group.create_task(self._installer_api(deploy.api_listen))
        finally:
            server.should_exit = True
            sock.close()

    async def _installer_api(self, listen: str) -> None:
        host, port = parse_host_port(listen)
        sock = bind_tcp(host, port)
        config = uvicorn.Config(
            create_installer_app(self.ctx),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = _EmbeddedServer(config)
        logger.info("installer API (/boot/v1) on http://%s:%d/", host, sock.getsockname()[1])
        try:
            await server.serve(sockets=[sock])
        finally:
            server.should_exit = True
            sock.close()
