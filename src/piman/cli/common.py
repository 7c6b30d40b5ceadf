"""What every command shares: the console, config loading, and turning errors into exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from piman.config import Config, default_config_path, load_config
from piman.errors import ConfigError, NotFoundError, PimanError

__all__ = [
    "ConfigOption",
    "HostsOption",
    "console",
    "err_console",
    "fail",
    "load",
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


def load(config: Path | None, hosts: Path | None = None) -> Config:
    """Load the configuration the user named (or the default one), exiting 2 on problems."""
    path = config or default_config_path()
    try:
        return load_config(path, hosts=hosts)
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
