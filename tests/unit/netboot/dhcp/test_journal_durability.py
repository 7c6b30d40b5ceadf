"""The lease journal when the disk misbehaves: a full disk mid-append, the first creation of the
file and its directory, compaction and the file's mode, the client identifier of a lease.

The full disk is real: a 64 KiB tmpfs mounted for the test (needs root). Whether a directory was
fsynced cannot be seen without a power cut, so that test records ``os.fsync`` calls.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import BinaryIO

import pytest

from piman.netboot.dhcp import leases as leases_mod
from piman.netboot.dhcp.leases import Lease, LeaseJournal, LeaseState, LeaseTable
from tests.support import needs_root, needs_tool

A = int(IPv4Address("198.18.0.100"))


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, unmounted after the test."""
    needs_root()
    needs_tool("mount", "umount")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Take every free block of the file system ``path`` is on."""

    def write_on(f: BinaryIO) -> None:
        for _ in range(1 << 20):
            f.write(bytes(4096))

    with path.open("wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
        write_on(f)


def test_a_full_disk_mid_append_leaves_no_torn_line_for_the_next_lease(tiny_fs: Path) -> None:
    path = tiny_fs / "dhcp" / "leases.journal"
    journal = LeaseJournal(path)
    journal.load()
    first = Lease(A, "02:00:00:00:00:01", 5000.0, LeaseState.BOUND)
    journal.append([first])
    _fill(tiny_fs / "filler")
    # A batch larger than what is left in the journal's last block: a short write, then ENOSPC.
    batch = [Lease(A + 1 + n % 50, f"02:00:00:00:01:{n % 50:02x}", 6000.0, LeaseState.OFFERED)
             for n in range(200)]  # fmt: skip
    with pytest.raises(OSError, match="No space left"):
        journal.append(batch)
    (tiny_fs / "filler").unlink()
    # The next batch is acknowledged: it must be whole after a restart.
    acknowledged = Lease(A + 60, "02:00:00:00:00:02", 7000.0, LeaseState.BOUND)
    journal.append([acknowledged])
    journal.close()
    assert LeaseJournal(path).load() == [first, acknowledged]


def test_the_first_creation_of_the_journal_fsyncs_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(leases_mod.os, "fsync", fsync)
    path = tmp_path / "data" / "dhcp" / "leases.journal"
    journal = LeaseJournal(path)
    journal.load()
    journal.close()
    # The new file's entry in dhcp/, and the new dhcp/ and data/ entries in their parents.
    assert {str(path.parent), str(tmp_path / "data"), str(tmp_path)} <= set(synced)
    synced.clear()
    LeaseJournal(path).load()  # nothing new: nothing to sync
    assert synced == []


def test_compaction_keeps_the_journals_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_mod, "COMPACT_MIN", 4)
    path = tmp_path / "leases.journal"
    journal = LeaseJournal(path)
    journal.load()
    path.chmod(0o600)  # the operator tightened it
    table = LeaseTable((A, A + 9))
    for n in range(8):
        lease = Lease(A, "02:00:00:00:00:01", 100.0 + n, LeaseState.BOUND)
        table.apply(lease)
        journal.append([lease])
    assert journal.needs_compaction(len(table.by_mac))
    old_umask = os.umask(0o022)
    try:
        journal.compact(table.live(50.0))
    finally:
        os.umask(old_umask)
    journal.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.with_suffix(".tmp").exists()
    assert LeaseJournal(path).load() == table.live(50.0)


def test_a_lease_keeps_the_client_identifier_and_old_records_still_load(tmp_path: Path) -> None:
    path = tmp_path / "leases.journal"
    path.write_text("198.18.0.100 02:00:00:00:00:01 5000 bound\n")  # written by an older piman
    journal = LeaseJournal(path)
    old = journal.load()
    assert old == [Lease(A, "02:00:00:00:00:01", 5000.0, LeaseState.BOUND)]
    with_id = Lease(A + 1, "02:00:00:00:00:02", 6000.0, LeaseState.BOUND, b"\x01\x02\x00")
    journal.append([with_id])
    journal.close()
    assert LeaseJournal(path).load() == [*old, with_id]
