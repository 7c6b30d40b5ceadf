"""Demo: a small OS image for the virtual Pis to reinstall, and a stand-in installer tree.

:func:`build_demo_image` makes a 40 MiB disk image the way Pi images are laid out: an MBR, a FAT
boot partition at 1 MiB (``config.txt``, ``cmdline.txt``, the file names a Pi's firmware asks
for, and cloud-init NoCloud seeds so piman customises it per node) and an ext4 root after it
(``/etc/os-release`` saying it is piman's demo OS, some random data to stream). It uses the
same tools as any image build, without root: ``sfdisk``, ``mkfs.vfat`` and ``mcopy`` (mtools),
``mke2fs -d``. The demo imports it as environment ``demo-os`` through the normal import path.

The virtual Pis do not boot the installer's kernel: they run ``installer.sh`` directly
(:mod:`piman.sim.installer`). The boot tree still answers a Pi's TFTP requests from
``data_dir/installer/arm64/``; :func:`stand_in_installer_tree` fills it with labelled
placeholder files when no real installer was built there (``piman installer build``).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = [
    "DEMO_ENVIRONMENT",
    "TOOLS",
    "build_demo_image",
    "missing_tools",
    "stand_in_installer_tree",
]

DEMO_ENVIRONMENT = "demo-os"
TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
MIB = 1 << 20
_BOOT_MIB, _ROOT_MIB = 16, 23
_FIRMWARE = (
    "bootcode.bin", "start.elf", "start4.elf", "fixup.dat", "fixup4.dat", "kernel8.img",
    "kernel_2712.img", "bcm2710-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb", "bcm2712-rpi-5-b.dtb",
    "overlays/overlay_map.dtb",
)  # fmt: skip
_PLACEHOLDER = b"piman demo: a placeholder, not firmware (virtual Pis boot nothing)\n"


def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing_tools() -> list[str]:
    """The image tools this machine lacks (Debian: fdisk, dosfstools, mtools, e2fsprogs)."""
    return [t for t in TOOLS if _tool(t) is None]


def _run(tool: str, *args: str, stdin: str | None = None, cwd: Path | None = None) -> None:
    path = _tool(tool) or tool
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(
        [path, *args], input=stdin, text=True, check=True, capture_output=True, cwd=cwd, env=env
    )


def build_demo_image(path: Path) -> Path:
    """Write the demo OS image to ``path`` (CalledProcessError when a tool fails)."""
    boot_at, root_at = 1 * MIB, (1 + _BOOT_MIB) * MIB
    size = root_at + _ROOT_MIB * MIB
    with path.open("wb") as f:
        f.truncate(size)
    _run("sfdisk", "-q", str(path), stdin=(
        "label: dos\nlabel-id: 0x7069d3e0\n"
        f"start={boot_at // 512}, size={_BOOT_MIB * 2048}, type=c\n"
        f"start={root_at // 512}, size={_ROOT_MIB * 2048}, type=83\n"
    ))  # fmt: skip
    _run("mkfs.vfat", "-F", "16", "-n", "bootfs", "--offset", str(boot_at // 512), str(path),
         str(_BOOT_MIB * 1024))  # fmt: skip
    rng = random.Random(2026)
    with tempfile.TemporaryDirectory(prefix="piman-demo-image-") as tmp:
        boot, root = Path(tmp) / "boot", Path(tmp) / "root"
        files = {
            "config.txt": b"# piman demo OS\narm_64bit=1\nenable_uart=1\n",
            "cmdline.txt": b"console=serial0,115200 root=PARTUUID=7069d3e0-02 rootwait "
            b"ds=nocloud\n",
            "user-data": b"#cloud-config\n",
            "meta-data": b"instance-id: piman-demo\n",
            "network-config": b"version: 2\n",
            **dict.fromkeys(_FIRMWARE, _PLACEHOLDER),
        }
        for name, data in files.items():
            (boot / name).parent.mkdir(parents=True, exist_ok=True)
            (boot / name).write_bytes(data)
        tops = sorted({n.split("/", 1)[0] for n in files})
        _run("mcopy", "-s", "-i", f"{path}@@{boot_at}", *tops, "::/", cwd=boot)
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "hostname").write_text("piman-demo\n")
        (root / "etc" / "os-release").write_text(
            'PRETTY_NAME="piman demo OS"\nID=piman-demo\nVERSION_ID="1"\n'
        )
        (root / "var").mkdir()
        (root / "var" / "payload.bin").write_bytes(rng.randbytes(8 * MIB))
        _run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "rootfs",
             "-O", "^metadata_csum,^64bit,^huge_file", "-E", f"offset={root_at}",
             "-d", str(root), str(path), str(_ROOT_MIB * 256))  # fmt: skip
    return path


def stand_in_installer_tree(data_dir: Path) -> Path:
    """``data_dir/installer/arm64`` with placeholders, unless a real build is there."""
    tree = data_dir / "installer" / "arm64"
    if (tree / "build.json").exists():
        return tree
    for name in _FIRMWARE:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        if not (tree / name).exists():
            (tree / name).write_bytes(_PLACEHOLDER)
    (tree / "README").write_text(
        "piman demo: placeholders. The virtual Pis run installer.sh from the piman package;\n"
        "`piman installer build` puts the real kernel, initramfs and firmware here.\n"
    )
    return tree
