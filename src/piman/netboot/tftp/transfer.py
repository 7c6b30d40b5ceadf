"""One TFTP transfer as the pump holds it: its session, its socket (its TID), and how its
datagrams leave that socket.

With a window (RFC 7440), a run of full-size blocks leaves in one ``sendmsg`` through UDP
generic segmentation offload (``UDP_SEGMENT``): the kernel cuts it into the same datagrams, for
one system call per window instead of one per block. A device that refuses it turns it off for
that transfer, and its blocks go one by one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from dataclasses import dataclass, field

from piman.netboot.tftp.session import TftpSession

__all__ = ["Transfer", "enable_gso"]

logger = logging.getLogger(__name__)

_UDP_SEGMENT = 103  # linux/udp.h: UDP GSO segment size
_GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
_GSO_MAX_BYTES = 65507 - 8  # one UDP payload at most


@dataclass(eq=False)
class Transfer:
    """One transfer: its session, its socket (its TID) and the pump's bookkeeping."""

    xfer: int
    peer: tuple[str, int]
    session: TftpSession
    log_prefix: str = ""
    sock: socket.socket | None = None
    deadline: float = 0.0
    armed_at: float | None = None  # earliest deadline the heap holds for this transfer
    segment: int = 0  # UDP GSO segment size (blksize + 4) when windows go out in one send
    fd: int = field(default=-1)

    def send_all(self, datagrams: list[bytes]) -> None:
        """Send datagrams in order; a window of full blocks goes out in one GSO send.

        Raises :class:`OSError` when the client is gone (ICMP port unreachable). A full socket
        buffer loses the datagrams quietly: the session's timer resends them.
        """
        segment = self.segment
        if segment and len(datagrams) > 1:
            per_call = max(1, min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // segment))
            for i in range(0, len(datagrams), per_call):
                chunk = datagrams[i : i + per_call]
                if len(chunk) > 1 and min(map(len, chunk[:-1])) == max(map(len, chunk)) == segment:
                    self._send(chunk)
                    if self.segment:
                        continue
                for datagram in chunk:  # short blocks inside, or GSO just turned itself off
                    self._send(datagram)
            return
        for datagram in datagrams:
            self._send(datagram)

    def _send(self, data: bytes | list[bytes]) -> None:
        """Send one datagram, or a GSO train: datagrams of the segment size (the last may be
        shorter) gathered by one ``sendmsg``, nothing copied here. A device that refuses GSO
        turns it off for this transfer, and this returns without sending: the caller then
        sends the datagrams one by one.
        """
        sock = self.sock
        if sock is None:
            raise OSError(errno.EBADF, "transfer closed")
        try:
            if isinstance(data, list):
                sock.sendmsg(data)
            else:
                sock.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # socket buffer full: the datagrams are lost, the timer resends them
        except OSError as err:
            if isinstance(data, list) and err.errno in (errno.EIO, errno.EINVAL, errno.EMSGSIZE):
                logger.debug("%s UDP GSO refused (%s): one send per block", self.log_prefix, err)
                self.segment = 0
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_UDP, _UDP_SEGMENT, 0)
                return
            raise


def enable_gso(sock: socket.socket, segment: int) -> int:
    """Let one ``send`` carry a train of datagrams of ``segment`` bytes (Linux UDP GSO, 4.18+);
    returns the segment size, or 0 when the kernel does not offer it."""
    try:
        sock.setsockopt(socket.IPPROTO_UDP, _UDP_SEGMENT, segment)
    except OSError:
        return 0
    return segment
