"""piman's DHCP server (RFC 2131/2132) for Raspberry Pi and PXE netboot.

``packets`` (bytes ⇄ frozen dataclasses) · ``pxe`` (Pi option 43/97, PXE detection) · ``policy``
(who gets what; pure, time passed in) · ``guard`` (how fast new clients may take the pool) ·
``leases`` (lease table and its durable journal) · ``server`` (the thin asyncio shell, run by
the manager as the ``dhcp`` service).
"""

from piman.netboot.dhcp.guard import PoolGuard
from piman.netboot.dhcp.leases import Lease, LeaseJournal, LeaseState, LeaseTable
from piman.netboot.dhcp.packets import (
    DhcpPacket,
    MalformedPacket,
    MessageType,
    Options,
    decode,
    encode,
)
from piman.netboot.dhcp.policy import Decision, DhcpOutcome, DhcpPolicy, PolicySettings, Reservation
from piman.netboot.dhcp.pxe import PiIdentity, parse_option97, pi_identity, pi_option43

__all__ = [
    "Decision",
    "DhcpOutcome",
    "DhcpPacket",
    "DhcpPolicy",
    "Lease",
    "LeaseJournal",
    "LeaseState",
    "LeaseTable",
    "MalformedPacket",
    "MessageType",
    "Options",
    "PiIdentity",
    "PolicySettings",
    "PoolGuard",
    "Reservation",
    "decode",
    "encode",
    "parse_option97",
    "pi_identity",
    "pi_option43",
]
