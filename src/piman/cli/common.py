"""What every command shares: the console, config loading, and turning errors into exit codes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

from piman.config import Config, default_config_path, load_config
from piman.errors import ConfigError, NotFoundError, PimanError

if TYPE_CHECKING:
    from piman.store import Store

T = TypeVar("T")

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "ConfigOption",
    "HostsOption",
    "console",
    "err_console",
    "fail",
    "load",
    "local_actor",
    "with_store",
]

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (default: $PIMAN_CONFIG, else ./piman.yaml).",
        show_default=False,
    ),
]
HostsOption = Annotated[
    Path | None,
    typer.Option(
        "--hosts", help="A hosts.csv of mac,ip[,hostname] reservations.", show_default=False
    ),
]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print one line to stderr and exit."""
    err_console.print(f"[red]error:[/red] {message}", soft_wrap=True, markup=True)
    raise typer.Exit(code)


def local_actor() -> str:
    """How the audit log names whoever runs an offline command: the local account.

    The operating system's name for the real user (not ``$USER``, which anyone can set), and
    the account that ran ``sudo`` when there is one: ``local:root (sudo by alice)``.
    """
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"local:{name} (sudo by {sudo})" if sudo and sudo != name else f"local:{name}"


def with_store(config: Path | None, work: Callable[[Config, Store], Awaitable[T]]) -> T:
    """Open the configured store, run ``work(config, store)``, close it: the offline path of
    commands that also take ``--url``. Errors become one line (2 for a bad name or value)."""
    from piman.store import Store

    cfg = load(config)

    async def run() -> T:
        store = Store(cfg.database_url)
        await store.open()
        try:
            return await work(cfg, store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (NotFoundError, ValueError) as err:
        fail(str(err), EXIT_BAD_INPUT)
    except PimanError as err:
        fail(str(err))


def load(config: Path | None, hosts: Path | None = None, overlay: Path | None = None) -> Config:
    """Load the configuration the user named (or the default one) with its overlay (``overlay``,
    else ``$PIMAN_OVERLAY``) laid over it, exiting 2 on problems."""
    from piman.config.overlay import load_overlay

    path = config or default_config_path()
    extra = overlay or (
        Path(os.environ["PIMAN_OVERLAY"]) if os.environ.get("PIMAN_OVERLAY") else None
    )
    try:
        cfg = load_config(path, hosts=hosts)
        return cfg if extra is None else load_overlay(cfg, extra)
    except ConfigError as err:
        report_config_error(err)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def report_config_error(err: ConfigError) -> None:
    for problem in err.problems:
        err_console.print(str(problem), soft_wrap=True, markup=False)


def handle(err: BaseException) -> NoReturn:
    """Turn an error that escaped a command into one line and an exit code."""
    if isinstance(err, ConfigError):
        report_config_error(err)
        sys.exit(EXIT_BAD_INPUT)
    if isinstance(err, NotFoundError):
        err_console.print(f"error: {err}", soft_wrap=True, markup=False)
        sys.exit(EXIT_BAD_INPUT)
    if isinstance(err, PimanError):
        err_console.print(f"error: {err}", soft_wrap=True, markup=False)
        sys.exit(EXIT_FAILED)
    if isinstance(err, KeyboardInterrupt):
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    if os.environ.get("PIMAN_DEBUG"):
        raise err
    err_console.print(
        f"internal error: {type(err).__name__}: {err} (set PIMAN_DEBUG=1 for the traceback)",
        soft_wrap=True,
        markup=False,
    )
    sys.exit(EXIT_FAILED)
