"""The seed README's own commands, all the way, the way a seed user runs them.

A "seed checkout" is the working directory: the seed's YAML in the README's own format (with
``swtich_0_address``), ``hosts.csv`` beside it, ``install/boot/`` holding ``rootfs.tgz`` and a
boot file. An overlay (``$PIMAN_OVERLAY``) adds only what the seed format has no place for: the
data directory, the switch's SNMP agent, where the API listens, the Pi's disk (a file).

The network is a :class:`~tests.integration.netlab.NetLab` with one client: the manager's
namespace, whose ``eth0`` (one end of a veth pair) is the seed's ``interface`` and where snmpsimd
plays the PoE switch on the namespace's loopback, and the Pi's namespace, where real clients
play the Pi: busybox ``udhcpc`` (with the installer's own event script), tftp-hpa ``tftp``, and
the real ``installer.sh`` under busybox sh writing a file "SD card". Every address is in
198.18.0.0/15 and every packet stays inside the lab's namespaces.

1. ``piman config check seed.yaml`` shows DHCP authoritative on the interface, TFTP from
   install/boot and the seed's rootfs.tgz as what reinstalls deploy.
2. ``piman server -c seed.yaml`` (the README's ``server``): the Pi gets its hosts.csv address
   from piman and fetches a file of install/boot over TFTP.
3. ``piman restart <switch> 2``: snmpsim sees port 2 switched off, then on.
4. ``piman reinstall <switch> 2``, no environment anywhere: it imports install/boot/rootfs.tgz as
   environment ``seed-rootfs``, powers port 2 off and on, and waits while the test plays the Pi
   (cmdline.txt over TFTP, the installer with the hello from the Pi's own address, then its new
   system's config.txt over TFTP); it ends saying the node is deployed, and the card holds the
   image.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from piman.cli.common import load
from piman.deploy import bmap as bmaps
from piman.deploy.installer import SOURCES_DIR
from piman.sim.image import stand_in_installer_tree
from tests.integration.deploy.test_installer_script import busybox_bin
from tests.integration.netlab import SERVER_IP, NetLab
from tests.integration.power.snmpsim import RFC, Snmpsim, rfc3621_records
from tests.support import needs_root, needs_tool

IP = "/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "/sbin/ip"  # not busybox's `ip`
SWITCH = "198.18.0.254"
PI_ADDRESSES = ["198.18.0.13", "198.18.0.14"]
PI_MAC = "dc:a6:32:5e:ed:02"  # a Pi 4's OUI
PI_VENDOR_CLASS = "PXEClient:Arch:00000:UNDI:002001"  # option 60 of the Pi's boot ROM
NODE = "switch0-pi02"
HTTP = f"{SERVER_IP}:8080"  # the API on the provisioning address: the CLI and the installer
SNMP_PORT = 1161  # snmpsimd on the manager namespace's loopback
PORT2 = f"{RFC}.3.1.2"  # pethPsePortAdminEnable of port 2

# The README's format, key for key (the seed's typo included), with lab addresses.
SEED_YAML = f"""\
private_number: 4
server_address: {SERVER_IP}
subnet_mask: 255.255.255.0
interface: eth0
switch_count: 1
switches:
  - swtich_0_address: {SWITCH}
    pi_addresses:
      - {PI_ADDRESSES[0]}
      - {PI_ADDRESSES[1]}
"""

FIRMWARE = {
    "config.txt": b"# seed rootfs\narm_64bit=1\nenable_uart=1\n",
    "cmdline.txt": b"console=serial0,115200 root=PARTUUID=5eed0001-02 rootfstype=ext4 rootwait\n",
    "start4.elf": random.Random(41).randbytes(30_000),
    "fixup4.dat": random.Random(42).randbytes(2_000),
    "kernel8.img": random.Random(43).randbytes(40_000),
}
BOOTCODE = random.Random(44).randbytes(5_000)  # what the Pi fetches from install/boot


@dataclass
class Checkout:
    """The seed checkout (the working directory of every command) and the overlay's paths."""

    root: Path
    overlay: Path
    data: Path
    card: Path

    @property
    def boot(self) -> Path:
        return self.root / "install" / "boot"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "COLUMNS": "300", "PIMAN_OVERLAY": str(self.overlay)}


def make_checkout(tmp: Path, snmp_port: int) -> Checkout:
    """seed.yaml, hosts.csv, install/boot/{rootfs.tgz,bootcode.bin}, the overlay, the card."""
    root = tmp / "seed-checkout"
    co = Checkout(root, tmp / "overlay.yaml", tmp / "data", tmp / "sd.img")
    co.boot.mkdir(parents=True)
    (root / "seed.yaml").write_text(SEED_YAML)
    (root / "hosts.csv").write_text(f"{PI_MAC},{PI_ADDRESSES[1]}\n")
    tree = tmp / "rootfs"
    for name, data in {
        "etc/os-release": b'PRETTY_NAME="Seed Linux"\nID=seed\n',
        "etc/hostname": b"seedpi\n",
        **{f"boot/firmware/{k}": v for k, v in FIRMWARE.items()},
    }.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    subprocess.run(
        ["tar", "--gzip", "--numeric-owner", "-cf", str(co.boot / "rootfs.tgz"), "-C", str(tree),
         "."],
        check=True,
    )  # fmt: skip
    (co.boot / "bootcode.bin").write_bytes(BOOTCODE)
    co.overlay.write_text(
        f"""\
manager: {{data_dir: {co.data}, http: "{HTTP}"}}
switches:
  - address: {SWITCH}
    off_seconds: 0.2s
    snmp: {{host: 127.0.0.1, port: {snmp_port}, community: seed, timeout: 1s}}
nodes:
  - {{name: {NODE}, disk: {co.card}}}
deploy:
  retries: 0
  timeouts: {{power_off: 30s, netboot_installer: 30s, hello: 90s, write_image: 60s,
              verify: 60s, customise: 60s, boot_local: 60s}}
"""
    )
    with co.card.open("wb") as f:  # an empty card, large enough for the image (sparse)
        f.truncate(1 << 30)
    # The test runs installer.sh in the Pi's namespace itself: the installer's kernel and
    # firmware are labelled placeholders (tests/e2e/test_reinstall_qemu.py boots real ones).
    stand_in_installer_tree(co.data)
    return co


def start_snmpsim_in(lab: NetLab, ns: str, port: int, data: dict[str, list[str]]) -> Snmpsim:
    """snmpsimd (SNMPv2c, one data file per community) on 127.0.0.1:``port`` inside ``ns``;
    returns once it answers there. As root it runs as ``nobody``: a world-readable directory."""
    root = Path(tempfile.mkdtemp(prefix="piman-snmpsim-"))
    root.chmod(0o755)
    (root / "data").mkdir()
    (root / "cache").mkdir(mode=0o777)
    (root / "cache").chmod(0o777)
    for community, lines in data.items():
        path = root / "data" / f"{community}.snmprec"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)
    sim = Snmpsim(root, port, communities=set(data))
    sim.log.touch()
    sim.log.chmod(0o666)
    sim.proc = subprocess.Popen(
        [IP, "netns", "exec", ns, "snmpsimd", f"--data-dir={root / 'data'}",
         f"--cache-dir={root / 'cache'}", f"--agent-udpv4-endpoint=127.0.0.1:{port}",
         f"--logging-method=file:{sim.log}", "--process-user=nobody", "--process-group=nogroup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    community, lines = next(iter(data.items()))
    oid = lines[0].split("|", 1)[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sim.proc.poll() is not None:
            sim.stop()
            raise RuntimeError("snmpsimd exited at start")
        got = lab.run(ns, "snmpget", "-v2c", "-c", community, "-Oqv", "-t", "0.3", "-r", "0",
                      f"127.0.0.1:{port}", oid, check=False)  # fmt: skip
        if got.returncode == 0:
            return sim
    sim.stop()
    raise RuntimeError("snmpsimd did not answer within 20 s")


@pytest.fixture
def lab() -> Iterator[NetLab]:
    """The manager's namespace and the Pi's (client 0, with a Pi's MAC), torn down after the
    test with every process started in them."""
    needs_root()
    needs_tool("ip", "ss", "busybox", "tftp", "snmpsimd", "snmpget", "tar", "sfdisk",
               "mkfs.vfat", "mcopy", "mke2fs")  # fmt: skip
    made = NetLab(clients=1, prefix="ps" + secrets.token_hex(2))
    try:
        with made:
            pi = made.clients[0]
            made.run(pi, "ip", "link", "set", "eth0", "down")
            made.run(pi, "ip", "link", "set", "eth0", "address", PI_MAC, "up")
            yield made
    finally:
        shutil.rmtree(made.tmp, ignore_errors=True)


def piman(lab: NetLab, co: Checkout, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """``piman ARGS`` on the manager machine (its namespace), in the seed checkout."""
    result = subprocess.run(
        [IP, "netns", "exec", lab.server, sys.executable, "-m", "piman", *args],
        cwd=co.root, env=co.env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def tftp_get(lab: NetLab, name: str) -> bytes | None:
    """tftp-hpa in the Pi's namespace fetches ``name`` from the manager by its address."""
    out = lab.tmp / "tftp.out"
    out.unlink(missing_ok=True)
    lab.run(lab.clients[0], "tftp", SERVER_IP, "-m", "binary", "-c", "get", name, str(out),
            check=False, timeout=30)  # fmt: skip
    return out.read_bytes() if out.exists() and out.stat().st_size else None


def wait_listening(lab: NetLab, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the manager listens for DHCP (67), TFTP (69) and the API (8080)."""
    want = {("-Hlun", 67), ("-Hlun", 69), ("-Hltn", 8080)}
    deadline = time.monotonic() + 30
    while want:
        assert proc.poll() is None, f"piman server exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"still not listening on {want}:\n{log.read_text()}"
        for flags, port in list(want):
            if lab.run(lab.server, "ss", flags, "sport", f"= :{port}").stdout.strip():
                want.discard((flags, port))
        time.sleep(0.2)


def udhcpc(lab: NetLab, record: Path) -> dict[str, str]:
    """busybox udhcpc in the Pi's namespace, saying what a Pi's boot ROM says (option 60), with
    the installer's event script (it configures the address); what the bound event said:
    ``ip``, ``serverid``, ``siaddr`` and ``tftp`` (option 66)."""
    script = lab.tmp / "udhcpc-event.sh"
    words = "ip=$ip serverid=$serverid siaddr=$siaddr tftp=$tftp"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = bound ] && echo "{words}" > {record}\n'
        f'exec /bin/sh {SOURCES_DIR / "udhcpc.script"} "$@"\n'
    )
    script.chmod(0o755)
    lab.run(lab.clients[0], "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "4",
            "-T", "2", "-V", PI_VENDOR_CLASS, "-s", str(script),
            check=False, timeout=60)  # fmt: skip
    assert record.exists(), "udhcpc got no lease"
    return dict(word.split("=", 1) for word in record.read_text().split())


def wait_for_power_on(sim: Snmpsim, seen: int, reinstall: subprocess.Popen[bytes],
                      out: Path) -> None:  # fmt: skip
    """Until snmpsim has seen port 2 switched off, then on, after its first ``seen`` SETs."""
    deadline = time.monotonic() + 90
    while sim.sets()[seen:] != [(PORT2, "<2>"), (PORT2, "<1>")]:
        assert reinstall.poll() is None, f"reinstall exited early:\n{out.read_text()}"
        assert time.monotonic() < deadline, f"{sim.sets()[seen:]}\n{out.read_text()}"
        time.sleep(0.2)


def wait_for_installer(lab: NetLab, reinstall: subprocess.Popen[bytes], out: Path) -> bytes:
    """The Pi netboots: poll its cmdline.txt until it is the installer's (a one-time token)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert reinstall.poll() is None, f"reinstall exited early:\n{out.read_text()}"
        cmdline = tftp_get(lab, "cmdline.txt")
        if cmdline is not None and b"piman.token=" in cmdline:
            return cmdline
        time.sleep(0.3)
    raise AssertionError(f"the Pi was never offered the installer\n{out.read_text()}")


def run_installer(lab: NetLab, cmdline: bytes, work: Path) -> subprocess.CompletedProcess[str]:
    """installer.sh under busybox sh in the Pi's namespace (test mode: no DHCP, no reboot)."""
    work.mkdir()
    (work / "cmdline").write_bytes(cmdline)
    (work / "tmp").mkdir()
    path = busybox_bin(work / "bin")
    env = {
        "PATH": str(path),
        "PIMAN_CMDLINE": str(work / "cmdline"),
        "PIMAN_NO_NET": "1",
        "PIMAN_NO_REBOOT": "1",
        "PIMAN_TMP": str(work / "tmp"),
        "PIMAN_RETRY_SECONDS": "30",
        "PIMAN_RETRY_PAUSE": "0.3",
    }
    return subprocess.run(
        [IP, "netns", "exec", lab.clients[0], str(path / "sh"), str(SOURCES_DIR / "installer.sh")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def card_holds(image_dir: Path, card: Path) -> None:
    """Every mapped range of the environment's image is on the card (bmap checksums)."""
    block_map = bmaps.read(image_dir / "image.bmap")
    with card.open("rb") as f:
        for r in block_map.ranges:
            start = r.first * block_map.block_size
            end = min((r.last + 1) * block_map.block_size, block_map.image_size)
            f.seek(start)
            assert hashlib.sha256(f.read(end - start)).hexdigest() == r.sha256, r


def test_the_seed_readme_commands_serve_restart_and_reinstall_a_pi(
    lab: NetLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = start_snmpsim_in(lab, lab.server, SNMP_PORT, {"seed": rfc3621_records(4)})
    server: subprocess.Popen[bytes] | None = None
    try:
        co = make_checkout(tmp_path, SNMP_PORT)
        # Every command that reads the configuration lays $PIMAN_OVERLAY over it; checked
        # first, in-process: without it `piman server` would write to /var/lib/piman.
        monkeypatch.setenv("PIMAN_OVERLAY", str(co.overlay))
        monkeypatch.chdir(co.root)
        assert load(Path("seed.yaml")).manager.data_dir == co.data, (
            "piman.cli.common.load ignores $PIMAN_OVERLAY (piman server, reinstall, env list)"
        )

        # 1. The seed file as piman reads it.
        code, out, err = piman(lab, co, "config", "check", "seed.yaml")
        assert code == 0, out + err
        flat = " ".join(out.split())  # the summary line is wider than any terminal
        assert "dhcp authoritative on eth0 (pool 198.18.0.154-198.18.0.253, 1 reserved)" in flat
        assert f"tftp on ({co.boot})" in flat, out
        assert f"deploy on (default environment -, else {co.boot / 'rootfs.tgz'})" in flat, out
        assert re.search(rf"{NODE}\s.*{PI_ADDRESSES[1]}\s.*{PI_MAC}", out), out

        # 2. `python3 piman.py server`: DHCP, TFTP and the node API on the seed's interface.
        log = tmp_path / "server.log"
        with log.open("wb") as sink:
            server = lab.popen(
                lab.server, sys.executable, "-m", "piman", "server", "-c", "seed.yaml",
                cwd=co.root, env=co.env, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_listening(lab, server, log)
        lease = udhcpc(lab, tmp_path / "lease")
        assert lease == {
            "ip": PI_ADDRESSES[1], "serverid": SERVER_IP, "siaddr": SERVER_IP, "tftp": SERVER_IP,
        }  # fmt: skip
        assert lab.address_of(lab.clients[0]) == PI_ADDRESSES[1]
        assert tftp_get(lab, "bootcode.bin") == BOOTCODE  # from install/boot

        # 3. `python3 piman.py restart <switch> 2`: port 2 off, then on.
        code, out, err = piman(lab, co, "restart", SWITCH, "2", "-c", "seed.yaml")
        assert code == 0, out + err
        assert f"{NODE} (switch0:2)" in out, out
        assert sim.sets() == [(PORT2, "<2>"), (PORT2, "<1>")]

        # 4. `python3 piman.py reinstall <switch> 2`, no environment anywhere: install/boot's
        # rootfs.tgz. The test plays the Pi while the command waits: powered on, it netboots.
        out_file = tmp_path / "reinstall.out"
        with out_file.open("wb") as sink:
            reinstall = lab.popen(
                lab.server, sys.executable, "-m", "piman", "reinstall", SWITCH, "2",
                "-c", "seed.yaml", cwd=co.root, env=co.env, stdout=sink,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_power_on(sim, 2, reinstall, out_file)
        cmdline = wait_for_installer(lab, reinstall, out_file)
        assert f"piman.node={NODE}".encode() in cmdline
        assert f"piman.url=http://{HTTP}".encode() in cmdline
        assert f"piman.disk={co.card}".encode() in cmdline
        installer = run_installer(lab, cmdline, tmp_path / "pi")
        assert installer.returncode == 0, installer.stdout + installer.stderr
        assert tftp_get(lab, "config.txt") == FIRMWARE["config.txt"]  # its new system boots
        reinstall.wait(timeout=60)
        said = out_file.read_text()
        assert reinstall.returncode == 0, said + log.read_text()[-4000:]
        assert f"importing {co.boot / 'rootfs.tgz'} as environment seed-rootfs" in said, said
        assert f"{NODE}: deployed seed-rootfs" in said, said
        assert f"hello from {PI_ADDRESSES[1]} (disk {co.card}, {1 << 30} bytes)" in said, said
        assert re.findall(rf"^{NODE}: \[\w+\] (\w+ → \w+)$", said, re.M) == [
            "new → power_off", "power_off → netboot_installer", "netboot_installer → hello",
            "hello → write_image", "write_image → verify", "verify → customise",
            "customise → boot_local", "boot_local → deployed",
        ], said  # fmt: skip
        assert sim.sets()[2:] == [(PORT2, "<2>"), (PORT2, "<1>")]  # nothing more

        with co.card.open("rb") as card:
            card.seek(510)
            assert card.read(2) == b"\x55\xaa"
        card_holds(co.data / "environments" / "seed-rootfs", co.card)
        code, out, err = piman(lab, co, "env", "list", "--json", "-c", "seed.yaml")
        assert code == 0, out + err
        (env,) = json.loads(out)
        assert (env["name"], env["kind"], env["customisation"]) == ("seed-rootfs", "rootfs", "none")
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        sim.stop()
