"""The asyncio shell of the agent, for processes that already run an event loop (the demo's
virtual Pis, benchmarks): the same :class:`AgentApp` and HTTP core as ``piman agent``.

A source whose ``collect`` reads the real machine (``blocking=True``) runs in a worker thread;
a simulated one is called on the loop, which keeps hundreds of in-process agents cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from piman.monitor.agent.app import AgentApp
from piman.monitor.agent.http import (
    MAX_HEAD,
    MalformedRequest,
    Response,
    encode_response,
    find_head_end,
    parse_request,
)

__all__ = ["AgentStreamServer"]

logger = logging.getLogger(__name__)


class AgentStreamServer:
    """One agent listening on ``host:port`` until :meth:`close`; open connections are dropped
    on close, as when a Pi loses power."""

    def __init__(
        self,
        app: AgentApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        blocking: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.blocking = blocking
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, ssl=self.ssl_context, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def _respond(self, data: bytes) -> tuple[bytes, bool]:
        try:
            request = parse_request(data)
        except MalformedRequest as err:
            logger.warning("[agent port=%d] bad request: %s", self.port, err)
            return encode_response(Response(400, b"bad request\n"), keep_alive=False), False
        keep_alive = request.keep_alive and not request.has_body
        if self.blocking:
            response = await asyncio.to_thread(self.app.handle, request)
        else:
            response = self.app.handle(request)
        head_only = request.method == "HEAD"
        return encode_response(response, head_only=head_only, keep_alive=keep_alive), keep_alive

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        buf = bytearray()
        try:
            while True:
                end = find_head_end(buf)
                while end < 0:
                    if len(buf) > MAX_HEAD:
                        writer.write(encode_response(Response(431), keep_alive=False))
                        await writer.drain()
                        return
                    async with asyncio.timeout(self.idle_timeout):
                        chunk = await reader.read(65536)
                    if not chunk:
                        return
                    buf += chunk
                    end = find_head_end(buf)
                data = bytes(buf[: end - 4])
                del buf[:end]
                out, keep_alive = await self._respond(data)
                writer.write(out)
                await writer.drain()
                if not keep_alive:
                    return
        except (OSError, TimeoutError) as err:
            logger.debug("[agent port=%d] connection ended: %s", self.port, err)
        finally:
            self._writers.discard(writer)
            writer.close()
