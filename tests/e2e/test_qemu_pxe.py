"""A disk-less QEMU x86 guest PXE-boots from piman: firmware nobody here wrote, end to end.

The lab (``tests.integration.netlab``) puts the manager in one namespace; a tap device on the
lab's bridge carries the guest. The guest's iPXE ROM asks piman's DHCP server for an address and
a boot file (``dhcp.boot_file: boot.ipxe``), fetches that iPXE script over TFTP from piman's TFTP
server (listening on 0.0.0.0:69 pinned to the manager's interface), then the kernel (Debian's
``/boot/vmlinuz-*``) and an initramfs this test builds (static busybox, an ``/init`` that prints a
marker on the serial console and powers off). The test reads the marker from the serial log.
"""

from __future__ import annotations

import gzip
import io
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.netlab import SERVER_IP, NetLab
from tests.support import needs_root, needs_tool

BOOT_SECONDS = 240  # generous: the guest runs under software emulation (TCG)


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One ``newc`` cpio member (the format the kernel unpacks as an initramfs)."""
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    entry = header + name.encode() + b"\0"
    entry += b"\0" * (-len(entry) % 4)
    return entry + data + b"\0" * (-len(data) % 4)


def build_initramfs(busybox: Path, marker: str) -> bytes:
    init = (
        "#!/bin/sh\n"
        "/bin/busybox mount -t proc proc /proc\n"
        "/bin/busybox mount -t devtmpfs dev /dev 2>/dev/null\n"
        f"echo {marker}\n"
        f"echo {marker} > /dev/ttyS0\n"
        "/bin/busybox poweroff -f\n"
    )
    out = io.BytesIO()
    for directory in ("bin", "dev", "proc", "sys"):
        out.write(_cpio_entry(directory, stat.S_IFDIR | 0o755))
    out.write(_cpio_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    out.write(_cpio_entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    out.write(_cpio_entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    out.write(_cpio_entry("init", stat.S_IFREG | 0o755, init.encode()))
    out.write(_cpio_entry("TRAILER!!!", 0))
    return gzip.compress(out.getvalue(), compresslevel=1)


def _static_busybox() -> Path:
    path = Path(shutil.which("busybox") or "/bin/busybox")
    if not path.exists():
        pytest.skip("needs busybox-static")
    info = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True, check=False)
    if "statically linked" not in info.stdout:
        pytest.skip("needs a statically linked busybox (busybox-static)")
    return path


def _wait_listening(lab: NetLab, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if lab.run(lab.server, "ss", "-Hlun", "sport", f"= :{port}", check=False).stdout.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on UDP {port}:\n{lab.manager_log()}")


def test_qemu_guest_pxe_boots_kernel_and_initramfs_from_piman() -> None:
    needs_root()
    needs_tool("qemu-system-x86_64", "ip", "ss", "file")
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        pytest.skip("needs a kernel in /boot (Debian linux-image-amd64)")
    busybox = _static_busybox()
    marker = f"PIMAN-PXE-OK-{secrets.token_hex(4)}"
    with NetLab(clients=0) as lab:
        boot = lab.tmp / "data" / "boot"
        boot.mkdir(parents=True)
        shutil.copyfile(kernels[-1], boot / "vmlinuz")
        (boot / "initrd.gz").write_bytes(build_initramfs(busybox, marker))
        (boot / "boot.ipxe").write_text(
            "#!ipxe\n"
            f"kernel tftp://{SERVER_IP}/vmlinuz console=ttyS0 rdinit=/init panic=-1 quiet\n"
            f"initrd tftp://{SERVER_IP}/initrd.gz\n"
            "boot\n"
        )
        lab.run(lab.bridge_ns, "ip", "tuntap", "add", "tap0", "mode", "tap")
        lab.run(lab.bridge_ns, "ip", "link", "set", "tap0", "master", "br0", "up")
        lab.start_manager(
            {
                "dhcp": {
                    "mode": "authoritative",
                    "pool": "198.18.0.100-198.18.0.150",
                    "router": SERVER_IP,
                    "boot_file": "boot.ipxe",
                },
                "tftp": {"enabled": True},  # 0.0.0.0:69 with SO_BINDTODEVICE eth0
            }
        )
        _wait_listening(lab, 69)
        serial = lab.tmp / "serial.log"
        guest_err = (lab.tmp / "qemu.err").open("wb")
        # TCG, not KVM: with KVM on these (nested) machines the guest's NIC never sent a frame.
        qemu = lab.popen(
            lab.bridge_ns,
            "qemu-system-x86_64", "-machine", "accel=tcg", "-m", "512", "-nographic", "-no-reboot",
            "-boot", "n", "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
            "-serial", f"file:{serial}", "-monitor", "none",
            stdout=subprocess.DEVNULL, stderr=guest_err,
        )  # fmt: skip
        guest_err.close()
        deadline = time.monotonic() + BOOT_SECONDS
        seen = ""
        while time.monotonic() < deadline:
            seen = serial.read_text(errors="replace") if serial.exists() else ""
            if marker in seen or qemu.poll() is not None:
                break
            time.sleep(0.5)
        seen = serial.read_text(errors="replace") if serial.exists() else ""
        log = lab.manager_log()
        err = (lab.tmp / "qemu.err").read_text(errors="replace")
        assert marker in seen, f"no marker on serial:\n{seen[-3000:]}\n{err}\n{log[-3000:]}"
        for name in ("boot.ipxe", "vmlinuz", "initrd.gz"):
            assert f"file={name} outcome=ok" in log, log[-3000:]
