"""When the transfer pump spins for a client's datagram instead of sleeping (pure policy).

A lock-step transfer is a ping-pong: the pump sends a block and waits for its ACK. Sleeping in
the kernel for that ACK means being woken when it comes, and a wake-up is not free: on another
CPU it is an inter-processor interrupt (on a virtual machine, an exit to the hypervisor), on an
idle CPU the way back out of its idle state. When the client answers within tens of
microseconds (a client on this machine, a fast LAN), that wake-up costs more than the wait
itself. So the pump first *spins* a little — asks again without blocking, giving the CPU away
(``sched_yield``) between asks so that a client on the same CPU runs — and only then sleeps. It
is the user-space twin of the kernel's ``SO_BUSY_POLL``, which needs ``CAP_NET_ADMIN`` and a
NAPI device (loopback has none).

Spinning burns CPU when it does not pay, so :class:`BusyPoll` keeps count: after ``misses``
spins in a row that ended without the datagram, it rests for the next ``rest`` waits (they
sleep at once), then tries again. A Pi whose ACKs come later than the spin budget thus costs a
few spins per thousand blocks. ``tftp.busy_poll: 0`` turns spinning off.

The pump (:mod:`piman.netboot.tftp.pump`) waits through :meth:`BusyPoll.read` (a parked
transfer's socket) and :meth:`BusyPoll.poll` (the epoll set): spin for as long as
:meth:`BusyPoll.spin_for` says, then sleep.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

__all__ = ["BusyPoll"]

_DONTWAIT = socket.MSG_DONTWAIT


class BusyPoll:
    """How long the next wait spins; told whether each spin paid off."""

    def __init__(self, budget: float, *, misses: int = 8, rest: int = 1024) -> None:
        if budget < 0 or misses < 1 or rest < 0:
            raise ValueError("budget and rest must be >= 0, misses >= 1")
        self.budget = budget  # seconds a wait spins at most
        self.misses = misses  # spins in a row that come back empty before a rest
        self.rest = rest  # waits that sleep at once after that
        self.hits = 0  # counters, for logs and tests
        self.missed = 0
        self.rests = 0
        self._in_a_row = 0
        self._resting = 0

    def spin_for(self) -> float:
        """Seconds the wait about to start spins before it sleeps (0.0: sleep at once)."""
        if self._resting:
            self._resting -= 1
            return 0.0
        return self.budget

    def hit(self, count: int = 1) -> None:
        """The datagram came while spinning (``count`` times)."""
        self.hits += count
        self._in_a_row = 0

    def miss(self) -> None:
        """The spin ended without it: the wait goes on to sleep."""
        self.missed += 1
        self._in_a_row += 1
        if self._in_a_row >= self.misses:
            self._in_a_row = 0
            self._resting = self.rest
            self.rests += 1

    # The waits -----------------------------------------------------------------------------

    def read(self, fd: int, recv: Callable[[int, int], bytes], size: int) -> bytes:
        """A datagram from a blocking socket that had none at once: spin for it a while, then
        sleep in ``read`` (the socket's receive timeout ends the sleep: BlockingIOError)."""
        spin = self.spin_for()
        if spin:
            clock = time.perf_counter
            give_way = os.sched_yield
            until = clock() + spin
            while True:
                give_way()  # a client on this CPU runs now, not at our next sleep
                try:
                    data = recv(size, _DONTWAIT)
                except BlockingIOError:
                    if clock() < until:
                        continue
                    self.miss()
                    break
                self.hit()
                return data
        return os.read(fd, size)

    def poll(
        self, poll: Callable[[float, int], list[tuple[int, int]]], wait: float, max_events: int
    ) -> list[tuple[int, int]]:
        """``epoll_wait``: ready sockets at once, or after a spin, or after a sleep of at most
        ``wait`` seconds."""
        events = poll(0.0, max_events)
        if events or wait <= 0.0:
            return events
        spin = self.spin_for()
        if spin:
            clock = time.perf_counter
            give_way = os.sched_yield
            until = clock() + min(spin, wait)
            while True:
                give_way()
                events = poll(0.0, max_events)
                if events:
                    self.hit()
                    return events
                if clock() >= until:
                    self.miss()
                    break
        return poll(wait, max_events)
