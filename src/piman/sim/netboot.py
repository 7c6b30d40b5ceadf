"""Demo: virtual Pis netbooting: DHCP, then the TFTP request sequence of their model.

The message builders here are what a Pi's boot ROM/EEPROM sends (PROTOCOLS.md §1); tests use
them too. :func:`run_netboot` makes every powered virtual Pi of the demo do DHCP against
``dhcp.listen`` on loopback (broadcast flag set, a UDP client on 127.0.0.1), then fetch its
model's boot files from ``tftp.listen`` (PROTOCOLS.md §2: the ``<serial>/`` probe that is cut
short with ``Early terminate``, the files, in order), so the manager records its sighting and its
last-seen time moves on the web page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from piman.fleet.models import PiModel
from piman.netboot.dhcp.packets import (
    BOOTREQUEST,
    BROADCAST_FLAG,
    DhcpPacket,
    MalformedPacket,
    MessageType,
    Options,
    decode,
    encode,
    mac_bytes,
)
from piman.netboot.tftp import packets as tftp
from piman.sim.installer import installing, run_installer

if TYPE_CHECKING:
    from piman.config.models import Config
    from piman.sim.pi import VirtualPi

__all__ = [
    "PI_VENDOR_CLASS",
    "option97",
    "pi_discover",
    "pi_request",
    "run_netboot",
    "tftp_fetch",
    "tftp_sequence",
]

logger = logging.getLogger(__name__)

PI_VENDOR_CLASS = "PXEClient:Arch:00000:UNDI:002001"
PI_PARAMETERS = (1, 3, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135)
NETBOOT_INTERVAL = 60.0  # a demo Pi "reboots" and netboots again this often


def option97(model: PiModel, mac: str, serial: str, revision: int, *, big_endian: bool) -> bytes:
    """Option 97 of a Pi 4/5 (``00`` + magic + revision + MAC low 4 bytes + serial)."""
    magic = b"RPi5" if model.family == 5 else b"RPi4"
    order: Literal["big", "little"] = "big" if big_endian else "little"
    if big_endian:
        magic = magic[::-1]
    return (
        b"\x00"
        + magic
        + revision.to_bytes(4, order)
        + mac_bytes(mac)[2:]
        + int(serial, 16).to_bytes(4, order)
    )


def pi_discover(
    model: PiModel,
    mac: str,
    serial: str,
    revision: int,
    *,
    xid: int,
    broadcast: bool = False,
    big_endian: bool = False,
) -> DhcpPacket:
    """The DISCOVER a Pi's bootloader sends (option 60, 93 = 0, 94, 97 on Pi 4/5)."""
    if model.family >= 4:
        machine_id = option97(model, mac, serial, revision, big_endian=big_endian)
    else:  # Pi 3B+: 00 + serial × 4
        machine_id = b"\x00" + int(serial, 16).to_bytes(4, "big") * 4
    return DhcpPacket(
        op=BOOTREQUEST,
        xid=xid,
        chaddr=mac_bytes(mac),
        flags=BROADCAST_FLAG if broadcast else 0,
        options=Options(
            message_type=MessageType.DISCOVER,
            parameter_request=PI_PARAMETERS,
            vendor_class=PI_VENDOR_CLASS,
            client_arch=(0,),
            client_machine_id=machine_id,
            unknown=((57, (1260).to_bytes(2, "big")), (94, b"\x01\x02\x01")),
        ),
    )


def pi_request(discover: DhcpPacket, offer: DhcpPacket) -> DhcpPacket:
    """The REQUEST a Pi 4/5 sends for ``offer`` (without option 60, as Pi 4 firmware does)."""
    return DhcpPacket(
        op=BOOTREQUEST,
        xid=discover.xid,
        chaddr=discover.chaddr,
        flags=discover.flags,
        options=Options(
            message_type=MessageType.REQUEST,
            requested_ip=offer.yiaddr,
            server_id=offer.options.server_id,
            parameter_request=PI_PARAMETERS,
            client_machine_id=discover.options.client_machine_id,
        ),
    )


async def _exchange(
    sock: socket.socket, packet: DhcpPacket, target: tuple[str, int], want: MessageType
) -> DhcpPacket | None:
    loop = asyncio.get_running_loop()
    for _ in range(3):
        await loop.sock_sendto(sock, encode(packet), target)
        try:
            async with asyncio.timeout(2.0):
                while True:
                    data = await loop.sock_recv(sock, 2048)
                    with contextlib.suppress(MalformedPacket):
                        reply = decode(data)
                        if reply.xid == packet.xid and reply.message_type is want:
                            return reply
        except TimeoutError:
            continue
    return None


async def netboot_once(pi: VirtualPi, target: tuple[str, int]) -> IPv4Address | None:
    """One DHCP exchange of ``pi`` with the server at ``target``; its address, or None."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind(("127.0.0.1", 0))
        discover = pi_discover(
            pi.model, pi.mac, pi.serial, pi.revision, xid=random.getrandbits(32), broadcast=True
        )
        offer = await _exchange(sock, discover, target, MessageType.OFFER)
        if offer is None:
            return None
        if pi.model.family == 3:  # the Pi 3 ROM takes the OFFER and never REQUESTs
            return offer.yiaddr
        ack = await _exchange(sock, pi_request(discover, offer), target, MessageType.ACK)
        return ack.yiaddr if ack is not None else None
    finally:
        sock.close()


# --- TFTP --------------------------------------------------------------------------------------

_TSIZE: tuple[tuple[str, str], ...] = (("tsize", "0"),)
_PI4_OPTS = (("tsize", "0"), ("blksize", "1468"))
# (file, options, probe) after the prefix is known; PROTOCOLS.md §2.
_FILES: dict[int, tuple[str, ...]] = {
    3: (
        "config.txt",
        "start.elf",
        "fixup.dat",
        "cmdline.txt",
        "bcm2710-rpi-3-b-plus.dtb",
        "kernel8.img",
    ),
    4: (
        "config.txt",
        "pieeprom.sig",
        "recovery.elf",
        "start4.elf",
        "fixup4.dat",
        "cmdline.txt",
        "bcm2711-rpi-4-b.dtb",
        "overlays/overlay_map.dtb",
        "kernel8.img",
    ),
    5: (
        "config.txt",
        "cmdline.txt",
        "bcm2712-rpi-5-b.dtb",
        "overlays/overlay_map.dtb",
        "kernel_2712.img",
    ),
}


async def tftp_fetch(
    target: tuple[str, int],
    filename: str,
    options: tuple[tuple[str, str], ...] = (),
    *,
    probe: bool = False,
    wait: float = 1.0,
    retries: int = 3,
    into: bytearray | None = None,
) -> int | None:
    """Read ``filename`` as a Pi does; the bytes received, or None on an error/timeout.

    ``probe``: stop after block 1 with ERROR 0 ``Early terminate`` (an existence check).
    ``into``: keep the file's bytes there (the Pi reads ``cmdline.txt`` to start its kernel).
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        sock.bind(("127.0.0.1", 0))
        last = tftp.encode(tftp.Request(tftp.Opcode.RRQ, filename, "octet", options))
        dest, blksize, expected, total, tries = target, 512, 1, 0, 0
        await loop.sock_sendto(sock, last, dest)
        while True:
            try:
                async with asyncio.timeout(wait):
                    data, peer = await loop.sock_recvfrom(sock, 65536)
            except TimeoutError:
                tries += 1
                if tries > retries:
                    return None
                await loop.sock_sendto(sock, last, dest)
                continue
            try:
                packet = tftp.decode(data)
            except tftp.MalformedPacket:
                continue
            dest, tries = peer, 0
            if isinstance(packet, tftp.Error):
                return None
            if isinstance(packet, tftp.OAck):
                blksize = int(dict(packet.options).get("blksize", "512"))
                last = tftp.encode(tftp.Ack(0))
            elif isinstance(packet, tftp.Data):
                if packet.block != expected:
                    await loop.sock_sendto(sock, last, dest)
                    continue
                total += len(packet.data)
                if into is not None:
                    into += packet.data
                if probe:
                    early = tftp.Error(tftp.ErrorCode.NOT_DEFINED, "Early terminate")
                    await loop.sock_sendto(sock, tftp.encode(early), dest)
                    return total
                last = tftp.encode(tftp.Ack(packet.block))
                if len(packet.data) < blksize:
                    await loop.sock_sendto(sock, last, dest)
                    return total
                expected = (expected + 1) & 0xFFFF
            await loop.sock_sendto(sock, last, dest)
    finally:
        sock.close()


async def tftp_sequence(
    pi: VirtualPi, target: tuple[str, int], cmdline: bytearray | None = None
) -> list[tuple[str, int | None]]:
    """The TFTP requests of ``pi``'s model, in order: (file, bytes received or None).

    ``cmdline``: receives the ``cmdline.txt`` the Pi got (what its kernel would start with).
    """
    family = pi.model.family or 4
    got: list[tuple[str, int | None]] = []
    if family == 3:
        got.append(("bootcode.bin", await tftp_fetch(target, "bootcode.bin")))
        got.append(("bootsig.bin", await tftp_fetch(target, "bootsig.bin")))
        opts: tuple[tuple[str, str], ...] = _TSIZE
    else:
        opts = _PI4_OPTS
    first = "config.txt" if family == 5 else ("start4.elf" if family == 4 else "start.elf")
    probe_name = f"{pi.serial}/{first}"
    found = await tftp_fetch(target, probe_name, opts, probe=family != 5)
    got.append((probe_name, found))
    prefix = f"{pi.serial}/" if found is not None else ""
    for name in _FILES[family]:
        into = cmdline if name == "cmdline.txt" else None
        got.append((prefix + name, await tftp_fetch(target, prefix + name, opts, into=into)))
    return got


async def _rest(pi: VirtualPi, boot: int, seconds: float) -> None:
    """Sleep ``seconds``, or less when the Pi is power-cycled meanwhile (it boots at once)."""
    end = asyncio.get_running_loop().time() + seconds
    while pi.boots == boot:
        left = end - asyncio.get_running_loop().time()
        if left <= 0 or not await pi.power_changed(left):
            return


async def _pi_loop(
    pi: VirtualPi,
    target: tuple[str, int],
    tftp_target: tuple[str, int] | None,
    work: Path | None,
) -> None:
    while True:
        await pi.powered.wait()
        boot = pi.boots
        rebooted = False
        try:
            address = await netboot_once(pi, target)
            logger.debug("[sim pi=%s] DHCP gave %s", pi.name, address)
            if address is not None and tftp_target is not None:
                cmdline = bytearray()
                files = await tftp_sequence(pi, tftp_target, cmdline)
                logger.debug("[sim pi=%s] TFTP %s", pi.name, files)
                if work is not None and installing(bytes(cmdline)):
                    code = await run_installer(pi, bytes(cmdline), work)
                    rebooted = code == 0 and pi.boots == boot  # it reboots into its new system
        except OSError as err:
            logger.warning("[sim pi=%s] netboot failed: %s", pi.name, err)
            address = None
        if rebooted:
            continue
        pause = NETBOOT_INTERVAL if address is not None else 5.0
        await _rest(pi, boot, pause * (0.5 + random.random()))


async def run_netboot(config: Config, pis: Sequence[VirtualPi]) -> None:
    """Run until cancelled: every powered virtual Pi netboots now and then, and at once after a
    power cycle; one whose boot tree serves the installer runs it (``deploy:`` configured)."""
    dhcp = config.dhcp
    if dhcp is None or dhcp.listen is None or not dhcp.enabled:
        return
    from piman.config.types import parse_host_port

    def loopback(listen: str) -> tuple[str, int]:
        host, port = parse_host_port(listen)
        return ("127.0.0.1" if host in ("0.0.0.0", "") else host, port)

    tftp_conf = config.tftp
    tftp_target = (
        loopback(tftp_conf.listen) if tftp_conf and tftp_conf.enabled and tftp_conf.listen else None
    )
    target = loopback(dhcp.listen)
    work = config.manager.data_dir / "sim" if config.deploy is not None else None
    async with asyncio.TaskGroup() as group:
        for pi in pis:
            group.create_task(_pi_loop(pi, target, tftp_target, work))
