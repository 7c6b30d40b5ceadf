"""Commands on the fleet over SSH (asyncssh): :class:`FleetSsh`, the ``SshHandle`` of the context.

Theory of operation. Every host gets its own connection, made under two limits: a semaphore
of ``ssh.concurrency`` shared by every caller of this object (the ceiling), and the caller's own
``concurrency`` for one run. Each connection has a deadline (``connect_timeout``: TCP, key
exchange and login) and each command another (``command_timeout``); a host that misses one is
reported with a one-line error and its connection dropped, it never holds up the others.

Host keys are checked before anything is sent, the password of ``push-key`` included: asyncssh
is given an empty trust list, so it asks :class:`_HostKeyCheck` about every key, and the
decision is :func:`piman.inventory.ssh_hostkeys.verdict` over the fleet's ``known_hosts``
(learnt on first contact under ``host_keys: tofu``, known only under ``strict``; a changed key is
always refused). A key learnt on first contact is written once the login succeeded.

Login is with the fleet key only (``ssh.key_file``, made by ``piman ssh keygen``): no agent, no
``~/.ssh/config``, no other keys, so what works here works the same from the manager. Output is
kept up to ``ssh.max_output`` bytes per host and stream (the rest is read and dropped, the result
says ``truncated``). Passwords and keys never reach a log line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from piman.config.models import Config
from piman.errors import PimanError
from piman.fleet.ports import Repositories
from piman.fleet.ssh import SshResult, SshTarget
from piman.inventory import groups, hosts
from piman.inventory.ssh_hostkeys import KnownHosts, Verdict, host_pattern, verdict

__all__ = ["CONNECTION_LOST", "FleetSsh", "SshFailure", "key_text"]

logger = logging.getLogger(__name__)

READ_CHUNK = 65536
CONNECTION_LOST = "connection lost while the command ran"


class SshFailure(PimanError):
    """One host could not be reached, refused the login or its key, or ran out of time; the
    message is the one line users see (``connection refused``, ``host key changed for …``)."""


def key_text(key: asyncssh.SSHKey) -> str:
    """A public key as ``<algorithm> <base64>`` (no comment): how known_hosts stores it."""
    parts = key.export_public_key("openssh").decode().split()
    return f"{parts[0]} {parts[1]}"


def _secs(value: float) -> str:
    return f"{value:g} s"


def _host_key_algs(known: list[str]) -> list[str]:
    """The host key algorithms to ask for: those of the known keys (as OpenSSH does), so a
    host with several keys offers one we can check."""
    algs: list[str] = []
    for key in known:
        alg = key.split(" ", 1)[0]
        if alg == "ssh-rsa":
            algs += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        elif alg not in algs:
            algs.append(alg)
    return algs


class _HostKeyCheck(asyncssh.SSHClient):
    """asyncssh asks this about the host key the server offers, before the login."""

    def __init__(self, fleet: FleetSsh, target: SshTarget, known: list[str]) -> None:
        self._fleet = fleet
        self._target = target
        self._known = known
        self.verdict: Verdict | None = None
        self.offered = ""

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key_text(key)
        prints = {self.offered: key.get_fingerprint("sha256")}
        for k in self._known:
            try:
                prints[k] = asyncssh.import_public_key(k).get_fingerprint("sha256")
            except (asyncssh.KeyImportError, ValueError):
                prints[k] = "(unreadable)"
        t = self._target
        self.verdict = verdict(
            self._known,
            self.offered,
            policy=self._fleet.settings.host_keys,
            who=f"{t.name} ({t.host})" if t.name != t.host else t.host,
            fingerprint=prints,
            forget_hint=f"piman ssh forget {t.name}",
        )
        return self.verdict.action != "refuse"


@dataclass
class _Capture:
    """What one stream of a command said, up to ``cap`` bytes."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    async def drain(self, reader: asyncssh.SSHReader[bytes]) -> None:
        while chunk := await reader.read(READ_CHUNK):
            room = self.cap - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            if len(chunk) > max(room, 0):
                self.truncated = True

    def text(self) -> str:
        return self.data.decode(errors="replace")


class FleetSsh:
    """The fleet's SSH client (see the module docstring). ``store`` serves :meth:`targets`
    (node names → addresses; without it, the configuration's nodes only); one per process."""

    def __init__(self, config: Config, store: Repositories | None = None) -> None:
        self.config = config
        self.settings = config.ssh
        self.store = store
        data_dir = config.manager.data_dir
        self.key_path: Path = self.settings.key_path(data_dir)
        self.known = KnownHosts(self.settings.known_hosts_path(data_dir))
        self._key: asyncssh.SSHKey | None = None
        self._ceiling: asyncio.Semaphore | None = None
        self._learning = asyncio.Lock()
        quiet = logging.getLogger("asyncssh")
        if quiet.level == logging.NOTSET:  # its INFO lines are one per connection step
            quiet.setLevel(logging.WARNING)

    # ------------------------------------------------------------------ targets

    async def targets(self, nodes: Sequence[str]) -> list[SshTarget]:
        """Node names, ``switch:port``, ``all`` and group names → where to log in.

        NotFoundError names an unknown spec; ValueError names the nodes with no known address.
        """
        if self.store is None:  # the configuration's nodes alone
            inventory = hosts.merge(self.config, [], [], [])
        else:
            inventory = await hosts.collect(self.config, self.store)
        return hosts.ssh_targets(groups.select(inventory, nodes), self.settings.port)

    # ------------------------------------------------------------------ keys

    def client_key(self) -> asyncssh.SSHKey:
        """The fleet key, read once; SshFailure says how to make one when it is missing."""
        if self._key is None:
            try:
                self._key = asyncssh.read_private_key(self.key_path)
            except FileNotFoundError:
                raise SshFailure(
                    f"no fleet key at {self.key_path}: make one with `piman ssh keygen`"
                ) from None
            except (OSError, asyncssh.KeyImportError) as err:
                raise SshFailure(f"cannot read the fleet key {self.key_path}: {err}") from err
        return self._key

    async def learn_host_key(self, target: SshTarget) -> str:
        """The host key ``target`` offers now replaces the known one (see SshHandle); its
        fingerprint. Only the key exchange runs: no login, nothing sent to the node."""
        timeout = self.settings.connect_timeout
        try:
            async with asyncio.timeout(timeout):
                key = await asyncssh.get_server_host_key(
                    target.host,
                    target.port,
                    config=[],
                    server_host_key_algs=[a.decode() for a in _plain_key_algs()],
                )
        except TimeoutError:
            raise SshFailure(f"timed out connecting after {_secs(timeout)}") from None
        except (OSError, asyncssh.Error) as err:
            raise SshFailure(_describe(err)) from None
        if key is None:
            raise SshFailure("the node offered no host key")
        pattern = host_pattern(target.host, target.port)
        async with self._learning:
            await asyncio.to_thread(self.known.forget, pattern, target.name)
            await asyncio.to_thread(self.known.learn, (pattern, target.name), key_text(key))
        fingerprint = key.get_fingerprint("sha256")
        logger.info(
            "[node=%s host=%s] learnt its host key after a deployment: %s",
            target.name,
            target.host,
            fingerprint,
        )
        return fingerprint

    # ------------------------------------------------------------------ connections

    async def connect(
        self,
        target: SshTarget,
        *,
        password: str | None = None,
        connect_timeout: float | None = None,
    ) -> asyncssh.SSHClientConnection:
        """A logged-in connection to ``target`` (with the fleet key, or ``password`` instead),
        its host key checked; SshFailure with the one-line reason otherwise."""
        timeout = connect_timeout or self.settings.connect_timeout
        pattern = host_pattern(target.host, target.port)
        known = self.known.lookup(pattern, target.name)
        check = _HostKeyCheck(self, target, known)
        auth: dict[str, object]
        if password is None:
            auth = {"client_keys": [self.client_key()], "preferred_auth": "publickey"}
        else:
            auth = {
                "client_keys": None,
                "password": password,
                "preferred_auth": "keyboard-interactive,password",
            }
        algs = _host_key_algs(known) or [a.decode() for a in _plain_key_algs()]
        try:
            async with asyncio.timeout(timeout):
                conn = await asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.user,
                    client_factory=lambda: check,
                    known_hosts=([], [], []),  # every key goes to _HostKeyCheck
                    server_host_key_algs=algs,
                    config=[],
                    agent_path=None,
                    x509_trusted_certs=None,
                    gss_host=None,
                    connect_timeout=timeout + 1,
                    **auth,
                )
        except asyncssh.HostKeyNotVerifiable as err:
            if check.verdict is not None and check.verdict.reason:
                raise SshFailure(check.verdict.reason) from None
            raise SshFailure(f"host key not accepted: {err.reason}") from None
        except asyncssh.PermissionDenied:
            raise SshFailure(
                f"login refused ({'publickey' if password is None else 'password'})"
            ) from None
        except TimeoutError:
            raise SshFailure(f"timed out connecting after {_secs(timeout)}") from None
        except (OSError, asyncssh.Error) as err:
            raise SshFailure(_describe(err)) from None
        except ValueError as err:  # asyncssh's word for arguments it cannot use
            raise SshFailure(str(err)) from None
        if check.verdict is not None and check.verdict.action == "learn":
            async with self._learning:
                await asyncio.to_thread(self.known.learn, (pattern, target.name), check.offered)
            logger.info(
                "[node=%s host=%s] learnt its host key on first contact: %s",
                target.name,
                target.host,
                asyncssh.import_public_key(check.offered).get_fingerprint("sha256"),
            )
        elif check.offered and check.offered not in self.known.lookup(pattern):
            # known by the node's name at another address (it moved): write the new one too
            async with self._learning:
                await asyncio.to_thread(self.known.learn, (pattern, target.name), check.offered)
        return conn

    async def execute(
        self,
        conn: asyncssh.SSHClientConnection,
        target: SshTarget,
        command: str,
        deadline: float,
    ) -> SshResult:
        """Run ``command`` on an open connection (elapsed is left 0 for the caller)."""
        cap = self.settings.max_output
        out, err = _Capture(cap), _Capture(cap)
        error: str | None = None
        status: int | None = None
        try:
            async with asyncio.timeout(deadline):
                proc = await conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
                await asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr))
                await proc.wait_closed()
                status = proc.exit_status
                if proc.exit_signal is not None:
                    status, error = None, f"killed by signal {proc.exit_signal[0]}"
                elif status is None:
                    error = CONNECTION_LOST
        except TimeoutError:
            error = f"command timed out after {_secs(deadline)}"
        except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError):
            error = CONNECTION_LOST
        except (OSError, asyncssh.Error) as exc:
            error = _describe(exc)
        return SshResult(
            name=target.name,
            host=target.host,
            exit_status=status,
            stdout=out.text(),
            stderr=err.text(),
            error=error,
            truncated=out.truncated or err.truncated,
        )

    async def one(
        self,
        target: SshTarget,
        command: str,
        *,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
    ) -> SshResult:
        """``command`` on one host, every failure in the result (never raised)."""
        t0 = time.monotonic()
        try:
            conn = await self.connect(target, connect_timeout=connect_timeout)
        except SshFailure as err:
            logger.debug("[node=%s host=%s] %s", target.name, target.host, err)
            return SshResult(
                target.name, target.host, None, error=str(err), elapsed=time.monotonic() - t0
            )
        try:
            result = await self.execute(
                conn, target, command, command_timeout or self.settings.command_timeout
            )
        finally:
            conn.close()
        return _with_elapsed(result, time.monotonic() - t0)

    # ------------------------------------------------------------------ many hosts

    async def stream(
        self,
        targets: Sequence[SshTarget],
        command: str,
        *,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        concurrency: int | None = None,
    ) -> AsyncIterator[SshResult]:
        """Run ``command`` on every target; each result as soon as its host is done."""
        async for _, result in self._indexed(
            targets, command, connect_timeout, command_timeout, concurrency
        ):
            yield result

    async def run(
        self,
        targets: Sequence[SshTarget],
        command: str,
        *,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        concurrency: int | None = None,
    ) -> list[SshResult]:
        """Run ``command`` on every target; the results in the targets' order."""
        results: list[SshResult | None] = [None] * len(targets)
        async for i, result in self._indexed(
            targets, command, connect_timeout, command_timeout, concurrency
        ):
            results[i] = result
        return [r for r in results if r is not None]

    async def _indexed(
        self,
        targets: Sequence[SshTarget],
        command: str,
        connect_timeout: float | None,
        command_timeout: float | None,
        concurrency: int | None,
    ) -> AsyncIterator[tuple[int, SshResult]]:
        if not targets:
            return
        if self._ceiling is None:
            self._ceiling = asyncio.Semaphore(self.settings.concurrency)
        ceiling = self._ceiling
        mine = asyncio.Semaphore(max(1, concurrency or self.settings.concurrency))

        async def work(i: int, target: SshTarget) -> tuple[int, SshResult]:
            async with mine, ceiling:
                result = await self.one(
                    target,
                    command,
                    connect_timeout=connect_timeout,
                    command_timeout=command_timeout,
                )
            return i, result

        pending = {asyncio.create_task(work(i, t)) for i, t in enumerate(targets)}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()  # a bug in one host's work is raised, never a hang
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _plain_key_algs() -> list[bytes]:
    """Host key algorithms without certificates (a node's certificate could not be checked)."""
    return list(get_default_public_key_algs())


def _with_elapsed(result: SshResult, elapsed: float) -> SshResult:
    return replace(result, elapsed=elapsed)


def _describe(err: BaseException) -> str:
    """One line for a connection that failed below the SSH login."""
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the address ({err.strerror})"
    if isinstance(err, OSError):
        if err.errno in (errno.EHOSTUNREACH, errno.EHOSTDOWN):
            return "no route to host"
        if err.errno == errno.ENETUNREACH:
            return "network unreachable"
        if err.errno == errno.ECONNRESET:
            return "connection reset by the host"
        return err.strerror or str(err)
    if isinstance(err, asyncssh.ConnectionLost):
        return "connection closed by the host"
    if isinstance(err, asyncssh.DisconnectError):
        return f"disconnected: {err.reason}"
    if isinstance(err, asyncssh.Error):
        return err.reason
    return str(err)
