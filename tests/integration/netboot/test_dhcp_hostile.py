"""An attacker on the provisioning network against real DHCP clients (netns lab, busybox udhcpc).

The attacker sends hand-made frames from its own namespace; the victims are real clients. What
is checked is what the victims see: their address stays theirs, and a second client never gets
an address a first one still holds.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from piman.netboot.dhcp.packets import BOOTREQUEST, DhcpPacket, MessageType, Options, encode
from piman.netboot.dhcp.packets import mac_bytes as raw_mac
from tests.integration import netlab as lab_module
from tests.integration.netboot.test_dhcp_clients import udhcpc
from tests.support import needs_tool

NetLab = lab_module.NetLab
netlab = lab_module.netlab

SERVER = IPv4Address(lab_module.SERVER_IP)


def _config(pool: str) -> dict[str, object]:
    return {"dhcp": {"pool": pool, "router": lab_module.SERVER_IP, "lease_time": "1h"}}


def _forged(mac: str, mtype: MessageType, **fields: object) -> bytes:
    options = {k: v for k, v in fields.items() if k in ("requested_ip", "server_id", "client_id")}
    header = {k: v for k, v in fields.items() if k not in options}
    return encode(
        DhcpPacket(
            op=BOOTREQUEST,
            xid=0x0BAD,
            chaddr=raw_mac(mac),
            options=Options(message_type=mtype, **options),  # type: ignore[arg-type]
            **header,  # type: ignore[arg-type]
        )
    )


def test_a_decline_from_another_mac_does_not_take_the_holders_address(netlab: NetLab) -> None:
    needs_tool("busybox")
    netlab.start_manager(_config("198.18.0.100-198.18.0.101"))
    holder, attacker = netlab.clients[1], netlab.clients[2]
    held = udhcpc(netlab, holder)
    assert held is not None
    decline = _forged(
        netlab.client_mac(2), MessageType.DECLINE, requested_ip=IPv4Address(held), server_id=SERVER
    )
    assert netlab.raw_dhcp(attacker, decline, seconds=1) == []
    # The holder asks again (a reboot): it keeps its address.
    assert udhcpc(netlab, holder) == held


def test_a_release_with_the_holders_mac_but_not_its_client_id_frees_nothing(
    netlab: NetLab,
) -> None:
    needs_tool("busybox")
    netlab.start_manager(_config("198.18.0.100-198.18.0.100"))  # one address
    holder, attacker = netlab.clients[1], netlab.clients[2]
    held = udhcpc(netlab, holder)  # udhcpc sends its client identifier (option 61)
    assert held == "198.18.0.100"
    release = _forged(netlab.client_mac(1), MessageType.RELEASE, ciaddr=IPv4Address(held))
    assert netlab.raw_dhcp(attacker, release, seconds=1) == []
    # The lease still runs: a second client gets nothing, the holder keeps its address.
    assert udhcpc(netlab, attacker) is None
    assert udhcpc(netlab, holder) == held


def test_a_bare_request_is_not_answered_and_binds_nothing(netlab: NetLab) -> None:
    needs_tool("busybox")
    netlab.start_manager(_config("198.18.0.100-198.18.0.100"))  # one address
    attacker = netlab.clients[2]
    bare = _forged(
        netlab.client_mac(2), MessageType.REQUEST, requested_ip=IPv4Address("198.18.0.100")
    )
    assert netlab.raw_dhcp(attacker, bare, seconds=2) == []
    assert udhcpc(netlab, netlab.clients[1]) == "198.18.0.100"
    assert "Traceback" not in netlab.manager_log()
