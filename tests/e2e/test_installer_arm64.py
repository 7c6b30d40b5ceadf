"""The arm64 installer, built from Debian's packages, reinstalls a QEMU arm64 guest's disk.

``build_installer(…, "arm64")`` downloads the real packages from the Debian mirror (cached in a
directory this test makes) and the test checks the Raspberry Pi boot tree it made. Then it boots
that ``kernel8.img`` and ``initrd.img`` in ``qemu-system-aarch64 -M virt`` with a virtio disk and
user networking: the installer gets an address from QEMU's DHCP, and the fake manager of the
script tests, listening on 127.0.0.1, is 10.0.2.2 for the guest. Afterwards the disk must hold
the image outside partition 1, and partition 1 its own files plus those of files.tar.

The amd64 installer gets the same run in ``qemu-system-x86_64`` (about 20 s more).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from pathlib import Path

from piman.deploy.installer import build_installer
from tests.integration.deploy.test_installer_script import (
    FILL,
    KEPT,
    MIB,
    FakeManager,
    make_image,
)
from tests.support import needs_tool

GUEST_SECONDS = 240  # generous: the guest runs under software emulation (TCG)
PI_TREE = (
    "kernel8.img", "initrd.img", "build.json", "bootcode.bin", "start.elf", "fixup.dat",
    "start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "bcm2711-rpi-400.dtb",
    "bcm2711-rpi-cm4.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb",
)  # fmt: skip
BOOT = (1 * MIB, 5 * MIB)  # partition 1 of make_image's disk, which the installer customises


def test_arm64_installer_builds_and_reinstalls_a_qemu_guest(tmp_path: Path) -> None:
    needs_tool("apt-get", "apt-cache", "dpkg-deb", "qemu-system-aarch64", "mtype")
    data, cache = tmp_path / "data", tmp_path / "cache"
    started = time.monotonic()
    build = build_installer(data, "arm64", cache_dir=cache)
    built_in = time.monotonic() - started
    tree = build.paths.root
    for name in PI_TREE:
        assert (tree / name).is_file(), f"{name} missing from {tree}"
    kernel = build.paths.kernel.read_bytes()
    assert kernel[0x38:0x3C] == b"ARM\x64", "kernel8.img is not an arm64 Image"
    initrd = build.paths.initrd.read_bytes()
    assert len(initrd) < 8 * MIB, f"initrd.img is {len(initrd)} bytes"
    unpacked = gzip.decompress(initrd)
    assert b"usr/lib/piman/installer.sh" in unpacked
    assert b"bin/openssl" in unpacked
    assert b"lib/aarch64-linux-gnu/libcrypto.so.3" in unpacked
    assert {"virtio_blk", "virtio_net", "sdhci_iproc", "genet", "vfat"} <= set(build.modules)
    record = json.loads(build.paths.build_json.read_text())
    assert record["files"] == dict(build.files)
    assert set(record["packages"]) == set(build.packages) >= {
        "busybox-static", "raspi-firmware", "openssl", "libc6"
    }  # fmt: skip

    started = time.monotonic()
    again = build_installer(data, "arm64", cache_dir=cache)
    assert again.reused, "nothing changed, yet the build was made again"
    assert time.monotonic() - started < max(10.0, built_in / 2)
    assert again.files == build.files

    _reinstall(tmp_path, build.paths.kernel, build.paths.initrd, arch="arm64")


def test_amd64_installer_builds_and_reinstalls_a_qemu_guest(tmp_path: Path) -> None:
    needs_tool("apt-get", "apt-cache", "dpkg-deb", "qemu-system-x86_64", "mtype")
    build = build_installer(tmp_path / "data", "amd64", cache_dir=tmp_path / "cache")
    assert build.paths.kernel.name == "vmlinuz"
    assert build.paths.firmware == ()
    assert {"virtio_blk", "virtio_net", "vfat"} <= set(build.modules)
    _reinstall(tmp_path, build.paths.kernel, build.paths.initrd, arch="amd64")


def _reinstall(tmp_path: Path, kernel: Path, initrd: Path, arch: str) -> None:
    """Boot the installer on a guest whose disk is blank; check the disk and the reports."""
    image = make_image(tmp_path)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes([FILL]) * (len(image) + MIB))
    with FakeManager(image, node_host="10.0.2.2") as fake:
        console = _boot(arch, kernel, initrd, disk, fake)
        result = fake.result()
    assert "piman-installer: done: rebooting" in console, console[-4000:]
    assert "piman-init: no driver" not in console, console[-4000:]
    # openssl, its libraries and its ELF interpreter run in the initramfs: the ranges read back
    # are hashed with it
    assert "piman-installer: hashing: openssl and sha256sum" in console, console[-4000:]
    assert result == {"ok": True, "bytes_written": sum(r.end - r.start for r in fake.ranges)}

    written = disk.read_bytes()
    assert written[: BOOT[0]] == image[: BOOT[0]], "the head differs"
    for r in fake.ranges:
        if r.end <= BOOT[0] or r.start >= BOOT[1]:
            assert written[r.start : r.end] == image[r.start : r.end], f"range {r.index} differs"
    expected = {**KEPT, "config.txt": b"arm_64bit=1\nkernel=kernel8.img\n"}
    for name, content in expected.items():
        shown = subprocess.run(
            ["mtype", "-i", f"{disk}@@{BOOT[0]}", f"::{name}"], capture_output=True, check=False
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout == content, name
    for gone in ("piman/remove", "kernel8.img"):  # piman/remove names files to delete
        shown = subprocess.run(
            ["mtype", "-i", f"{disk}@@{BOOT[0]}", f"::{gone}"], capture_output=True, check=False
        )
        assert shown.returncode != 0, gone


def _boot(arch: str, kernel: Path, initrd: Path, disk: Path, fake: FakeManager) -> str:
    """Run the guest until it reboots (-no-reboot: QEMU exits); its serial console."""
    machine = {
        "arm64": ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53"],
        "amd64": ["qemu-system-x86_64", "-machine", "accel=tcg"],
    }[arch]
    console, nic = (
        ("ttyAMA0", "virtio-net-device") if arch == "arm64" else ("ttyS0", "virtio-net-pci")
    )
    append = (
        f"console={console} panic=-1 piman.url={fake.url} piman.token={fake.token} "
        "piman.node=pi-07 piman.disk=/dev/vda"
    )
    done = subprocess.run(
        [*machine, "-m", "512", "-nographic", "-no-reboot", "-kernel", str(kernel),
         "-initrd", str(initrd), "-append", append,
         "-drive", f"file={disk},format=raw,if=virtio",
         "-netdev", "user,id=n0", "-device", f"{nic},netdev=n0"],
        capture_output=True, text=True, errors="replace", timeout=GUEST_SECONDS, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr
