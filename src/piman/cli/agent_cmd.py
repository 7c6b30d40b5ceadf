"""``piman agent``: the node agent (metrics and events of this machine).

The command checks its arguments here, then replaces itself (``execv``, same PID) with
``python -m piman.monitor.agent``: the CLI's own imports (Typer, Rich, pydantic) would otherwise
triple the agent's resident memory on a Pi. The token travels in the environment, never in the
process's command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from piman.cli.common import EXIT_BAD_INPUT, fail

__all__ = ["register"]

TOKEN_ENV = "PIMAN_AGENT_TOKEN"


def agent(
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 9110,
    listen: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 all IPv4, :: all IPv4 and IPv6).")
    ] = "0.0.0.0",
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV,
            help="Require 'Authorization: Bearer TOKEN' (prefer the environment variable).",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Read the bearer token from this file.", show_default=False)
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Serve HTTPS with this PEM certificate.", show_default=False)
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="The PEM private key of --tls-cert.", show_default=False)
    ] = None,
    vcgencmd_timeout: Annotated[
        float, typer.Option(min=0.1, max=30.0, help="Deadline for vcgencmd calls, in seconds.")
    ] = 2.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve this machine's /metrics (node_exporter names plus rpi_*) and /events (JSON).

    Runs until stopped; needs only the Python standard library (pip install "piman\\[agent]").
    A systemd unit ships in the package (piman/monitor/agent/piman-agent.service).

    Example: PIMAN_AGENT_TOKEN=s3cret piman agent --port 9110 --tls-cert a.pem --tls-key a.key
    """
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", EXIT_BAD_INPUT)
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level {log_level!r}: expected DEBUG, INFO, WARNING or ERROR", EXIT_BAD_INPUT)
    env = dict(os.environ)
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            fail(f"--token-file {token_file}: {err.strerror}", EXIT_BAD_INPUT)
        if not token:
            fail(f"--token-file {token_file} is empty", EXIT_BAD_INPUT)
    if token:
        env[TOKEN_ENV] = token
    else:
        env.pop(TOKEN_ENV, None)
    args = ["--port", str(port), "--listen", listen]
    args += ["--vcgencmd-timeout", str(vcgencmd_timeout), "--log-level", log_level.upper()]
    if tls_cert is not None and tls_key is not None:
        _check_tls(tls_cert, tls_key)
        args += ["--tls-cert", str(tls_cert.resolve()), "--tls-key", str(tls_key.resolve())]
    _check_bind(listen, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "piman.monitor.agent", *args], env)


def _check_tls(cert: Path, key: Path) -> None:
    import ssl

    from piman.monitor.agent.server import make_ssl_context

    try:
        make_ssl_context(str(cert), str(key))
    except FileNotFoundError as err:
        fail(f"TLS file not found: {err.filename}", EXIT_BAD_INPUT)
    except (ssl.SSLError, OSError) as err:
        fail(f"cannot use --tls-cert {cert} / --tls-key {key}: {err}", EXIT_BAD_INPUT)


def _check_bind(host: str, port: int) -> None:
    """Fail with one line now if the address cannot be bound (bad address, port in use)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except socket.gaierror:
        fail(f"--listen {host}: not an address of this machine", EXIT_BAD_INPUT)
    except OSError as err:
        fail(f"cannot listen on {host}:{port}: {err.strerror}")


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
