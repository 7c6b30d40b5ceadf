"""Lease table and journal: durability rules, torn records, compaction, reply destinations."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from piman.netboot.dhcp import leases as leases_mod
from piman.netboot.dhcp.leases import Lease, LeaseJournal, LeaseState, LeaseTable
from piman.netboot.dhcp.packets import (
    BOOTREQUEST,
    BROADCAST_FLAG,
    DhcpPacket,
    MessageType,
    Options,
)
from piman.netboot.dhcp.server import reply_destination

IP = IPv4Address
A = int(IP("198.18.0.100"))


def test_journal_replays_after_restart_and_ignores_a_torn_record(tmp_path: Path) -> None:
    path = tmp_path / "dhcp" / "leases.journal"
    journal = LeaseJournal(path)
    assert journal.load() == []
    first = Lease(A, "02:00:00:00:00:01", 2000.0, LeaseState.OFFERED)
    bound = Lease(A, "02:00:00:00:00:01", 5000.0, LeaseState.BOUND)
    journal.append([first, bound])
    journal.close()
    with path.open("ab") as f:
        f.write(b"198.18.0.101 02:00:00:00:00:02 50")  # killed mid-write
    again = LeaseJournal(path)
    assert again.load() == [first, bound]
    again.append([Lease(A + 1, "02:00:00:00:00:03", 3000.0, LeaseState.BOUND)])
    again.close()
    assert [lease.mac for lease in LeaseJournal(path).load()][-1] == "02:00:00:00:00:03"


def test_journal_skips_garbled_lines(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    path.write_text("nonsense\n198.18.0.100 - 99 declined\n")
    assert LeaseJournal(path).load() == [Lease(A, "", 99.0, LeaseState.DECLINED)]


def test_compaction_keeps_what_a_restart_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_mod, "COMPACT_MIN", 10)
    journal = LeaseJournal(tmp_path / "leases.journal")
    journal.load()
    table = LeaseTable((A, A + 9))
    for n in range(30):
        lease = Lease(A + n % 3, f"02:00:00:00:00:0{n % 3}", 100.0 + n, LeaseState.BOUND)
        table.apply(lease)
        journal.append([lease])
    assert journal.needs_compaction(len(table.by_mac))
    journal.compact(table.live(50.0))
    journal.append([Lease(A + 5, "02:00:00:00:00:09", 500.0, LeaseState.BOUND)])
    journal.close()
    replayed = LeaseTable((A, A + 9))
    for lease in LeaseJournal(tmp_path / "leases.journal").load():
        replayed.apply(lease)
    assert replayed.by_mac == {
        **table.by_mac,
        "02:00:00:00:00:09": replayed.by_mac["02:00:00:00:00:09"],
    }
    assert not replayed.available(A, "02:00:00:00:00:05", 60.0)


def test_table_gives_fresh_addresses_before_expired_ones() -> None:
    table = LeaseTable((A, A + 2), excluded={A + 1})
    table.apply(Lease(A, "m1", 10.0, LeaseState.BOUND))
    assert table.allocate(20.0) == A + 2
    table.apply(Lease(A + 2, "m2", 15.0, LeaseState.BOUND))
    assert table.allocate(5.0) is None
    assert table.allocate(20.0) == A  # expired first
    table.apply(Lease(A, "m1", 30.0, LeaseState.RELEASED))
    assert table.allocate(20.0) == A + 2  # released at 30 vs expired at 15: older first


def test_a_client_moving_to_a_new_address_frees_the_old_one() -> None:
    table = LeaseTable((A, A + 2))
    table.apply(Lease(A, "m1", 100.0, LeaseState.BOUND))
    table.apply(Lease(A + 1, "m1", 100.0, LeaseState.BOUND))
    assert table.available(A, "m2", 50.0)
    assert not table.available(A + 1, "m2", 50.0)


def _req(**kw: object) -> DhcpPacket:
    return DhcpPacket(op=BOOTREQUEST, xid=1, chaddr=bytes(6), **kw)  # type: ignore[arg-type]


def _reply(mtype: MessageType, yiaddr: str = "198.18.0.9") -> DhcpPacket:
    return DhcpPacket(
        op=2, xid=1, chaddr=bytes(6), yiaddr=IP(yiaddr), options=Options(message_type=mtype)
    )


@pytest.mark.parametrize(
    ("request_kw", "mtype", "peer", "expected"),
    [
        (
            {"giaddr": IP("198.18.1.1")},
            MessageType.OFFER,
            ("198.18.1.1", 67),
            ("198.18.1.1", 67, False),
        ),
        ({}, MessageType.NAK, ("0.0.0.0", 68), ("255.255.255.255", 68, False)),
        (
            {"ciaddr": IP("198.18.0.9")},
            MessageType.ACK,
            ("198.18.0.9", 68),
            ("198.18.0.9", 68, False),
        ),
        (
            {"flags": BROADCAST_FLAG},
            MessageType.OFFER,
            ("0.0.0.0", 68),
            ("255.255.255.255", 68, False),
        ),
        ({}, MessageType.OFFER, ("0.0.0.0", 68), ("198.18.0.9", 68, True)),
        ({}, MessageType.OFFER, ("127.0.0.1", 40000), ("127.0.0.1", 40000, False)),
    ],
)
def test_reply_destination_follows_rfc2131_4_1(
    request_kw: dict[str, object],
    mtype: MessageType,
    peer: tuple[str, int],
    expected: tuple[str, int, bool],
) -> None:
    dest = reply_destination(_req(**request_kw), _reply(mtype), peer)
    assert (dest.host, dest.port, dest.arp) == expected


def test_proxy_offer_without_address_is_broadcast() -> None:
    dest = reply_destination(_req(), _reply(MessageType.OFFER, "0.0.0.0"), ("0.0.0.0", 68))
    assert (dest.host, dest.arp) == ("255.255.255.255", False)
