"""A reinstall for real: a disk-less QEMU x86 guest (software emulation) is reinstalled by piman.

The lab (``tests.integration.netlab``) runs ``piman server`` in one namespace; a tap device on
the lab's bridge carries the guest. The node ``node1`` hangs on a switch with driver ``command``
whose program (a shell script this test writes) kills QEMU for ``off`` and starts it again for
``on``, in the bridge's namespace, with a blank virtio disk. The guest's iPXE ROM PXE-boots
``boot.ipxe`` from piman: first the installer's (the real amd64 installer, built from Debian's
packages by ``build_installer``), which writes the environment's image on ``/dev/vda``, puts the
customisation (cloud-init ``meta-data`` with the host name) on partition 1 and reboots; QEMU
reboots in place, and the guest PXE-boots again, now its own boot files, which the engine took
from the image's boot partition: a ``boot.ipxe``, Debian's kernel and an initramfs that mounts
the root file system from ``/dev/vda2``. That system's ``/sbin/init`` reads ``local-hostname``
from partition 1, sets the host name and prints it on the serial console.

The image is made here (sfdisk, mkfs.vfat, mcopy, mke2fs -d): partition 1 FAT with the boot
files and NoCloud placeholders (so its customisation format is ``cloudinit``), partition 2 ext4
with static busybox, that init and a few MiB of random bytes. The agent cannot run on it:
``deploy.customise.install_agent`` is off, so the deployment ends when the node fetches its own
``boot.ipxe``. The installer and the image are made once for both tests (about 15 s, most of it
downloading the installer's packages); each test then takes 25 to 45 s here, mostly the guest's
firmware and kernels under TCG and, in the second, the installer's pause before it asks again.
An IPv6 router advertiser (``tests.e2e.ipv6_router``) in the manager's namespace saves 16 s per
PXE boot: without one, iPXE waits that long for an IPv6 router before it fetches anything.

The second test kills the manager with SIGKILL while the image is being written, and starts it
again: the installer in the guest keeps asking, goes on, and the deployment ends deployed. The
link to the guest is slowed while the image is written, so that the manager dies mid-stream
whatever the machine's load.

The waits are generous (the guest is emulated; a loaded 2-core machine runs it several times
slower), but a failed deployment, a guest that powered off, panicked or found nothing to boot
ends a test at once, with the console, the power calls and the manager's log in the message.
``PIMAN_KEEP_LOGS=1`` keeps those logs in ``/tmp/reinstall-qemu-*``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piman.deploy import bmap as bmaps
from piman.deploy.installer import build_installer
from piman.deploy.installer.initramfs import Cpio, busybox_applets, modules_dep, select_modules
from tests.integration.netlab import SERVER_IP, NetLab
from tests.support import needs_root, needs_tool

MIB = 1 << 20
GUEST_MAC = "52:54:00:12:34:56"
NODE_IP = "198.18.0.10"
API = f"http://{SERVER_IP}:8000"
ENV = "tiny"
HOSTNAME = "lab-node1"
BOOT_PART = (1 * MIB, 24 * MIB)  # partition 1 (FAT): start, size
ROOT_PART = (25 * MIB, 16 * MIB)  # partition 2 (ext4)
PAYLOAD = 8 * MIB  # random bytes in the root: 26 MB of the 43 MB image are mapped, 7 ranges
# While the second test's image flows: about 3 s per 4 MiB range, so that the manager is killed
# in the middle of the stream whatever the load; full speed again once it is back.
SLOW_LINK = "12mbit"
# Generous, for a busy machine: the guest runs under software emulation (TCG). A deployment that
# fails ends the wait at once (no retries), and so does a guest that stops (STOPPED).
DEPLOY_SECONDS = 600
CONSOLE_SECONDS = 300
# 25 to 45 s each on an idle machine; several times that on a loaded one: the waits above, not
# pytest-timeout's, are the guards.
pytestmark = pytest.mark.timeout(1200)
HOSTNAME_LINE = f"piman-test-hostname: {HOSTNAME}"
# What the console shows when the guest will do nothing more: its kernel powered off or panicked,
# or the firmware found nothing to boot (iPXE gave up; SeaBIOS, held to the network by
# strict=on, says so and retries in 60 s).
STOPPED = ("reboot: Power down", "Kernel panic", "No more network devices", "No bootable device")
REPO = Path(__file__).resolve().parents[2]

# The local system's boot files, as its own boot partition holds them.
LOCAL_IPXE = """\
#!ipxe
# node1's own system: kernel and initramfs over TFTP, the root file system on the disk
kernel vmlinuz-local console=ttyS0 root=/dev/vda2 quiet
initrd initrd-local.gz
boot
"""
# The drivers the local system's initramfs loads (crc32c: ext4 asks the crypto API for it).
LOCAL_DRIVERS = (
    "virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "vfat", "nls_cp437", "nls_ascii",
    "nls_utf8", "nls_iso8859_1",
)  # fmt: skip
# /init of the local system's initramfs: its drivers, then switch_root into partition 2.
LOCAL_INITRAMFS_INIT = """\
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
while read -r module _; do
    case $module in '' | '#'*) ;; *) modprobe "$module" 2>/dev/null ;; esac
done </etc/modules
root=$(sed -n 's/.*root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
i=0
while [ ! -b "$root" ] && [ "$i" -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
mount -t ext4 -o ro "$root" /root || { echo "local-init: cannot mount $root"; poweroff -f; }
umount /sys /proc
mount --move /dev /root/dev
exec switch_root /root /sbin/init
"""
# /sbin/init of the root file system on the disk: the host name the customisation set. Both
# partitions are mounted read-only, so that the test can compare the disk with the image after.
LOCAL_INIT = """\
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t vfat -o ro /dev/vda1 /boot
hostname "$(sed -n 's/^local-hostname: *//p' /boot/meta-data)"
echo "piman-test-root: $(awk '$2 == "/" {print $1}' /proc/mounts)"
echo "piman-test-hostname: $(hostname)"
umount /boot
sync
poweroff -f
"""
# The `command` power driver's program: `off` kills the guest, `on` starts it (QEMU daemonises
# in the bridge's namespace, its pid in a file). Every call is logged for the test. With
# graphics=off (-nographic, which -daemonize excludes, sets it too) SeaBIOS mirrors the firmware's
# screen on the serial port: a failure shows iPXE's messages. The guest boots from the network
# only (strict=on: never the disk's MBR, which holds no boot code).
POWER_SH = """\
#!/bin/sh
lab=$(dirname "$0")
echo "$1" >>"$lab/power.log"
running() {{  # a killed QEMU nobody reaps stays a zombie: that is off too
    [ -f "$lab/qemu.pid" ] && pid=$(cat "$lab/qemu.pid") && [ -r "/proc/$pid/stat" ] &&
        ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$pid/stat"
}}
case $1 in
    off)
        if running; then
            kill -9 "$pid"
            i=0
            while running && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        fi
        rm -f "$lab/qemu.pid"
        ;;
    on)
        running && exit 0
        exec ip netns exec {bridge_ns} qemu-system-x86_64 -machine accel=tcg,graphics=off -m 512 \\
            -display none -daemonize -pidfile "$lab/qemu.pid" -boot order=n,strict=on \\
            -netdev tap,id=n0,ifname=tap0,script=no,downscript=no \\
            -device virtio-net-pci,netdev=n0,mac={mac} \\
            -drive file="$lab/disk.img",format=raw,if=virtio \\
            -chardev file,id=s0,path="$lab/serial.log",append=on -serial chardev:s0 \\
            -monitor none
        ;;
    *) echo "usage: $0 on|off" >&2; exit 64 ;;
esac
"""


# --- the image ----------------------------------------------------------------------------------


def local_initramfs(modules_dir: Path, busybox: bytes) -> bytes:
    """The local system's initramfs: busybox, the drivers of :data:`LOCAL_DRIVERS` with what
    they need (piman's own initramfs helpers), and an /init that mounts the root from the disk.
    """
    cpio = Cpio()
    for name in ("dev", "proc", "sys", "root", "etc"):
        cpio.directory(name)
    cpio.node("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.file("bin/busybox", busybox, 0o755)
    for applet in busybox_applets(busybox):
        cpio.symlink(f"bin/{applet}", "busybox")
    modules, loaded = select_modules(modules_dir, LOCAL_DRIVERS)
    assert {"virtio_blk", "ext4", "vfat"} <= set(loaded), loaded
    for module in modules.values():
        cpio.file(f"lib/modules/{modules_dir.name}/{module.path}", module.data)
    cpio.file(f"lib/modules/{modules_dir.name}/modules.dep", modules_dep(modules).encode())
    cpio.file("etc/modules", "".join(f"{name}\n" for name in loaded).encode())
    cpio.file("init", LOCAL_INITRAMFS_INIT.encode(), 0o755)
    return gzip.compress(cpio.finish(), compresslevel=1)


def run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(args, check=True, capture_output=True, text=True, cwd=cwd, env=env, input=stdin)


def build_system_image(where: Path, kernel_deb: Path, busybox: Path) -> Path:
    """An MBR disk image: partition 1 FAT (boot.ipxe, Debian's kernel, an initramfs, NoCloud
    files), partition 2 ext4 (static busybox, /sbin/init, random bytes)."""
    boot, root, unpacked = where / "boot", where / "root", where / "kernel"
    boot.mkdir(parents=True)
    (boot / "boot.ipxe").write_text(LOCAL_IPXE)
    run("dpkg-deb", "-x", str(kernel_deb), str(unpacked))
    (kernel,) = (unpacked / "boot").glob("vmlinuz-*")
    shutil.copyfile(kernel, boot / "vmlinuz-local")
    modules_dir = unpacked / "lib" / "modules" / kernel.name.removeprefix("vmlinuz-")
    (boot / "initrd-local.gz").write_bytes(local_initramfs(modules_dir, busybox.read_bytes()))
    shutil.rmtree(unpacked)
    (boot / "user-data").write_text("#cloud-config\n{}\n")
    (boot / "meta-data").write_text("instance-id: image\nlocal-hostname: localhost\n")
    for name in ("bin", "sbin", "dev", "proc", "sys", "boot", "var"):
        (root / name).mkdir(parents=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for applet in ("sh", "mount", "umount", "sed", "awk", "hostname", "sync", "poweroff"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin" / "init").write_text(LOCAL_INIT)
    (root / "sbin" / "init").chmod(0o755)
    (root / "var" / "payload.bin").write_bytes(os.urandom(PAYLOAD))
    image = where / "tiny.img"
    with image.open("wb") as f:
        f.truncate(ROOT_PART[0] + ROOT_PART[1])
    run("sfdisk", "-q", str(image), stdin=(
        "label: dos\n"
        f"start={BOOT_PART[0] // 512}, size={BOOT_PART[1] // 512}, type=c\n"
        f"start={ROOT_PART[0] // 512}, size={ROOT_PART[1] // 512}, type=83\n"
    ))  # fmt: skip
    run("mkfs.vfat", "-F", "16", "-n", "BOOT", "--offset", str(BOOT_PART[0] // 512),
        str(image), str(BOOT_PART[1] // 1024))  # fmt: skip
    run("mcopy", "-i", f"{image}@@{BOOT_PART[0]}", *sorted(p.name for p in boot.iterdir()),
        "::/", cwd=boot)  # fmt: skip
    run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "root",
        "-E", f"offset={ROOT_PART[0]}", "-d", str(root),
        str(image), str(ROOT_PART[1] // 4096))  # fmt: skip
    return image


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The amd64 installer tree (built once for the module, its packages cached) and the image."""
    needs_root()
    needs_tool("qemu-system-x86_64", "ip", "ss", "curl", "busybox", "apt-get", "dpkg-deb",
               "sfdisk", "mkfs.vfat", "mcopy", "mtype", "mke2fs", "file", "tc")  # fmt: skip
    busybox = Path(shutil.which("busybox") or "busybox").resolve()
    kind = subprocess.run(["file", "-L", str(busybox)], capture_output=True, text=True, check=False)
    if "statically linked" not in kind.stdout:
        pytest.skip("needs a statically linked busybox (busybox-static)")
    where = tmp_path_factory.mktemp("reinstall-qemu")
    cache = where / "cache"
    build = build_installer(where / "data", "amd64", cache_dir=cache)
    (kernel_deb,) = (cache / "debs").glob(f"linux-image-{build.kernel_release}_*.deb")
    return build.paths.root, build_system_image(where / "image", kernel_deb, busybox)


# --- the lab ------------------------------------------------------------------------------------


class Rig:
    """The manager in its namespace, the guest's power program, the API through curl."""

    def __init__(self, lab: NetLab, installer: Path, image: Path) -> None:
        self.lab = lab
        self.root = lab.tmp
        self.manager: subprocess.Popen[bytes] | None = None
        data = self.root / "data"
        shutil.copytree(installer, data / "installer" / "amd64")
        with (self.root / "disk.img").open("wb") as disk:  # blank: no system on it
            disk.truncate(image.stat().st_size + 8 * MIB)
        power = self.root / "power.sh"
        power.write_text(POWER_SH.format(bridge_ns=lab.bridge_ns, mac=GUEST_MAC))
        power.chmod(0o755)
        lab.run(lab.bridge_ns, "ip", "tuntap", "add", "tap0", "mode", "tap")
        lab.run(lab.bridge_ns, "ip", "link", "set", "tap0", "master", "br0", "up")
        lab.popen(lab.server, sys.executable, "-m", "tests.e2e.ipv6_router", "eth0", cwd=REPO)
        self.config = lab.write_config({
            "manager": {"http": f"{SERVER_IP}:8000", "log_level": "INFO"},
            "dhcp": {"pool": "198.18.0.100-198.18.0.150", "router": SERVER_IP,
                     "boot_file": "boot.ipxe"},
            "tftp": {"enabled": True},
            "deploy": {
                "image_listen": "0.0.0.0:8001",
                "retries": 0,  # a timeout fails at once, with its reason
                "timeouts": {"power_off": "60s", "netboot_installer": "60s", "hello": "300s",
                             "write_image": "120s", "verify": "120s", "customise": "120s",
                             "boot_local": "300s"},
                "customise": {"install_agent": False},
            },
            "switches": [{"name": "lab", "driver": "command", "off_seconds": 1,
                          "command": [str(power), "{state}"]}],
            "nodes": [{"name": "node1", "switch": "lab", "port": 1, "mac": GUEST_MAC,
                       "ip": NODE_IP, "model": "amd64", "disk": "/dev/vda"}],
        })  # fmt: skip
        added = self.piman("env", "add", str(image), "--name", ENV)
        assert added.returncode == 0, added.stderr
        assert "first boot: cloudinit" in " ".join(added.stdout.split()), added.stdout
        self.token = ""

    def piman(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "piman", *args, "-c", str(self.config)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> None:
        self.manager = self.lab.start_manager(config=self.config)
        deadline = time.monotonic() + 30
        while '"ok"' not in self.curl("GET", "/healthz", check=False):
            assert time.monotonic() < deadline, self.lab.manager_log()[-3000:]
            time.sleep(0.2)

    def slow_link(self, rate: str | None) -> None:
        """Traffic to the guest at ``rate`` at most (a token bucket on the tap device); None:
        at full speed again."""
        tc = ("tc", "qdisc", "replace" if rate else "del", "dev", "tap0", "root")
        shape = ("tbf", "rate", rate, "burst", "64kb", "latency", "100ms") if rate else ()
        self.lab.run(self.lab.bridge_ns, *tc, *shape)

    def kill(self) -> None:
        assert self.manager is not None
        self.manager.send_signal(signal.SIGKILL)  # `ip netns exec` exec'd the manager: its pid
        self.manager.wait()

    def curl(self, method: str, path: str, body: Any = None, check: bool = True) -> str:
        argv = ["curl", "-sS", "--max-time", "10", "-X", method, API + path]
        if self.token:
            argv += ["-H", f"Authorization: Bearer {self.token}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
        if check:
            argv.append("--fail-with-body")
        done = self.lab.run(self.lab.server, *argv, check=False, timeout=30)
        assert done.returncode == 0 or not check, f"{method} {path}: {done.stdout}{done.stderr}"
        return done.stdout

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return json.loads(self.curl(method, "/api/v1" + path, body))

    def log_in(self) -> None:
        password = (self.root / "data" / "initial-admin-password").read_text().strip()
        login = {"username": "admin", "password": password, "name": "tests"}
        self.token = self.api("POST", "/auth/token", login)["token"]

    def wait(self, ident: int, done: Any, within: float = DEPLOY_SECONDS) -> dict[str, Any]:
        """Poll the deployment until ``done(it)``; fails at once when it ends otherwise or the
        guest stopped before it booted its new system."""
        deadline = time.monotonic() + within
        while True:
            d: dict[str, Any] = self.api("GET", f"/deployments/{ident}")
            if done(d):
                return d
            assert d["state"] not in ("deployed", "failed", "cancelled"), self.failure(d)
            self.check_guest(d)
            assert time.monotonic() < deadline, f"not done in {within:.0f} s\n{self.failure(d)}"
            time.sleep(0.3)

    def until(self, what: str, done: Any, within: float = DEPLOY_SECONDS) -> None:
        """Wait for ``done()``, watching the guest meanwhile."""
        deadline = time.monotonic() + within
        while not done():
            self.check_guest()
            assert time.monotonic() < deadline, f"no {what} in {within:.0f} s\n{self.failure()}"
            time.sleep(0.3)

    def serial(self) -> str:
        path = self.root / "serial.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_guest(self, d: Any = None) -> None:
        """Fails when the guest stopped (:data:`STOPPED`) before its new system said hello."""
        console = self.serial()
        stopped = [sign for sign in STOPPED if sign in console]
        if stopped and HOSTNAME_LINE not in console:
            raise AssertionError(f"the guest stopped: {stopped[0]!r}\n{self.failure(d)}")

    def wait_serial(self, text: str, within: float = CONSOLE_SECONDS) -> str:
        deadline = time.monotonic() + within
        while text not in (seen := self.serial()):
            assert not any(sign in seen for sign in STOPPED), (
                f"the guest stopped without {text!r}\n{self.failure()}"
            )
            assert time.monotonic() < deadline, f"no {text!r} on the console\n{self.failure()}"
            time.sleep(0.5)
        return seen

    def failure(self, d: Any = None) -> str:
        power = self.root / "power.log"
        return (
            f"deployment: {d}\npower calls: {power.read_text().split() if power.exists() else []}"
            f"\n--- console ---\n{self.serial()[-5000:]}\n"
            f"--- manager ---\n{self.lab.manager_log()[-5000:]}"
        )

    def history(self, ident: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.api("GET", f"/deployments/{ident}/history")
        return events

    def power_calls(self) -> list[str]:
        return (self.root / "power.log").read_text().split()

    def disk_holds_the_image(self) -> None:
        """Every mapped range outside partition 1 is on the disk as in the image; partition 1
        holds the host name the deployment asked for."""
        block_map = bmaps.read(self.root / "data" / "environments" / ENV / "image.bmap")
        p1 = range(BOOT_PART[0], BOOT_PART[0] + BOOT_PART[1])
        with (self.root / "disk.img").open("rb") as disk:
            for r in block_map.ranges:
                start = r.first * block_map.block_size
                end = min((r.last + 1) * block_map.block_size, block_map.image_size)
                if start in p1 or end - 1 in p1:
                    continue
                disk.seek(start)
                assert hashlib.sha256(disk.read(end - start)).hexdigest() == r.sha256, r
        meta = subprocess.run(
            ["mtype", "-i", f"{self.root / 'disk.img'}@@{BOOT_PART[0]}", "::meta-data"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        )  # fmt: skip
        assert f"local-hostname: {HOSTNAME}\n" in meta.stdout, meta.stdout


@pytest.fixture
def rig(pieces: tuple[Path, Path]) -> Iterator[Rig]:
    lab = NetLab(clients=0)
    try:
        with lab:  # on exit: the manager and QEMU killed, the namespaces deleted
            yield Rig(lab, *pieces)
    finally:
        if os.environ.get("PIMAN_KEEP_LOGS"):
            for name in ("manager.log", "serial.log", "power.log"):
                if (lab.tmp / name).exists():
                    shutil.copy(lab.tmp / name, Path("/tmp") / f"reinstall-qemu-{name}")
        shutil.rmtree(lab.tmp, ignore_errors=True)


def transitions(history: list[dict[str, Any]]) -> list[str]:
    return [e["detail"] for e in history if e["kind"] == "transition" and "→" in e["detail"]]


STEPS = [
    "new → power_off", "power_off → netboot_installer", "netboot_installer → hello",
    "hello → write_image", "write_image → verify", "verify → customise",
    "customise → boot_local", "boot_local → deployed",
]  # fmt: skip


def test_a_qemu_guest_is_reinstalled_and_boots_its_new_system(rig: Rig) -> None:
    rig.start()
    out, err = rig.root / "deploy.out", rig.root / "deploy.err"
    with out.open("w") as stdout, err.open("w") as stderr:  # the CLI, as an operator runs it
        deploy = rig.lab.popen(
            rig.lab.server, sys.executable, "-m", "piman", "deploy", "node1", "--env", ENV,
            "--hostname", "lab-{node}", "-c", str(rig.config), stdout=stdout, stderr=stderr,
        )  # fmt: skip
    rig.until("end of `piman deploy`", lambda: deploy.poll() is not None)
    said = f"{out.read_text()}\n{err.read_text()}"
    assert deploy.returncode == 0, f"{said}\n{rig.failure()}"
    assert f"node1: deployed {ENV}" in said, said
    console = rig.wait_serial(HOSTNAME_LINE)
    assert "piman-test-root: /dev/vda2" in console, console[-3000:]
    assert "piman-installer: done: rebooting" in console, console[-3000:]
    assert console.index("done: rebooting") < console.index("piman-test-hostname")

    rig.log_in()
    (d,) = rig.api("GET", "/deployments")
    assert (d["state"], d["result"], d["hostname"]) == ("deployed", "ok", HOSTNAME), d
    assert transitions(rig.history(d["id"])) == STEPS
    assert rig.power_calls() == ["off", "on"]  # never power-cycled: no step timed out
    log = rig.lab.manager_log()
    for name in ("boot.ipxe", "vmlinuz-local", "initrd-local.gz"):  # the node's own tree
        assert f"file={name} outcome=ok" in log, log[-3000:]
    rig.disk_holds_the_image()


def test_the_manager_killed_during_write_image_resumes_and_the_guest_boots(rig: Rig) -> None:
    rig.start()
    rig.log_in()
    (d,) = rig.api("POST", "/deployments",
                   {"nodes": ["node1"], "environment": ENV, "hostname": "lab-{node}"})  # fmt: skip
    # The installer's kernel boots for several seconds after its initramfs came: time enough to
    # slow the link before the image flows, not the TFTP transfers before.
    rig.until(
        "installer initramfs sent", lambda: "file=initrd.img outcome=ok" in rig.lab.manager_log()
    )
    rig.slow_link(SLOW_LINK)
    at = rig.wait(d["id"], lambda d: d["state"] == "write_image")
    # the head came (the first image bytes): the body streams next, and the manager dies first
    streamed = re.compile(r"^piman_deploy_streamed_bytes_total [1-9]", re.M)
    rig.until("the head streamed", lambda: streamed.search(rig.curl("GET", "/metrics")))
    rig.kill()
    before = len(rig.lab.manager_log())
    time.sleep(1.0)  # the installer's requests go unanswered meanwhile: it keeps asking
    rig.start()
    rig.slow_link(None)
    end = rig.wait(d["id"], lambda d: d["state"] == "deployed")
    assert end["result"] == "ok", end
    console = rig.wait_serial(HOSTNAME_LINE)
    cut = re.search(r"ranges? [\d-]+: the image stopped at byte \d+ \(no answer\)", console)
    assert cut, console[-4000:]  # the installer was fetching when the manager died
    assert "piman-test-root: /dev/vda2" in console, console[-3000:]
    after = rig.lab.manager_log()[before:]
    assert f"[deploy={d['id']} node=node1] resumed in write_image" in after, after[-3000:]
    history = rig.history(d["id"])
    assert transitions(history) == STEPS
    assert not [e for e in history if "power-cycling" in e["detail"]], history
    assert rig.power_calls() == ["off", "on"]
    assert at["bytes_done"] < end["bytes_done"] == end["bytes_total"]
    rig.disk_holds_the_image()
