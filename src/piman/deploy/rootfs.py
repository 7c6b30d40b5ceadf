"""A disk image made from a root filesystem tree: what :mod:`piman.deploy.sources` does with a
root-filesystem tarball (``rootfs.tgz``, ``.tar.xz`` …) once it is extracted.

``extract(name, pieces, work)`` feeds the decompressed tarball to GNU tar, which extracts it into
``work/root``; ``build_image(name, work, image)`` turns that tree into an MBR disk image at
``image`` (an existing, empty file). Tool failures raise one
:class:`~piman.deploy.errors.ImageError` line naming the source ``name`` and the tool.

Theory of operation.

- Extraction: GNU tar, because it refuses ``..`` and absolute member names and defers links
  that point outside the tree until the end, so a hostile tarball cannot write outside
  ``work/root``. As root it keeps owners (numeric), modes, device nodes and xattrs (file
  capabilities such as ``ping``'s); otherwise tar and mke2fs run under one ``fakeroot`` state
  file (without xattrs), and without fakeroot the import is refused.
- Layout, as Raspberry Pi OS lays its images out: an MBR; partition 1, type ``0x0c``, a 256 MiB
  FAT32 (2 KiB clusters) labelled ``bootfs`` at 4 MiB, holding the tarball's ``/boot/firmware``
  files (else ``/boot``'s), copied with ``mcopy -s``; partition 2, type ``0x83``, ext4 labelled
  ``rootfs`` right after it, holding everything else, made by ``mke2fs -d`` (e2fsprogs 1.47.0
  reads a directory there, not a tarball). The boot directory stays in the root filesystem,
  empty, as the mount point. Links, devices and sockets under the boot directory are dropped
  (FAT has none; following a link could read the host's files); boot files whose names differ
  only in case are refused.
- Size: the root partition holds the tree's 4 KiB blocks (hard links once, one block per
  directory per 100 entries, long symlinks) plus a quarter, plus 256 bytes per inode, plus
  160 MiB for the journal and metadata, rounded up to 4 MiB; inodes are 1.5 × the tree's plus
  1024 when mke2fs's default ratio would give fewer. The OS grows it on first boot.
- ext4 features follow pi-gen (no ``metadata_csum``, ``64bit`` or ``huge_file``, which older
  e2fsprogs on a node may not know) and add no ``uninit_bg``: every group's block bitmap is then
  written, which lets :mod:`piman.deploy.bmap` map exactly the blocks in use.
- When ``cmdline.txt`` says ``root=PARTUUID=<id>-02`` the disk identifier is set to ``<id>``,
  so the image boots as the tarball's OS (and its ``/etc/fstab``) expect.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from piman.deploy.errors import ImageError

__all__ = ["build_image", "extract"]

_BLOCK = 4096
_EXT4_FEATURES = "^metadata_csum,^uninit_bg,^64bit,^huge_file"  # see the module doc

_MIB = 1 << 20
_BOOT_START, _BOOT_SIZE = 4 * _MIB, 256 * _MIB
_FAT_CLUSTER = 2048  # mkfs.vfat -s 4: 131,072 clusters, comfortably FAT32


def _run(
    name: str,
    argv: list[str],
    *,
    stdin_text: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Runs a tool; a failure becomes one ImageError line with the tool's last complaint."""
    stdin = None if stdin_text is not None else subprocess.DEVNULL
    result = subprocess.run(
        argv, input=stdin_text, stdin=stdin, cwd=cwd, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {result.returncode}"
        tool = next(a for a in argv if a not in ("fakeroot", "--") and not a.startswith(("-", "/")))
        raise ImageError(f"{name}: {tool} failed: {reason}")


def _fakeroot(name: str, work: Path) -> list[str]:
    """The prefix that keeps file owners: nothing as root, else fakeroot with a saved state."""
    if os.geteuid() == 0:
        return []
    if shutil.which("fakeroot") is None:
        raise ImageError(f"{name}: making an image of a root filesystem needs root or fakeroot")
    state = work / "fakeroot.state"
    state.touch()
    return ["fakeroot", "-i", str(state), "-s", str(state), "--"]


def extract(name: str, pieces: Iterator[bytes], work: Path) -> None:
    """GNU tar extracts the decompressed tarball into ``work/root``."""
    root = work / "root"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    keep = ["--xattrs", "--xattrs-include=*"] if os.geteuid() == 0 else []
    argv = [*_fakeroot(name, work), "tar", "-x", "-f", "-", "-C", str(root), "--numeric-owner",
            "--same-permissions", *keep]  # fmt: skip
    with (work / "tar.log").open("w+") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=log)
        assert proc.stdin is not None
        try:
            with proc.stdin as pipe:
                for piece in pieces:
                    try:
                        pipe.write(piece)
                    except BrokenPipeError:  # tar stopped at the end marker or failed: read on
                        break
                for _piece in pieces:
                    pass
            status = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        complaints = [line.strip() for line in log if line.strip()]
    if status != 0:
        reason = complaints[-1] if complaints else f"exit status {status}"
        raise ImageError(f"{name}: tar could not extract the root filesystem: {reason}")


def _stage_boot(name: str, root: Path, boot: Path) -> int:
    """Moves the boot files (``/boot/firmware``, else ``/boot``) out of ``root`` into ``boot``,
    leaving the mount point empty; drops what FAT cannot hold (links, devices). Returns the bytes
    they take on the FAT partition."""
    boot.mkdir()
    source = next((d for d in (root / "boot/firmware", root / "boot") if _has_files(d)), None)
    if source is not None:
        for child in list(source.iterdir()):
            child.rename(boot / child.name)
    used = 0
    for path, dirs, files in os.walk(boot):  # never follows links
        names = [n.casefold() for n in dirs + files]
        if len(names) != len(set(names)):
            raise ImageError(f"{name}: two boot files in {path} differ only in case (FAT forbids)")
        for entry in [*dirs, *files]:
            file = Path(path, entry)
            if file.is_symlink() or not (file.is_file() or file.is_dir()):
                file.unlink()
            elif file.is_file():
                used += -(-file.stat().st_size // _FAT_CLUSTER) * _FAT_CLUSTER
        dirs[:] = [d for d in dirs if Path(path, d).exists()]
        used += _FAT_CLUSTER * (1 + len(dirs) + len(files) // 32)
    if used > _BOOT_SIZE - 4 * _MIB:
        raise ImageError(
            f"{name}: the boot files take {used // _MIB} MiB, more than fit in 256 MiB"
        )
    return used


def _has_files(directory: Path) -> bool:
    return directory.is_dir() and not directory.is_symlink() and any(directory.iterdir())


def _measure(root: Path) -> tuple[int, int]:
    """(bytes of 4 KiB blocks, inodes) the tree needs in ext4; hard links counted once."""
    seen: set[tuple[int, int]] = set()
    data, inodes, pending = 0, 1, [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            count = 0
            for entry in entries:
                count += 1
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                inodes += 1
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) or st.st_size > 59:
                    data += -(-st.st_size // _BLOCK) * _BLOCK
            data += -(-max(count * 40, 1) // _BLOCK) * _BLOCK
    return data, inodes


def build_image(name: str, work: Path, image: Path) -> None:
    """Makes the disk image at ``image`` from the tree in ``work/root`` (see the module doc)."""
    root, boot = work / "root", work / "bootfs"
    _stage_boot(name, root, boot)
    data, inodes = _measure(root)
    root_bytes = -(-(data * 5 // 4 + inodes * 256 + 160 * _MIB) // (4 * _MIB)) * 4 * _MIB
    root_start = _BOOT_START + _BOOT_SIZE
    with image.open("r+b") as out:
        out.truncate(root_start + root_bytes)
    cmdline = boot / "cmdline.txt"
    text = cmdline.read_text(errors="replace") if cmdline.is_file() else ""
    disk_id = re.search(r"root=PARTUUID=([0-9a-fA-F]{8})-02\b", text)
    script = "label: dos\n" + (f"label-id: 0x{disk_id.group(1)}\n" if disk_id else "")
    script += f"start={_BOOT_START // 512}, size={_BOOT_SIZE // 512}, type=c\n"
    script += f"start={root_start // 512}, size={root_bytes // 512}, type=83\n"
    _run(name, ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)], stdin_text=script)
    fat = ["-F", "32", "-S", "512", "-s", str(_FAT_CLUSTER // 512), "-n", "bootfs"]
    offset = ["--offset", str(_BOOT_START // 512)]
    _run(name, ["mkfs.vfat", *fat, *offset, str(image), str(_BOOT_SIZE // 1024)])
    entries = sorted(p.name for p in boot.iterdir())
    if entries:
        target = ["-i", f"{image}@@{_BOOT_START}", "-s", "-p", "-m", "-Q"]
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run(name, ["mcopy", *target, *entries, "::/"], cwd=boot, env=env)
    wanted_inodes = inodes * 3 // 2 + 1024
    count = ["-N", str(wanted_inodes)] if wanted_inodes > root_bytes // 16384 else []
    options = ["-t", "ext4", "-b", str(_BLOCK), "-L", "rootfs", "-O", _EXT4_FEATURES, *count]
    where = ["-E", f"offset={root_start},nodiscard"]
    blocks = str(root_bytes // _BLOCK)
    mke2fs = ["mke2fs", "-F", "-q", *options, *where, "-d", str(root), str(image), blocks]
    _run(name, [*_fakeroot(name, work), *mke2fs])
