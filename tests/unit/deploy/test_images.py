"""inspect() on Pi-like disk images built with sfdisk, mkfs.vfat, mcopy and mke2fs.

``build_image`` is shared with the bmap and sources tests.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from piman.deploy.errors import ImageError
from piman.deploy.images import extract_boot_files, inspect, read_boot_file
from tests.support import needs_tool

MIB = 1 << 20
RASPIOS_BOOT = {
    "cmdline.txt": b"console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootwait\n",
    "config.txt": b"arm_64bit=1\n[all]\n",
    "issue.txt": b"Raspberry Pi reference 2024-11-19\nGenerated using pi-gen\n",
    "kernel8.img": random.Random(7).randbytes(300_000),
    "bcm2711-rpi-4-b.dtb": random.Random(8).randbytes(40_000),
    "overlays/README": b"overlays\n",
    "overlays/vc4-kms-v3d-pi4.dtbo": random.Random(9).randbytes(3_000),
}
ROOT = {"etc/hostname": b"raspberrypi\n", "etc/os-release": b'ID=debian\nVERSION_ID="12"\n'}
LINUX = "0fc63daf-8483-4772-8e79-3d69e47d7de4"
ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(args, input=stdin, text=True, check=True, capture_output=True, cwd=cwd, env=env)


def build_image(
    path: Path,
    boot: dict[str, bytes] | None = None,
    root: dict[str, bytes] | None = None,
    *,
    table: str = "mbr",
    fat_bits: int = 16,
    boot_mib: int = 16,
    root_mib: int = 16,
    boot_label: str = "bootfs",
    root_label: str = "rootfs",
    ext_options: tuple[str, ...] = (),
    other_mib: int = 0,
    tail_mib: int = 0,
) -> Path:
    """A Pi-like disk image: a FAT boot partition at 1 MiB holding ``boot``, an ext4 root after
    it holding ``root``, then optionally an ``other_mib`` partition of random bytes and
    ``tail_mib`` of unpartitioned space. Holes where nothing was written."""
    needs_tool("sfdisk", "mkfs.vfat", "mcopy", "mke2fs")
    boot = RASPIOS_BOOT if boot is None else boot
    root = ROOT if root is None else root
    boot_at, root_at = 1 * MIB, (1 + boot_mib) * MIB
    other_at = root_at + root_mib * MIB
    size = other_at + other_mib * MIB + tail_mib * MIB + (MIB if table == "gpt" else 0)
    with path.open("wb") as f:
        f.truncate(size)
    kinds = {"mbr": ("c", "83", "da"), "gpt": (ESP, LINUX, LINUX)}[table]
    script = f"label: {'dos' if table == 'mbr' else 'gpt'}\n"
    script += f"start={boot_at // 512}, size={boot_mib * 2048}, type={kinds[0]}\n"
    script += f"start={root_at // 512}, size={root_mib * 2048}, type={kinds[1]}\n"
    if other_mib:
        script += f"start={other_at // 512}, size={other_mib * 2048}, type={kinds[2]}\n"
    run("sfdisk", "-q", str(path), stdin=script)
    cluster = ("-s", "1") if fat_bits == 32 else ()
    run("mkfs.vfat", "-F", str(fat_bits), *cluster, "-n", boot_label, "--offset",
        str(boot_at // 512), str(path), str(boot_mib * 1024))  # fmt: skip
    staging = path.with_name(path.name + ".boot")
    for name, data in boot.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    if boot:
        tops = sorted({n.split("/", 1)[0] for n in boot})
        run("mcopy", "-s", "-i", f"{path}@@{boot_at}", *tops, "::/", cwd=staging)
    tree = path.with_name(path.name + ".root")
    tree.mkdir()
    for name, data in root.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", root_label, *ext_options,
        "-E", f"offset={root_at}", "-d", str(tree), str(path), f"{root_mib * 256}")  # fmt: skip
    if other_mib:
        with path.open("r+b") as f:
            f.seek(other_at)
            f.write(random.Random(10).randbytes(other_mib * MIB // 2))
    return path


def test_a_raspios_image_is_described_in_full(tmp_path: Path) -> None:
    image = build_image(tmp_path / "raspios.img")
    info = inspect(image)
    assert info.size == image.stat().st_size == 33 * MIB
    assert info.table is not None
    assert info.table.kind == "mbr"
    assert [(p.index, p.filesystem, p.detail, p.label) for p in info.partitions] == [
        (1, "fat", "FAT16", "bootfs"),
        (2, "ext4", "ext4", "rootfs"),
    ]
    assert info.boot_partition == 1
    assert sorted(info.boot_files) == sorted(RASPIOS_BOOT)
    assert info.cmdline == RASPIOS_BOOT["cmdline.txt"].decode()
    assert info.config_txt == "arm_64bit=1\n[all]\n"
    assert info.issue is not None
    assert info.issue.startswith("Raspberry Pi reference")
    assert (info.os_family, info.customisation) == ("raspios", "firstrun")


def test_a_gpt_image_with_fat32_and_an_unknown_partition(tmp_path: Path) -> None:
    image = build_image(tmp_path / "gpt.img", table="gpt", fat_bits=32, boot_mib=40, other_mib=2)
    info = inspect(image)
    assert info.table is not None
    assert info.table.kind == "gpt"
    assert [(p.filesystem, p.detail) for p in info.partitions] == [
        ("fat", "FAT32"),
        ("ext4", "ext4"),
        ("other", ""),
    ]
    assert info.partitions[0].partition.type == ESP


@pytest.mark.parametrize(
    ("boot", "labels", "family", "customisation"),
    [
        # Trixie Raspberry Pi OS: cloud-init NoCloud files on the boot partition
        ({**RASPIOS_BOOT, "user-data": b"#cloud-config\n", "meta-data": b"instance-id: a\n",
          "network-config": b"version: 2\n"}, ("bootfs", "rootfs"), "raspios", "cloudinit"),
        # Ubuntu preinstalled server for Raspberry Pi
        ({"cmdline.txt": b"console=tty1 root=LABEL=writable rootfstype=ext4 rootwait\n",
          "config.txt": b"[all]\nkernel=vmlinuz\n", "user-data": b"#cloud-config\n",
          "meta-data": b""}, ("system-boot", "writable"), "ubuntu", "cloudinit"),
        # Debian's raspi images: sysconf.txt, which piman does not write
        ({"cmdline.txt": b"console=tty0 root=LABEL=RASPIROOT rw fsck.repair=yes\n",
          "sysconf.txt": b"#\n"}, ("RASPIFIRM", "RASPIROOT"), "debian", "none"),
        # Something else entirely, asking for NoCloud on its command line
        ({"cmdline.txt": b"root=/dev/mmcblk0p2 ds=nocloud;s=file:///boot/\n"},
         ("BOOT", "root"), "unknown", "cloudinit"),
        # An image customised for firstrun already
        ({"cmdline.txt": b"root=/dev/mmcblk0p2 systemd.run=/boot/firstrun.sh\n",
          "firstrun.sh": b"#!/bin/sh\n"}, ("BOOT", "root"), "unknown", "firstrun"),
        ({"config.txt": b"\n"}, ("BOOT", "root"), "unknown", "none"),
    ],
)  # fmt: skip
def test_os_family_and_customisation_format(
    tmp_path: Path,
    boot: dict[str, bytes],
    labels: tuple[str, str],
    family: str,
    customisation: str,
) -> None:
    image = build_image(tmp_path / "os.img", boot, boot_label=labels[0], root_label=labels[1])
    info = inspect(image)
    assert (info.os_family, info.customisation) == (family, customisation)


def test_boot_files_read_in_any_case_and_extract_with_their_directories(tmp_path: Path) -> None:
    image = build_image(tmp_path / "raspios.img")
    info = inspect(image)
    assert read_boot_file(image, info, "/CMDLINE.TXT") == RASPIOS_BOOT["cmdline.txt"]
    assert read_boot_file(image, info, "overlays/readme") == b"overlays\n"
    assert read_boot_file(image, info, "missing.txt") is None
    assert read_boot_file(image, info, "overlays") is None
    written = extract_boot_files(image, info, tmp_path / "out")
    assert sorted(written) == sorted(RASPIOS_BOOT)
    for name, data in RASPIOS_BOOT.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_an_image_without_a_table_has_no_partitions(tmp_path: Path) -> None:
    image = tmp_path / "blank.img"
    image.write_bytes(bytes(MIB))
    info = inspect(image)
    assert (info.table, info.partitions, info.boot_partition, info.boot_files) == (
        None,
        (),
        None,
        (),
    )
    assert (info.os_family, info.customisation) == ("unknown", "none")
    assert read_boot_file(image, info, "config.txt") is None
    assert extract_boot_files(image, info, tmp_path / "out") == ()


def test_a_truncated_image_is_refused_naming_the_file(tmp_path: Path) -> None:
    image = build_image(tmp_path / "raspios.img")
    with image.open("r+b") as f:
        f.truncate(20 * MIB)
    with pytest.raises(ImageError, match=r"^raspios\.img: .* truncated$"):
        inspect(image)


def test_an_unreadable_fat_is_refused_naming_file_and_partition(tmp_path: Path) -> None:
    image = build_image(tmp_path / "raspios.img")
    with image.open("r+b") as f:  # FAT16: the root directory's first entry now claims a loop
        f.seek(MIB + 14)
        reserved = struct.unpack("<H", f.read(2))[0]
        f.seek(MIB + 22)
        fat_sectors = struct.unpack("<H", f.read(2))[0]
        root_dir = MIB + (reserved + 2 * fat_sectors) * 512
        f.seek(root_dir)
        entries = f.read(32 * 64)
        at = next(i for i in range(0, len(entries), 32) if entries[i + 11] & 0x10)  # overlays/
        cluster = struct.unpack_from("<H", entries, at + 26)[0]
        f.seek(MIB + reserved * 512 + 2 * cluster)
        f.write(struct.pack("<H", cluster))
    with pytest.raises(ImageError, match=r"^raspios\.img: partition 1 \(FAT16\): .*loops"):
        inspect(image)


def test_a_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        inspect(tmp_path)
