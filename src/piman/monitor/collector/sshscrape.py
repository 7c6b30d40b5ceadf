"""Agentless monitoring, the manager side: nodes marked ``monitor: ssh`` sampled through ctx.ssh.

Theory of operation
-------------------
The scraper treats such a node like any other target (its own phase in the interval, one
deadline, ``up``/``scrape_duration_seconds``/``scrape_samples_scraped``, the ``node``, ``job``
and ``instance`` labels, ``/events`` fields), except for the fetch: instead of an HTTP GET it
asks :class:`SshSampler` to run :data:`~.sshsample.COMMAND` on the node through the
:class:`~piman.context.SshHandle` (whose ``ssh.concurrency`` ceiling bounds every caller
together), then, on the scraper's parser thread, to turn the output into the agent's families
(:func:`~.sshsample.collect`) rendered as exposition text. From there the body takes the same
path as an agent's: the same limits, the same store, the same names; ``instance`` is
``host:port`` of SSH.

A failed sample raises :class:`SshSampleFailed` with a one-word ``reason`` for the
``piman_collector_scrape_failures`` counter: ``timeout`` and ``unreachable`` (a node that is
off; quiet, ``up`` 0 and NodeDown say it), ``ssh_auth``, ``ssh_host_key``, ``ssh_key``,
``ssh_error``, ``ssh_exit`` (the command failed on the node), ``body_size_limit`` (more output
than ``ssh.max_output``) and ``no_ssh`` (the manager has no SSH client). Nothing is written on
the node and nothing is installed: the channel is SSH's.

Cost, measured on this 2-core machine (heavily loaded by other work at the time): on the node
about 11 ms of CPU and 35 KB of output per sample; on the manager 12-14 ms of CPU per sample
(asyncssh's key exchange and login, the parse and the render; the store's ingest adds ~1 ms),
so one core samples on the order of a thousand agentless nodes every 15 s. An agent scrape
needs no key exchange and no parsing of /proc text on the manager: agents stay the default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from piman.context import SshHandle
from piman.errors import NotFoundError, PimanError
from piman.fleet.ssh import SshResult, SshTarget
from piman.monitor.agent import procfs
from piman.monitor.agent.exposition import render
from piman.monitor.collector.sshsample import COMMAND, collect, parse_output

__all__ = ["SshSampleFailed", "SshSampler", "reason_of", "ssh_targets"]

logger = logging.getLogger(__name__)


class SshSampleFailed(PimanError):
    """A node could not be sampled over SSH; ``reason`` is one word (see the module docstring)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_UNREACHABLE = (
    "connection refused",
    "no route to host",
    "network unreachable",
    "connection reset",
    "connection closed",
    "connection lost",
    "cannot resolve",
)


def reason_of(result: SshResult) -> str | None:
    """The failure reason of one SSH run, None when it worked."""
    if result.error is None:
        return None if result.exit_status == 0 else "ssh_exit"
    text = result.error.lower()
    if "timed out" in text:
        return "timeout"
    if any(text.startswith(w) for w in _UNREACHABLE):
        return "unreachable"
    if "host key" in text:
        return "ssh_host_key"
    if text.startswith("login refused"):
        return "ssh_auth"
    if "fleet key" in text:
        return "ssh_key"
    return "ssh_error"


class SshSampler:
    """Runs the sampling command on nodes and renders what it prints (see the module docstring).

    ``handle`` None: every sample fails with ``no_ssh`` (the manager logs it once, at start).
    """

    def __init__(
        self,
        handle: SshHandle | None,
        *,
        connect_timeout: float | None = None,
        command: str = COMMAND,
    ) -> None:
        self.handle = handle
        self.connect_timeout = connect_timeout
        self.command = command
        self._cpu: dict[str, procfs.CpuTimes] = {}
        self._lock = threading.Lock()

    async def output(self, target: SshTarget, command_timeout: float) -> str:
        """The command's output on ``target`` (its deadlines: connecting, at most
        ``command_timeout``, and running it, ``command_timeout``); SshSampleFailed."""
        if self.handle is None:
            raise SshSampleFailed("no_ssh", "the manager has no SSH client")
        connect = min(self.connect_timeout or command_timeout, command_timeout)
        results = await self.handle.run(
            [target], self.command, connect_timeout=connect, command_timeout=command_timeout
        )
        if not results:
            raise SshSampleFailed("ssh_error", "no result")
        result = results[0]
        if result.truncated:
            raise SshSampleFailed("body_size_limit", "the output is over ssh.max_output")
        reason = reason_of(result)
        if reason is not None:
            if result.error is not None:
                detail = result.error
            else:
                err = result.stderr.strip().splitlines()
                detail = f"exit status {result.exit_status}" + (f": {err[-1]}" if err else "")
            raise SshSampleFailed(reason, detail)
        return result.stdout

    def render(self, node: str, output: str) -> tuple[str, dict[str, Any] | None]:
        """A node's output as an exposition body and ``/events`` fields (MalformedSample if it
        is not whole). Thread-safe: it runs on the scraper's parser thread."""
        sample = parse_output(output)
        with self._lock:
            previous = self._cpu.get(node)
        families, events, total = collect(sample, previous)
        with self._lock:
            if total is not None:
                self._cpu[node] = total
            else:
                self._cpu.pop(node, None)
        return render(families).decode("utf-8"), events

    def forget(self, nodes: Sequence[str]) -> None:
        """Drop the CPU reference of nodes no longer sampled."""
        with self._lock:
            for node in nodes:
                self._cpu.pop(node, None)


async def ssh_targets(
    handle: SshHandle | None,
    names: Sequence[str],
    fallback: Mapping[str, SshTarget],
) -> list[SshTarget]:
    """Where to sample each of ``names``: the handle's answer (one call for all; node by node
    when that fails, leaving out the nodes it refuses, logged), or ``fallback``'s without a
    handle (samples then fail with ``no_ssh``, so the nodes are down)."""
    if not names:
        return []
    if handle is None:
        return [fallback[n] for n in names if n in fallback]
    try:
        return await handle.targets(list(names))
    except (NotFoundError, ValueError):
        pass
    out: list[SshTarget] = []
    for name in names:
        try:
            out += await handle.targets([name])
        except (NotFoundError, ValueError) as err:
            logger.debug("[node=%s] not sampled over SSH: %s", name, err)
    return out
