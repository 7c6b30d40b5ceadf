"""Logging set-up for the commands: stderr, and a rotating file under ``data_dir/logs/``.

The log names nodes, accounts and addresses: its directory is 0700 and its files 0600, whatever
the umask (:mod:`piman.private_files`).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
from pathlib import Path

from piman.private_files import create_private, make_private

__all__ = ["PrivateRotatingFileHandler", "setup_logging"]

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
BACKUPS = 5


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log whose files (and directory) only their owner may read: 0600 (0700)."""

    def _open(self) -> io.TextIOWrapper:
        create_private(Path(self.baseFilename))  # before open(): the umask does not decide
        return super()._open()


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
            log_file = log_dir / "piman.log"
            rotating = PrivateRotatingFileHandler(
                log_file, maxBytes=10 * 1024 * 1024, backupCount=BACKUPS, encoding="utf-8"
            )
        except OSError as err:
            logging.getLogger(__name__).warning(
                "cannot write logs under %s: %s", log_dir, err.strerror or err
            )
            log_file = None
        else:
            rotating.setFormatter(logging.Formatter(FORMAT))
            root.addHandler(rotating)
            # Files an older piman made under the umask: tightened, with a warning in the log.
            make_private(log_file, *(f".{n}" for n in range(1, BACKUPS + 1)))
    for noisy in ("uvicorn.error", "aiosqlite", "alembic.runtime.migration", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return log_file
