"""An IPv6 router that only says "no IPv6 here", so that a PXE guest's iPXE stops waiting for one.

iPXE's autoboot ("Configuring (net0 …)") starts DHCPv4 and IPv6 router discovery together and
goes on only when both have ended. On a link without an IPv6 router its Router Solicitations run
out after about 16 s (measured here with Debian's iPXE 1.0.0+git-20190125 under TCG: the DHCPv4
ACK in the first second, ``boot.ipxe`` asked for 16 s later), at every boot. This answers each
Router Solicitation (RFC 4861 §6.2.6) with a Router Advertisement to all nodes that carries no
prefix, no flags and a router lifetime of 0 (§4.2: not a default router), as radvd does with
``AdvDefaultLifetime 0`` and no prefix: iPXE's IPv6 configuration ends at once, and it goes on
with what DHCPv4 gave. Linux guests ignore such an advertisement.

Run it in the namespace that holds the link: ``python -m tests.e2e.ipv6_router eth0`` (root).
"""

from __future__ import annotations

import socket
import struct
import sys

__all__ = ["ROUTER_ADVERTISEMENT", "serve"]

ROUTER_SOLICITATION = 133
# Type 134, code 0, checksum (the kernel fills it in), hop limit 64, no M/O flags, router
# lifetime 0, reachable time and retransmission timer unspecified; no options.
ROUTER_ADVERTISEMENT = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
ALL_NODES, ALL_ROUTERS = "ff02::1", "ff02::2"


def serve(interface: str) -> None:
    """Answer Router Solicitations on ``interface`` until killed."""
    index = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    # Neighbour discovery messages travel one link only: receivers drop them below 255 hops.
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
    while True:
        message, sender = sock.recvfrom(1500)
        if not message or message[0] != ROUTER_SOLICITATION:
            continue
        try:
            sock.sendto(ROUTER_ADVERTISEMENT, (ALL_NODES, 0, 0, index))
        except OSError as err:  # e.g. the link-local address still tentative: the next one
            print(f"ipv6_router: no advertisement for {sender[0]}: {err}", file=sys.stderr)


if __name__ == "__main__":
    serve(sys.argv[1])
