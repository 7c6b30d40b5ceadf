"""Demo: a virtual Pi runs the real netboot installer when its boot tree serves it.

When the ``cmdline.txt`` a virtual Pi fetched over TFTP carries ``piman.token=`` (the boot tree
of a node being deployed), :func:`run_installer` runs the package's ``installer.sh`` the way the
installer's initramfs would (docs/boot-protocol.md), under the host's busybox: its applets (and
the host's openssl, which the initramfs has too) on ``PATH``, the command line from a file
(``PIMAN_CMDLINE``), the network left alone (``PIMAN_NO_NET``), and an exit instead of a reboot
(``PIMAN_NO_REBOOT``). The node's ``disk`` in the demo configuration is a sparse file, its
virtual SD card. The installer talks to the manager over loopback like a real one: hello, the
image by HTTP, progress, files, result.

Losing power kills it, as it would a real Pi. Without busybox on the machine the Pi says so
once and its deployment times out (``make demo`` installs busybox when run as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from piman.deploy.installer import SOURCES_DIR
from piman.sim.pi import VirtualPi

__all__ = ["applets", "installing", "run_installer"]

logger = logging.getLogger(__name__)

INSTALLER = SOURCES_DIR / "installer.sh"
_warned: set[str] = set()


def installing(cmdline: bytes) -> bool:
    """Whether a fetched ``cmdline.txt`` boots the installer (it carries the one-time token)."""
    return b"piman.token=" in cmdline


def applets(where: Path) -> Path | None:
    """A directory of busybox applet links and openssl (what the initramfs has on PATH), or
    None without busybox."""
    found = shutil.which("busybox")
    if found is None:
        return None
    busybox = Path(found).resolve()
    marker = where / "sh"
    if marker.exists():
        return where
    where.mkdir(parents=True, exist_ok=True)
    for name in ("sh", "wget", "dd", "sha256sum", "sync", "truncate", "timeout", "sed", "awk",
                 "cat", "date", "head", "tail", "grep", "tr", "cut", "mkdir", "rm", "stat",
                 "sleep", "printf", "echo", "cmp", "od", "hexdump", "wc", "ls", "tar", "mount",
                 "umount", "losetup", "blockdev", "expr", "test", "[", "mv", "cp", "seq",
                 "basename", "dirname", "xargs", "env", "true", "false", "kill",
                 "mkfifo"):  # fmt: skip
        link = where / name
        if not link.exists():
            link.symlink_to(busybox)
    openssl = shutil.which("openssl")  # without it the installer hashes with sha256sum
    if openssl is not None and not (where / "openssl").exists():
        (where / "openssl").symlink_to(Path(openssl).resolve())
    return where


async def run_installer(pi: VirtualPi, cmdline: bytes, work: Path) -> int | None:
    """Run the installer for ``pi``; its exit status (0 deployed, 1 failed, 2 refused, 3
    cancelled), or None when it could not run or lost power."""
    path = applets(work / "bin")
    if path is None:
        if pi.name not in _warned:
            _warned.add(pi.name)
            logger.warning(
                "[sim pi=%s] the installer needs busybox (apt install busybox-static): "
                "this virtual Pi cannot reinstall", pi.name,
            )  # fmt: skip
        return None
    mine = work / pi.name
    tmp = mine / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a fresh boot: /tmp is a tmpfs on a real Pi
    tmp.mkdir(parents=True)
    (mine / "cmdline").write_bytes(cmdline)
    env = {
        "PATH": str(path),
        "PIMAN_CMDLINE": str(mine / "cmdline"),
        "PIMAN_NO_NET": "1",
        "PIMAN_NO_REBOOT": "1",
        "PIMAN_TMP": str(tmp),
        "PIMAN_RETRY_PAUSE": "1",
    }
    logger.info("[sim pi=%s] booted the installer", pi.name)
    pi.installing = True
    proc = await asyncio.create_subprocess_exec(
        str(path / "sh"), str(INSTALLER),
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip

    async def console() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            logger.debug("[sim pi=%s] %s", pi.name, line.decode(errors="replace").rstrip())

    async def power_lost(boot: int) -> None:
        while pi.powered.is_set() and pi.boots == boot:
            await pi.power_changed()

    reader = asyncio.create_task(console())
    lost = asyncio.create_task(power_lost(pi.boots))
    done = asyncio.create_task(proc.wait())
    try:
        await asyncio.wait({done, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await done
        await reader
        pi.installing = False
        shutil.rmtree(tmp, ignore_errors=True)
    if lost.done() and not lost.cancelled():
        logger.info("[sim pi=%s] lost power while installing", pi.name)
        return None
    code = proc.returncode
    logger.info("[sim pi=%s] installer exited %s", pi.name, code)
    return code
