"""A reinstall end to end on loopback: the real manager (``piman server``), the real installer
(``installer.sh`` under busybox sh, a file as its disk), the real CLI and agent.

The node stands on a switch with driver ``manual``: the engine tells a person to power-cycle it,
and the test plays that person and the node's firmware. It fetches ``cmdline.txt`` from the
manager's TFTP server (as a PXE client, by its address), runs the installer with that command
line, fetches its own boot files afterwards, and starts ``piman agent`` as its new system would.
What cannot run here: a Pi's boot ROM and SD card (tests/e2e has the QEMU machines).

The second test kills the manager with SIGKILL while the image is being written and starts it
again: the installer goes on where it was, and the deployment ends deployed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from piman.deploy import bmap as bmaps
from piman.deploy.customise import FIRSTRUN_WORDS
from piman.deploy.installer import SOURCES_DIR
from piman.sim.image import stand_in_installer_tree
from piman.sim.netboot import tftp_fetch
from tests.integration.deploy.test_installer_script import busybox_bin
from tests.integration.manager.test_access_cli import _self_signed as self_signed
from tests.support import api_token, bearer, free_port, free_udp_port, needs_tool
from tests.unit.deploy.test_images import RASPIOS_BOOT, build_image

MIB = 1 << 20
PIMAN = [sys.executable, "-m", "piman"]
BOOT = {**RASPIOS_BOOT, "start4.elf": random.Random(3).randbytes(20_000), "fixup4.dat": b"fx"}


class Rig:
    """One manager's configuration, its process, and the node's side (TFTP, installer, agent)."""

    def __init__(self, root: Path, root_mib: int = 16, payload: int = 0, tls: bool = False) -> None:
        self.root = root
        self.data = root / "data"
        self.sd = root / "sd.img"
        self.http, self.images = free_port(), free_port()
        self.tftp, self.agent_port = free_udp_port(), free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.http}"
        self.api = free_port()  # the plain-HTTP /boot/v1 of a TLS manager
        self.verify: ssl.SSLContext | bool = True
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.log = root / "manager.log"
        rng = random.Random(11)
        files = {"etc/hostname": b"raspberrypi\n", "etc/os-release": b"ID=debian\n"}
        if payload:
            files["var/payload.bin"] = rng.randbytes(payload)
        self.image = build_image(root / "lite.img", BOOT, files, root_mib=root_mib)
        with self.sd.open("wb") as f:  # the card holds an old system: random bytes
            f.write(rng.randbytes(self.image.stat().st_size + 4 * MIB))
        config = {
            "manager": {
                "address": "127.0.0.2",  # the node is 127.0.0.1 (wget cannot pick its source)
                "network": "127.0.0.0/8",
                "data_dir": str(self.data),
                "http": f"127.0.0.1:{self.http}",
            },
            "tftp": {"listen": f"127.0.0.1:{self.tftp}"},
            "deploy": {
                "image_listen": f"127.0.0.1:{self.images}",
                "timeouts": {"hello": "2m", "write_image": "2m", "agent_up": "2m"},
                "customise": {"ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 ops@lab"]},
            },
            "switches": [{"name": "rack1", "driver": "manual"}],
            "nodes": [
                {
                    "name": "pi1",
                    "switch": "rack1",
                    "port": 7,
                    "ip": "127.0.0.1",
                    "mac": "dc:a6:32:00:00:07",
                    "serial": "1a2b3c4d",
                    "model": "pi4",
                    "disk": str(self.sd),
                    "agent_url": f"http://127.0.0.1:{self.agent_port}/metrics",
                }
            ],
        }
        if tls:
            cert, key = self_signed(root)
            config["manager"]["tls"] = {"cert": str(cert), "key": str(key)}
            config["deploy"]["api_listen"] = f"127.0.0.1:{self.api}"
            self.verify = ssl.create_default_context(cafile=str(cert))
        self.config = root / "piman.yaml"
        self.config.write_text(yaml.safe_dump(config))
        # The test plays the node's boot ROM and runs installer.sh itself: the installer's
        # kernel and firmware are labelled placeholders (tests/e2e boots the real ones).
        stand_in_installer_tree(self.data)

    def piman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PIMAN, *args, "-c", str(self.config)],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*PIMAN, "server", "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                got = httpx.get(f"{self.url}/healthz", timeout=1, verify=self.verify)
                if got.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        for proc in (self.proc, self.agent):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def token(self) -> dict[str, str]:
        password = (self.data / "initial-admin-password").read_text().strip()
        if self.verify is True:
            return bearer(api_token(self.url, "admin", password))
        body = {"username": "admin", "password": password, "name": "t"}
        made = httpx.post(f"{self.url}/api/v1/auth/token", verify=self.verify, json=body)
        assert made.status_code == 201, made.text
        return bearer(made.json()["token"])

    def tftp_get(self, name: str) -> bytes | None:
        """A file as a PXE client at the node's address asks for it (no serial prefix)."""
        got = bytearray()
        size = asyncio.run(tftp_fetch(("127.0.0.1", self.tftp), name, (("blksize", "1468"),),
                                      into=got))  # fmt: skip
        return None if size is None else bytes(got)

    def wait_for_installer(self, within: float = 60) -> bytes:
        """Poll the node's boot tree until it serves the installer's command line."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            cmdline = self.tftp_get("cmdline.txt")
            if cmdline is not None and b"piman.token=" in cmdline:
                return cmdline
            time.sleep(0.2)
        raise AssertionError(f"the boot tree never served the installer\n{self.log.read_text()}")

    def installer(self, cmdline: bytes, work: Path) -> subprocess.Popen[str]:
        """The node boots the installer with this command line (test mode: exits, no reboot)."""
        work.mkdir(exist_ok=True)
        (work / "cmdline").write_bytes(cmdline)
        path = busybox_bin(work / "bin")
        env = {
            "PATH": str(path),
            "PIMAN_CMDLINE": str(work / "cmdline"),
            "PIMAN_NO_NET": "1",
            "PIMAN_NO_REBOOT": "1",
            "PIMAN_TMP": str(work / "tmp"),
            "PIMAN_RETRY_SECONDS": "60",
            "PIMAN_RETRY_PAUSE": "0.3",
        }
        (work / "tmp").mkdir(exist_ok=True)
        return subprocess.Popen(
            [str(path / "sh"), str(SOURCES_DIR / "installer.sh")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # its own process group: the tests may freeze it
        )  # fmt: skip

    def boot_new_system(self) -> bytes:
        """The node boots its own files over TFTP and its agent starts; its ``cmdline.txt``."""
        assert self.tftp_get("config.txt") == BOOT["config.txt"]  # the node's own tree now
        cmdline = self.tftp_get("cmdline.txt")
        assert cmdline is not None
        assert self.tftp_get("kernel8.img") == BOOT["kernel8.img"]
        self.agent = subprocess.Popen(
            [*PIMAN, "agent", "--listen", "127.0.0.1", "--port", str(self.agent_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return cmdline

    def deployment(self, headers: dict[str, str], ident: int) -> dict[str, Any]:
        got: dict[str, Any] = httpx.get(
            f"{self.url}/api/v1/deployments/{ident}", headers=headers, timeout=10,
            verify=self.verify,
        ).json()  # fmt: skip
        return got

    def wait_state(
        self,
        headers: dict[str, str],
        ident: int,
        states: set[str],
        within: float = 90,
        written: int = 0,
    ) -> dict[str, Any]:
        """Poll until the deployment is in one of ``states`` with ``written`` bytes done."""
        deadline = time.monotonic() + within
        while True:
            try:
                d = self.deployment(headers, ident)
                if d["state"] in states and d["bytes_done"] >= written:
                    return d
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"never {states}: {d}\n{self.log.read_text()}"
            time.sleep(0.05)

    def card_holds_the_image(self) -> bmaps.Bmap:
        block_map = bmaps.read(self.data / "environments" / "lite" / "image.bmap")
        with self.sd.open("rb") as card:
            for r in block_map.ranges:
                start = r.first * block_map.block_size
                end = min((r.last + 1) * block_map.block_size, block_map.image_size)
                card.seek(start)
                assert hashlib.sha256(card.read(end - start)).hexdigest() == r.sha256, r
        return block_map


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    needs_tool("busybox")
    made = Rig(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, name
    return float(found[1])


def test_reinstall_with_the_cli_the_installer_and_the_agent(rig: Rig, tmp_path: Path) -> None:
    added = rig.piman("env", "add", str(rig.image), "--name", "lite")
    assert added.returncode == 0, added.stderr
    assert "environment lite: raspios" in added.stdout
    assert "first boot: firstrun" in added.stdout
    rig.start()
    # As root on the manager machine, the CLI needs no token (data_dir/local.key).
    deploy = subprocess.Popen(
        [*PIMAN, "deploy", "pi1", "--env", "lite", "--hostname", "lab-{node}",
         "-c", str(rig.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    cmdline = rig.wait_for_installer()
    assert b"piman.node=pi1" in cmdline
    assert f"piman.disk={rig.sd}".encode() in cmdline
    installer = rig.installer(cmdline, tmp_path / "node")
    console, _ = installer.communicate(timeout=120)
    assert installer.returncode == 0, console
    first = rig.boot_new_system()
    assert first.startswith(BOOT["cmdline.txt"].strip())  # firstrun.sh runs at the first boot
    assert first.rstrip().endswith(FIRSTRUN_WORDS.encode())
    out, err = deploy.communicate(timeout=120)
    assert deploy.returncode == 0, out + err + rig.log.read_text()
    assert "pi1: deployed lite" in out, out
    # the manual switch's instruction, as the log line the CLI follows
    assert "power-cycle pi1 (rack1:7) now: it netboots the installer" in out

    block_map = rig.card_holds_the_image()
    assert rig.tftp_get("cmdline.txt") == BOOT["cmdline.txt"]  # deployed: the plain file

    headers = rig.token()
    (d,) = httpx.get(f"{rig.url}/api/v1/deployments", headers=headers).json()
    assert (d["state"], d["result"], d["hostname"]) == ("deployed", "ok", "lab-pi1")
    node = httpx.get(f"{rig.url}/api/v1/nodes/pi1", headers=headers).json()
    assert node["state"] == "deployed"
    history = httpx.get(f"{rig.url}/api/v1/deployments/{d['id']}/history", headers=headers)
    steps = [e["detail"] for e in history.json() if e["kind"] == "transition"]
    assert steps == [
        "created by local:root: lite to pi1", "new → power_off", "power_off → hello",
        "hello → write_image", "write_image → verify", "verify → customise",
        "customise → boot_local", "boot_local → agent_up", "agent_up → deployed",
    ]  # fmt: skip
    text = httpx.get(f"{rig.url}/metrics").text
    assert metric(text, 'piman_deployments_total{result="ok"}') == 1
    streamed = metric(text, "piman_deploy_streamed_bytes_total")
    assert block_map.mapped_blocks * block_map.block_size <= streamed
    assert streamed <= 1.05 * block_map.mapped_blocks * block_map.block_size

    shown = rig.piman("node", "show", "pi1")
    assert shown.returncode == 0, shown.stderr
    assert "deployed" in shown.stdout
    assert "lite" in shown.stdout
    # A second deployment of the same node while one runs is refused; this one is over.
    again = rig.piman("deploy", "pi1", "--env", "nope", "--no-wait")
    assert again.returncode == 2
    assert "no environment named 'nope'" in again.stderr


def test_the_manager_killed_while_the_image_is_written_resumes(tmp_path: Path) -> None:
    needs_tool("busybox")
    rig = Rig(tmp_path, root_mib=160, payload=120 * MIB)
    try:
        assert rig.piman("env", "add", str(rig.image), "--name", "lite").returncode == 0
        rig.start()
        headers = rig.token()
        made = httpx.post(
            f"{rig.url}/api/v1/deployments",
            headers=headers,
            json={"nodes": ["pi1"], "environment": "lite"},
        )
        assert made.status_code == 201, made.text
        (d,) = made.json()
        busy = httpx.post(
            f"{rig.url}/api/v1/deployments",
            headers=headers,
            json={"nodes": ["pi1"], "environment": "lite"},
        )
        assert busy.status_code == 409, busy.text
        installer = rig.installer(rig.wait_for_installer(), tmp_path / "node")
        try:
            # on loopback the image streams in a second: the node is frozen (SIGSTOP) once its
            # first image bytes came, so that the manager dies before the image is written
            deadline = time.monotonic() + 60
            streamed = re.compile(r"^piman_deploy_streamed_bytes_total [1-9]", re.M)
            while not streamed.search(httpx.get(f"{rig.url}/metrics").text):
                assert time.monotonic() < deadline, "no image bytes streamed"
                time.sleep(0.01)
            os.killpg(installer.pid, signal.SIGSTOP)
            at = rig.deployment(headers, d["id"])
            rig.kill()
            before = rig.log.read_text()
        finally:
            os.killpg(installer.pid, signal.SIGCONT)
        time.sleep(1.0)  # the installer's requests fail meanwhile: it keeps asking
        rig.start()
        console, _ = installer.communicate(timeout=180)
        assert installer.returncode == 0, console
        assert at["bytes_done"] < at["bytes_total"]
        cut = re.search(r"ranges? [\d-]+: the image stopped at byte \d+ \(no answer\)", console)
        assert cut, console  # the installer was streaming when the manager died
        rig.boot_new_system()
        end = rig.wait_state(headers, d["id"], {"deployed", "failed", "cancelled"})
        assert end["result"] == "ok", end
        rig.card_holds_the_image()
        after = rig.log.read_text()[len(before) :]
        assert f"[deploy={d['id']} node=pi1] resumed in" in after, after
        history = httpx.get(
            f"{rig.url}/api/v1/deployments/{d['id']}/history", headers=headers
        ).json()
        assert not [e for e in history if "power-cycling" in e["detail"]], json.dumps(history)
    finally:
        rig.stop()
        if os.environ.get("PIMAN_KEEP_LOGS"):
            shutil.copy(rig.log, Path("/tmp") / "reinstall-kill.log")


def test_a_manager_on_https_serves_the_installer_over_plain_http(tmp_path: Path) -> None:
    """busybox wget speaks no TLS: with manager.tls, /boot/v1 is also on deploy.api_listen."""
    needs_tool("busybox")
    rig = Rig(tmp_path, tls=True)
    try:
        assert rig.piman("env", "add", str(rig.image), "--name", "lite").returncode == 0
        rig.start()
        headers = rig.token()
        made = httpx.post(f"{rig.url}/api/v1/deployments", headers=headers, verify=rig.verify,
                          json={"nodes": ["pi1"], "environment": "lite"})  # fmt: skip
        assert made.status_code == 201, made.text
        (d,) = made.json()
        cmdline = rig.wait_for_installer()
        assert f"piman.url=http://127.0.0.1:{rig.api} ".encode() in cmdline
        plain = f"http://127.0.0.1:{rig.api}"
        assert httpx.get(f"{plain}/api/v1/nodes", headers=headers).status_code == 404  # only
        installer = rig.installer(cmdline, tmp_path / "node")
        console, _ = installer.communicate(timeout=120)
        assert installer.returncode == 0, console
        rig.boot_new_system()
        end = rig.wait_state(headers, d["id"], {"deployed", "failed", "cancelled"})
        assert end["result"] == "ok", end
        rig.card_holds_the_image()
    finally:
        rig.stop()
