"""SSH to the nodes as values: where to log in, and how one host's command ended.

The SSH client (``piman.inventory.ssh``) hands these to the CLI, the web, the power driver
``ssh-reboot`` and agentless monitoring (see ``piman.context.SshHandle``), so they live in the
domain, below every capability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SshResult", "SshTarget"]


@dataclass(frozen=True, slots=True)
class SshTarget:
    """One host to log in to: ``name`` labels its output (the node's name)."""

    name: str
    host: str
    port: int = 22
    user: str = "pi"


@dataclass(frozen=True, slots=True)
class SshResult:
    """How a command ended on one host.

    ``exit_status`` is None when there is none: the host could not be reached, refused the
    login or its key, or the command ran past its deadline; ``error`` then says why in one line
    (``connection refused``, ``timed out after 10 s``, ``host key changed: …``).
    """

    name: str
    host: str
    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    elapsed: float = 0.0
    truncated: bool = False  # output past ssh.max_output was dropped

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0

    def as_line(self) -> dict[str, Any]:
        """The result as one JSON line of ``POST /api/v1/ssh/run`` (and ``piman ssh run -o
        json``): the node's name under ``node``."""
        return {
            "node": self.name,
            "host": self.host,
            "exit_status": self.exit_status,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
            "elapsed": round(self.elapsed, 3),
            "truncated": self.truncated,
        }
