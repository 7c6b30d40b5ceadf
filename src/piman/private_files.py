"""Files only the manager's own user may read: ``data_dir``, the databases and the logs.

The umask decides the mode of what ``mkdir`` and ``open`` create, and the usual 022 makes
``data_dir`` 0755 and ``piman.db`` 0644: password hashes, token digests, the audit log and the
logs readable by every account on the manager machine. What piman makes for itself is therefore
created with an explicit mode: directories 0700 (``data_dir`` and any missing parent piman
makes for it), files 0600. A file that already exists with bits for group or others (made by an
older piman) is tightened to 0600 and a warning names it; one piman may not change (another
user's) is a one-line warning, never a traceback. A few system calls each: start-up paths call
them inline.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "create_private",
    "make_private",
    "make_private_dir",
]

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700; an existing one is left alone.

    Raises OSError when a directory cannot be created.
    """
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)  # the umask only ever removes bits
        except FileExistsError:  # made meanwhile by another process
            pass


def create_private(path: Path) -> None:
    """Create the empty file ``path`` with mode 0600 (and its directory, 0700) unless it exists.

    Never logs (safe inside a logging handler). Raises OSError when it cannot be created.
    """
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def make_private(path: Path, *companions: str) -> None:
    """:func:`create_private`, then tighten ``path`` (and ``path`` + each existing companion
    suffix, such as SQLite's ``-wal``) to 0600 if group or others have bits on it.

    Raises OSError when the file cannot be created; a mode it cannot change is a warning.
    """
    create_private(path)
    for name in (path, *(path.with_name(path.name + suffix) for suffix in companions)):
        try:
            current = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if not current & 0o077:
            continue
        tight = current & PRIVATE_FILE_MODE
        try:
            os.chmod(name, tight)
        except OSError as err:
            logger.warning(
                "%s is readable by others (%04o) and cannot be made private: %s",
                name, current, err.strerror or err,
            )  # fmt: skip
        else:
            logger.warning("%s was readable by others (%04o); now %04o", name, current, tight)
