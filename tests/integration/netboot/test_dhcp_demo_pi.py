"""The demo's virtual Pi netboots like a real one: DHCP against piman, TFTP against tftpd-hpa.

tftpd-hpa (a TFTP server nobody here wrote) checks the simulator's TFTP client: the Pi 4
sequence with its ``<serial>/`` probe cut short by ``Early terminate``, then the files, whole.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

from piman.sim.netboot import tftp_fetch, tftp_sequence
from piman.sim.pi import make_pi
from tests.support import free_udp_port, needs_tool


async def test_virtual_pi4_fetches_its_boot_files_from_tftpd_hpa(tmp_path: Path) -> None:
    needs_tool("in.tftpd")
    pi = make_pi(1, "rack1", 2, "198.18.0.12")  # index 1: a Pi 4
    assert pi.model.family == 4
    root = tmp_path / "tftp"
    tree = root / pi.serial
    (tree / "overlays").mkdir(parents=True)
    sizes = {"start4.elf": 300_000, "config.txt": 120, "kernel8.img": 1_000_000, "fixup4.dat": 0}
    for name, size in sizes.items():
        (tree / name).write_bytes(bytes(i % 251 for i in range(size)))
    port = free_udp_port()
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, not awaited on
        ["in.tftpd", "-L", "-a", f"127.0.0.1:{port}", "-s", str(root), "-u", "root"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await asyncio.sleep(0.3)  # in.tftpd has no readiness signal
        got = await tftp_sequence(pi, ("127.0.0.1", port))
    finally:
        server.kill()
        server.wait(timeout=10)
    # First the probe: one block of <serial>/start4.elf, then "Early terminate".
    assert got[0] == (f"{pi.serial}/start4.elf", 1468)
    files = dict(got[1:])
    assert files[f"{pi.serial}/config.txt"] == 120
    assert files[f"{pi.serial}/start4.elf"] == 300_000
    assert files[f"{pi.serial}/kernel8.img"] == 1_000_000
    assert files[f"{pi.serial}/fixup4.dat"] == 0
    assert files[f"{pi.serial}/pieeprom.sig"] is None  # not there: the Pi goes on


async def test_tftp_fetch_gives_up_on_a_silent_server() -> None:
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", port))
        assert await tftp_fetch(("127.0.0.1", port), "x", wait=0.1, retries=1) is None
