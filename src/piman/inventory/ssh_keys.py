"""The fleet key and its provisioning: ``piman ssh keygen`` and ``piman ssh push-key``.

``push-key`` follows the orchestration seed's policy (``ssh.push_key``), one host at a time
under the usual concurrency limit:

1. log in with the fleet key; if that works, the host is done (``key already works``);
2. refused, and ``use_password`` on with a password configured (``ssh.password`` or
   ``ssh.password_file``, the image's default): log in once with the password — after the host
   key check, so the password never goes to a host we do not trust — and append the fleet's
   public key to ``~/.ssh/authorized_keys`` (once: a key already there is left alone; ``~/.ssh``
   0700, the file 0600);
3. with ``disable_password`` on, write ``/etc/ssh/sshd_config.d/piman.conf``
   (``PasswordAuthentication no``, directly as root, else through ``sudo -n``) and reload sshd
   (``systemctl reload ssh`` where systemd runs, else SIGHUP to the pid in ``/run/sshd.pid``:
   outside systemd, in a chroot or container, ``systemctl`` ignores the request and says 0);
4. check: the key now logs in, and a password login is refused.

Each host ends with one line saying what was done or why not.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from piman.config.ssh import SshSettings
from piman.errors import ConfigError, ConfigProblem, ConflictError
from piman.fleet.ssh import SshResult, SshTarget
from piman.inventory.ssh import FleetSsh, SshFailure
from piman.private_files import make_private_dir

__all__ = [
    "DROPIN",
    "PushOutcome",
    "configured_password",
    "keygen",
    "public_key",
    "push_key",
]

DROPIN = "/etc/ssh/sshd_config.d/piman.conf"
RELOAD_CHECKS = (0.5, 1.0, 2.0)  # waits before looking again at an sshd that reloads

_INSTALL = """umask 077
d="$HOME/.ssh"; f="$d/authorized_keys"
mkdir -p "$d" && chmod 700 "$d" && touch "$f" && chmod 600 "$f" || exit 1
if grep -qF {key} "$f"; then echo present; exit 0; fi
if [ -s "$f" ] && [ -n "$(tail -c1 "$f")" ]; then echo >> "$f"; fi
printf '%s\\n' {line} >> "$f" && echo added
"""

_DISABLE = f"""if [ "$(id -u)" = 0 ]; then s=; else s="sudo -n"; fi
printf '# written by piman ssh push-key (the fleet key is installed)\\n\
PasswordAuthentication no\\nKbdInteractiveAuthentication no\\n' | $s tee {DROPIN} > /dev/null \
|| exit 1
$s chmod 644 {DROPIN}
if [ -d /run/systemd/system ] && $s systemctl reload ssh 2> /dev/null; then :
else $s kill -HUP "$(cat /run/sshd.pid)" || exit 1
fi
"""


def keygen(path: Path, *, force: bool = False) -> str:
    """A new ed25519 fleet key: the private half at ``path`` (0600, in a 0700 directory), the
    public one at ``path.pub``; returns the public line. ConflictError when one exists and
    ``force`` is off."""
    pub = path.with_name(path.name + ".pub")
    if path.exists() and not force:
        raise ConflictError(
            f"{path} exists: pass --force to replace it (nodes that trust it must get the new one)"
        )
    make_private_dir(path.parent)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"piman@{socket.gethostname()}")
    _write_atomic(path, key.export_private_key("openssh"), 0o600)
    line = key.export_public_key("openssh").decode().strip()
    _write_atomic(pub, (line + "\n").encode(), 0o644)
    return line


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def public_key(fleet: FleetSsh) -> str:
    """The fleet key's public line (from ``.pub`` when present, else derived)."""
    pub = fleet.key_path.with_name(fleet.key_path.name + ".pub")
    try:
        return pub.read_text().strip()
    except FileNotFoundError:
        return fleet.client_key().export_public_key("openssh").decode().strip()


def configured_password(settings: SshSettings) -> str | None:
    """The image's default password for push-key (``ssh.password``, else the first line of
    ``ssh.password_file``), or None. ConfigError when the file cannot be read."""
    if settings.password is not None:
        return settings.password.get_secret_value()
    if settings.password_file is None:
        return None
    try:
        text = settings.password_file.read_text()
    except OSError as err:
        problem = ConfigProblem("ssh.password_file", "", f"{settings.password_file}: {err}")
        raise ConfigError([problem]) from err
    return text.splitlines()[0] if text else None


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What push-key did on one host; ``ok`` when the fleet key works there now."""

    name: str
    host: str
    ok: bool
    what: str


async def push_key(
    fleet: FleetSsh,
    targets: Sequence[SshTarget],
    *,
    password: str | None,
    concurrency: int | None = None,
) -> list[PushOutcome]:
    """Run the policy (module docstring) on every target; outcomes in the targets' order."""
    line = public_key(fleet)
    limit = asyncio.Semaphore(max(1, concurrency or fleet.settings.concurrency))

    async def one(target: SshTarget) -> PushOutcome:
        async with limit:
            try:
                what, ok = await _push_one(fleet, target, line, password)
            except SshFailure as err:
                what, ok = f"failed: {err}", False
            return PushOutcome(target.name, target.host, ok, what)

    return list(await asyncio.gather(*(one(t) for t in targets)))


async def _push_one(
    fleet: FleetSsh, target: SshTarget, line: str, password: str | None
) -> tuple[str, bool]:
    policy = fleet.settings.push_key
    try:
        conn = await fleet.connect(target)
    except SshFailure as err:
        if not str(err).startswith("login refused"):
            return f"failed: {err}", False
        if not policy.use_password:
            return f"refused: {err}, and push_key.use_password is off", False
        if password is None:
            return (
                f"refused: {err}, and no password is configured "
                "(ssh.password or ssh.password_file)",
                False,
            )
    else:
        conn.close()
        return "key already works", True
    try:
        conn = await fleet.connect(target, password=password)
    except SshFailure as err:
        return f"refused: {err}", False
    timeout = fleet.settings.command_timeout
    key = " ".join(line.split()[:2])
    try:
        script = _INSTALL.format(key=shlex.quote(key), line=shlex.quote(line))
        installed = await fleet.execute(conn, target, script, timeout)
        if not installed.ok:
            return f"failed: installing the key: {_why(installed)}", False
        disabled = None
        if policy.disable_password:
            disabled = await fleet.execute(conn, target, _DISABLE, timeout)
    finally:
        conn.close()
    refused = await _key_refused(fleet, target, reloading=disabled is not None)
    if refused is not None:
        return f"failed: key installed but still refused: {refused}", False
    done = "key installed" if "added" in installed.stdout else "key was in authorized_keys"
    if disabled is None:
        return done, True
    if not disabled.ok:
        why = _why(disabled)
        return f"{done}; could not disable password login: {why}", False
    if await _password_still_works(fleet, target, password):
        return (
            f"{done}; password login still accepted after the reload "
            f"(does another file in /etc/ssh/sshd_config.d turn it on?)",
            False,
        )
    return f"{done}, password login disabled", True


async def _key_refused(fleet: FleetSsh, target: SshTarget, *, reloading: bool) -> str | None:
    """Why the fleet key does not log in (None: it does). While sshd reloads (it re-executes
    itself) its port refuses for a moment: that is looked at again."""
    waits = (0.0, *RELOAD_CHECKS) if reloading else (0.0,)
    why = ""
    for wait in waits:
        await asyncio.sleep(wait)
        try:
            conn = await fleet.connect(target)
        except SshFailure as err:
            why = str(err)
            if why.startswith("login refused"):
                return why
            continue
        conn.close()
        return None
    return why


async def _password_still_works(fleet: FleetSsh, target: SshTarget, password: str | None) -> bool:
    """Whether sshd still takes the password, allowing the reload a moment to take."""
    assert password is not None
    accepted = False
    for wait in (0.0, *RELOAD_CHECKS):
        await asyncio.sleep(wait)
        try:
            conn = await fleet.connect(target, password=password)
        except SshFailure as err:
            if str(err).startswith("login refused"):
                return False
            continue  # sshd re-executing itself: look again
        conn.close()
        accepted = True
    return accepted


def _why(result: SshResult) -> str:
    lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
    if result.error:
        return result.error
    return lines[-1] if lines else f"exit status {result.exit_status}"
