"""``python -m piman.monitor.agent`` (what ``piman agent`` and the systemd unit run): arguments in,
the threaded server out, until interrupted."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from piman.monitor.agent.app import DEFAULT_PORT, TOKEN_ENV, AgentApp
from piman.monitor.agent.collectors import LinuxNode
from piman.monitor.agent.server import AgentServer, make_ssl_context

__all__ = ["main"]

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m piman.monitor.agent``: parse arguments, serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="piman agent", description="Serve this machine's metrics and events."
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--listen", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--tls-cert", default=None)
    parser.add_argument("--tls-key", default=None)
    parser.add_argument("--token-file", default=None, help=f"bearer token file (or ${TOKEN_ENV})")
    parser.add_argument("--vcgencmd-timeout", type=float, default=2.0)
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    token = os.environ.get(TOKEN_ENV) or None
    try:
        if args.token_file:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
            if not token:  # never serve open because a secret went missing
                logger.error("[agent] --token-file %s is empty: not starting", args.token_file)
                return 2
        ssl_context = make_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        app = AgentApp(LinuxNode(vcgencmd_timeout=args.vcgencmd_timeout), token=token)
        server = AgentServer(app, args.listen, args.port, ssl_context=ssl_context)
    except OSError as err:  # includes ssl.SSLError: one line, exit 1, no traceback
        logger.error("[agent] cannot start: %s", err)  # noqa: TRY400 - no traceback wanted
        return 1
    logger.info(
        "[agent] serving on %s:%d (%s%s)",
        args.listen,
        server.port,
        "https" if ssl_context else "http",
        ", bearer token" if token else "",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
