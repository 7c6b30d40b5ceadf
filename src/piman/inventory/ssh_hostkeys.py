"""The fleet's known host keys: an OpenSSH-format ``known_hosts`` file that piman owns.

Each line names a node by its address and its name (``198.18.0.10,n0 ssh-ed25519 AAAA…``;
``[198.18.0.10]:2222,n0 …`` on another port than 22), so ``ssh -o UserKnownHostsFile=`` reads
it too. The file is private (0600) and every change replaces it whole (write to a temporary
file beside it, then rename), so a reader never sees half a file.

The decision (:func:`verdict`) is pure: given the keys known for a host, the key it offers and
the policy, it says whether to go on, learn the key (trust on first use) or refuse, and why in
one line. A changed key is always refused, whatever the policy: a reinstalled node is forgotten
by hand (``piman ssh forget NODE``), which is the moment an operator vouches for it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from piman.private_files import make_private_dir

__all__ = ["HostKey", "KnownHosts", "Verdict", "host_pattern", "verdict"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HostKey:
    """One line of the file: the names it applies to and the key (``ssh-ed25519 AAAA…``)."""

    patterns: tuple[str, ...]
    key: str  # "<algorithm> <base64>", no comment

    @property
    def algorithm(self) -> str:
        return self.key.split(" ", 1)[0]

    def line(self) -> str:
        return f"{','.join(self.patterns)} {self.key}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with an offered host key: ``ok`` (known), ``learn`` (first contact, tofu)
    or ``refuse`` with ``reason``."""

    action: Literal["ok", "learn", "refuse"]
    reason: str = ""


def host_pattern(address: str, port: int = 22) -> str:
    """How known_hosts writes an address (OpenSSH's ``[addr]:port`` off port 22)."""
    return address if port == 22 else f"[{address}]:{port}"


def verdict(
    known: list[str],
    offered: str,
    *,
    policy: Literal["tofu", "strict"],
    who: str,
    fingerprint: dict[str, str],
    forget_hint: str,
) -> Verdict:
    """Whether to trust ``offered`` (``alg base64``) for a host whose known keys are ``known``.

    ``who`` names the host in messages (``n0 (198.18.0.10)``); ``fingerprint`` maps each key to
    its ``SHA256:…`` form; ``forget_hint`` is the command that forgets the host.
    """
    if offered in known:
        return Verdict("ok")
    if known:
        old = ", ".join(fingerprint.get(k, "?") for k in known)
        return Verdict(
            "refuse",
            f"host key changed for {who}: known {old}, offered {fingerprint.get(offered, '?')}; "
            f"if it was reinstalled: {forget_hint}",
        )
    if policy == "strict":
        return Verdict(
            "refuse",
            f"unknown host key for {who} (host_keys: strict): offered "
            f"{fingerprint.get(offered, '?')}; add it to the known hosts or use host_keys: tofu",
        )
    return Verdict("learn")


class KnownHosts:
    """The file at ``path``: read on every lookup that follows a change on disk, written whole.

    Not safe against two processes learning keys at the same instant (the last rename wins,
    one learnt key is lost and learnt again on the next contact); within one process callers
    serialise changes themselves.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: list[HostKey] = []
        self._index: dict[str, list[int]] = {}  # pattern → positions in _entries
        self._stamp: tuple[int, int] | None = None

    def entries(self) -> list[HostKey]:
        """Every known key, in file order (reloaded when the file changed on disk)."""
        return list(self._current())

    def _current(self) -> list[HostKey]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._keep([], None)
            return self._entries
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._keep(self._parse(self.path.read_text(errors="replace")), stamp)
        return self._entries

    def _keep(self, entries: list[HostKey], stamp: tuple[int, int] | None) -> None:
        """Hold ``entries`` and index them by pattern (a lookup per host of a run of 1,000
        hosts stays a dictionary read, not a scan of 1,000 lines)."""
        self._entries, self._stamp = entries, stamp
        self._index = {}
        for i, entry in enumerate(entries):
            for pattern in entry.patterns:
                self._index.setdefault(pattern, []).append(i)

    @staticmethod
    def _parse(text: str) -> list[HostKey]:
        out: list[HostKey] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", "@", "|")):
                continue  # markers and hashed names are not ours; kept out of lookups
            parts = line.split()
            if len(parts) < 3:
                continue
            out.append(HostKey(tuple(parts[0].split(",")), f"{parts[1]} {parts[2]}"))
        return out

    def lookup(self, *names: str) -> list[str]:
        """The keys of lines that name any of ``names`` (address pattern, node name)."""
        entries = self._current()
        found = sorted({i for n in names if n for i in self._index.get(n, ())})
        return [entries[i].key for i in found]

    def learn(self, names: tuple[str, ...], key: str) -> None:
        """Add a line for ``names`` (address pattern first, then the node's name)."""
        entries = self.entries()
        if any(e.key == key and set(names) <= set(e.patterns) for e in entries):
            return
        self._write([*entries, HostKey(names, key)])

    def forget(self, *names: str) -> int:
        """Drop every line naming any of ``names``; how many lines went."""
        wanted = {n for n in names if n}
        entries = self.entries()
        kept = [e for e in entries if not wanted & set(e.patterns)]
        if len(kept) != len(entries):
            self._write(kept)
        return len(entries) - len(kept)

    def _write(self, entries: list[HostKey]) -> None:
        make_private_dir(self.path.parent)
        text = "".join(e.line() + "\n" for e in entries)
        fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp: 0600 already
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        st = self.path.stat()
        self._keep(entries, (st.st_mtime_ns, st.st_size))
