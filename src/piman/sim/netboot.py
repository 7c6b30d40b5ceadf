"""Demo: virtual Pis netbooting: DHCP (and TFTP when it exists) as their models do.

The message builders here are what a Pi's boot ROM/EEPROM sends (PROTOCOLS.md §1); tests use
them too. :func:`run_netboot` makes every powered virtual Pi of the demo do DHCP against
``dhcp.listen`` on loopback (broadcast flag set, a UDP client on 127.0.0.1), so the manager
records its sighting and its last-seen time moves on the web page.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from ipaddress import IPv4Address
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

if TYPE_CHECKING:
    from piman.sim.fleet import DemoFleet
    from piman.sim.pi import VirtualPi

__all__ = ["PI_VENDOR_CLASS", "option97", "pi_discover", "pi_request", "run_netboot"]

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


async def _pi_loop(pi: VirtualPi, target: tuple[str, int]) -> None:
    while True:
        await pi.powered.wait()
        try:
            address = await netboot_once(pi, target)
        except OSError as err:
            logger.warning("[sim pi=%s] DHCP failed: %s", pi.name, err)
            address = None
        logger.debug("[sim pi=%s] DHCP gave %s", pi.name, address)
        pause = NETBOOT_INTERVAL if address is not None else 5.0
        await asyncio.sleep(pause * (0.5 + random.random()))


async def run_netboot(fleet: DemoFleet) -> None:
    """Run until cancelled: every powered virtual Pi netboots now and then."""
    dhcp = fleet.config.dhcp
    if dhcp is None or dhcp.listen is None or not dhcp.enabled:
        return
    from piman.config.types import parse_host_port

    host, port = parse_host_port(dhcp.listen)
    target = ("127.0.0.1" if host in ("0.0.0.0", "") else host, port)
    async with asyncio.TaskGroup() as group:
        for pi in fleet.pis:
            group.create_task(_pi_loop(pi, target))
