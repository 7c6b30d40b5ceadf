"""Logging set-up for the commands: stderr, and a rotating file under ``data_dir/logs/``."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

__all__ = ["setup_logging"]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", log_dir: Path | None = None) -> Path | None:
    """Configure the root logger; return the log file's path when one is written."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
    root.addHandler(stderr)
    log_file: Path | None = None
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_file = log_dir / "piman.log"
            rotating = logging.handlers.RotatingFileHandler(
                log_file, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
            )
        except OSError as err:
            logging.getLogger(__name__).warning("cannot write logs under %s: %s", log_dir, err)
            log_file = None
        else:
            rotating.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(rotating)
    for noisy in ("uvicorn.error", "aiosqlite", "alembic.runtime.migration", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return log_file
