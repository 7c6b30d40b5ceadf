"""File descriptors: the process's limit, raised at start, and the share TFTP may take of it.

Every TFTP transfer holds a socket (its TID) and, for a file too large for the cache, the
file's descriptor: :data:`FDS_PER_TRANSFER`. With the usual soft limit of 1024, a few hundred
transfers would leave HTTP, the store and the lease journal without descriptors (EMFILE).
So the TFTP service, when it starts, raises the soft ``RLIMIT_NOFILE`` towards the hard one
(:func:`raise_nofile`; the whole manager gains: scrapes keep a connection per agent), then
takes for its transfers only what is left once ``tftp.fd_reserve`` descriptors are kept for
the rest of the manager (:func:`transfer_room`).
"""

from __future__ import annotations

import logging
import os
import resource

__all__ = ["FDS_PER_TRANSFER", "MIN_TRANSFERS", "WANTED", "open_fds", "raise_nofile",
           "transfer_room"]  # fmt: skip

logger = logging.getLogger(__name__)

FDS_PER_TRANSFER = 2  # its socket, and the file when it is too large to cache
MIN_TRANSFERS = 16  # served even when the reserve leaves less room (with a warning)
WANTED = 65536  # the soft limit asked for, when the hard limit allows it


def raise_nofile(wanted: int = WANTED) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to ``wanted``, or to the hard limit if lower; never
    lowers it. Returns the (soft, hard) limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as err:  # a container may refuse even within the hard limit
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, err)
        else:
            logger.info("open-file limit raised from %d to %d (hard limit %s)", soft, target,
                        "unlimited" if hard == resource.RLIM_INFINITY else hard)  # fmt: skip
            soft = target
    return soft, hard


def open_fds() -> int:
    """Descriptors this process has open now (0 when ``/proc`` is not there to tell)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return 0


def transfer_room(soft: int, in_use: int, reserve: int) -> int:
    """How many transfers fit in the ``soft`` limit beside the ``in_use`` descriptors and the
    ``reserve`` kept for the rest of the manager (may be 0 or less)."""
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return (soft - in_use - reserve) // FDS_PER_TRANSFER
