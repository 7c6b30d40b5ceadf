"""Raspberry Pi and PXE specifics of DHCP (PROTOCOLS.md §1): option 43, option 97, detection.

Pure functions over decoded packets; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from piman.fleet.models import PiModel, decode_revision, model_from_mac, serial_from_pi3_mac
from piman.netboot.dhcp.packets import DhcpPacket

__all__ = [
    "PI_BOOT_TEXT",
    "PiIdentity",
    "is_ipxe",
    "is_pxe_client",
    "parse_option97",
    "pi_identity",
    "pi_option43",
]

PI_BOOT_TEXT = "Raspberry Pi Boot"
_MAGICS = {b"RPi4": PiModel.PI4, b"RPi5": PiModel.PI5}


def pi_option43(*, padded: bool = False) -> bytes:
    """Option 43 as dnsmasq's ``pxe-service=0,"Raspberry Pi Boot"`` writes it.

    ``06 01 03`` (PXE discovery control: no broadcast/multicast, use boot server list) ·
    ``0a 04 00 50 58 45`` (menu prompt: timeout 0, "PXE") · ``09 LL 00 00 NN`` + text (boot menu:
    type 0) · ``ff``. ``padded`` adds three trailing spaces to the text (Pi 3B ROM bug).
    """
    text = (PI_BOOT_TEXT + ("   " if padded else "")).encode("ascii")
    menu = b"\x00\x00" + bytes([len(text)]) + text
    return b"\x06\x01\x03" + b"\x0a\x04\x00PXE" + b"\x09" + bytes([len(menu)]) + menu + b"\xff"


def is_pxe_client(packet: DhcpPacket) -> bool:
    """Option 60 starts with ``PXEClient``."""
    vc = packet.options.vendor_class
    return vc is not None and vc.startswith("PXEClient")


def is_ipxe(packet: DhcpPacket) -> bool:
    """iPXE announces itself with option 77 (user class) ``iPXE`` or option 175."""
    for code, value in packet.options.unknown:
        if (code == 77 and b"iPXE" in value) or code == 175:
            return True
    return False


@dataclass(frozen=True, slots=True)
class PiIdentity:
    """What the wire says about a Pi: model, serial and board revision (any may be unknown)."""

    model: PiModel
    serial: str | None = None
    revision: int | None = None


def parse_option97(value: bytes) -> PiIdentity | None:
    """Option 97 of a Pi 4/5: ``00`` + magic + revision + MAC low 4 bytes + serial.

    The words come little-endian (magic reads ``RPi4``) or, since 2023, big-endian (magic reads
    ``4iPR``); both are accepted, and when the magic alone does not tell, the order whose revision
    decodes as a new-style code wins. ``None`` when it is not a Pi 4/5 option 97.
    """
    if len(value) != 17 or value[0] != 0:
        return None
    magic, rev_b, serial_b = value[1:5], value[5:9], value[13:17]
    if magic in _MAGICS:
        orders: tuple[Literal["little", "big"], ...] = ("little", "big")
        model = _MAGICS[magic]
    elif magic[::-1] in _MAGICS:
        orders = ("big", "little")
        model = _MAGICS[magic[::-1]]
    else:
        return None
    for order in orders:
        revision = int.from_bytes(rev_b, order)
        decoded = decode_revision(revision)
        if decoded is not None:
            serial = int.from_bytes(serial_b, order)
            found = decoded.model if decoded.model is not PiModel.UNKNOWN else model
            return PiIdentity(model=found, serial=f"{serial:08x}", revision=revision)
    serial = int.from_bytes(serial_b, orders[0])
    return PiIdentity(model=model, serial=f"{serial:08x}")


def pi_identity(packet: DhcpPacket, pi_ouis: frozenset[str]) -> PiIdentity | None:
    """Is this a netbooting Pi, and what is it? (PROTOCOLS.md §1; never from option 93.)

    A Pi is a client with option 97 carrying the RPi4/RPi5 magic, or a ``PXEClient`` whose MAC has
    a Raspberry Pi OUI. Pi 3 family: the serial's low 24 bits are the MAC's.
    """
    mid = packet.options.client_machine_id
    from97 = parse_option97(mid) if mid is not None else None
    if from97 is not None:
        return from97
    mac = packet.mac
    if len(packet.chaddr) != 6 or mac[:8] not in pi_ouis or not is_pxe_client(packet):
        return None
    model = model_from_mac(mac)
    if model is PiModel.UNKNOWN:
        model = PiModel.PI
    if mac.startswith("b8:27:eb"):
        return PiIdentity(model=model, serial=serial_from_pi3_mac(mac))
    return PiIdentity(model=model)
