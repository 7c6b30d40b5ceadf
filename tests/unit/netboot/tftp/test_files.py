"""Path safety (nothing from the wire names a file outside the TFTP root) and the file cache."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piman.netboot.tftp import files as files_module
from piman.netboot.tftp.files import (
    NETASCII_CHUNK,
    AccessViolation,
    ByteSource,
    BytesSource,
    FileCache,
    FileSource,
    NetasciiSource,
    RootDirectory,
    netascii,
    resolve_inside,
)
from piman.netboot.tftp.packets import Ack, Data, Opcode, Request, decode, encode
from piman.netboot.tftp.session import SessionSettings, TftpSession


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "data"
    (base / "sub").mkdir(parents=True)
    (base / "sub" / "f.txt").write_bytes(b"inside")
    (base / "start4.elf").write_bytes(b"elf")
    private = tmp_path / "data-private"
    private.mkdir()
    (private / "secret").write_bytes(b"secret")
    (base / "escape").symlink_to(private / "secret")
    (base / "dir-escape").symlink_to(private)
    (base / "inner-link").symlink_to(base / "sub" / "f.txt")
    return base.resolve()


@pytest.mark.parametrize(
    "name",
    [
        "../data-private/secret",
        "sub/../../data-private/secret",
        "..",
        "sub\\..\\..\\x",
        "a\x00b",
        "escape",
        "dir-escape/secret",
        "x" * 600,
        "a/" + "y" * 300,
    ],
)
def test_escaping_names_are_access_violations(root: Path, name: str) -> None:
    with pytest.raises(AccessViolation):
        resolve_inside(root, name)


def test_string_prefix_sibling_is_not_inside(root: Path) -> None:
    # /…/data-private starts with the string /…/data but is not under it.
    with pytest.raises(AccessViolation):
        resolve_inside(root, "../data-private")


def test_absolute_names_map_onto_the_root(root: Path) -> None:
    assert resolve_inside(root, "/sub/f.txt") == root / "sub" / "f.txt"
    assert resolve_inside(root, "/etc/passwd") == root / "etc" / "passwd"  # → not found


def test_symlinks_that_stay_inside_are_allowed(root: Path) -> None:
    assert resolve_inside(root, "inner-link") == root / "sub" / "f.txt"


async def test_root_directory_serves_files_and_reports_missing_ones(root: Path) -> None:
    hook = RootDirectory(root)
    source = await hook("sub/f.txt", ("198.18.0.5", 1000))
    assert source is not None
    assert source.read(0, 100) == b"inside"
    assert await hook("nope", ("198.18.0.5", 1000)) is None
    assert await hook("sub", ("198.18.0.5", 1000)) is None  # a directory is not a file
    with pytest.raises(AccessViolation):
        await hook("escape", ("198.18.0.5", 1000))


async def test_cache_notices_changed_files_and_large_files_use_pread(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"one")
    cache = FileCache(max_file=10)
    first = await cache.open(path)
    assert first is not None
    assert first.read(0, 10) == b"one"
    path.write_bytes(b"second")
    os.utime(path, ns=(1, 10**18))
    again = await cache.open(path)
    assert again is not None
    assert again.read(0, 10) == b"second"
    path.write_bytes(b"much larger than ten")
    big = await cache.open(path)
    assert big is not None
    assert not isinstance(big, BytesSource)
    assert big.read(5, 6) == b"larger"
    big.close()


def test_netascii_conversion() -> None:
    assert netascii(b"a\nb\r\nc\r") == b"a\r\nb\r\0\r\nc\r\0"


async def test_concurrent_opens_of_one_file_share_one_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"shared" * 1000)
    cache = FileCache()
    sources = await asyncio.gather(*(cache.open(path) for _ in range(20)))
    assert all(s is not None and s.read(0, 6) == b"shared" for s in sources)
    assert len({id(s._data) for s in sources if isinstance(s, BytesSource)}) == 1


async def test_transfers_of_one_file_share_their_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "start4.elf"
    content = os.urandom(5000)
    path.write_bytes(content)
    cache = FileCache()
    sessions = []
    for _ in range(2):
        source = await cache.open(path)
        assert source is not None
        session = TftpSession(
            Request(Opcode.RRQ, "start4.elf", "octet"), "198.18.0.5:1", SessionSettings(), 0.0
        )
        session.start(source, 0.0)
        sessions.append(session)
    first, second = sessions
    got: list[bytes] = []
    while turns := first.lockstep_turns(4):
        got += [datagram for _, datagram in turns]
        first.lockstep_advance(len(turns), 0.0)
    # The second transfer sends the very datagrams the first one built, not copies.
    for block, datagram in enumerate(got, start=2):
        again = second.ack_datagram(encode(Ack(block - 1)), 0.0)
        assert again is datagram
        assert decode(again) == Data(block, content[(block - 1) * 512 : block * 512])


async def test_memos_count_against_the_cache_budget(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"m" * 4000)
    cache = FileCache(max_total=9000)
    source = await cache.open(path)
    assert source is not None
    assert cache.total == 4000
    memo = source.memo(512)
    assert memo is not None
    assert len(memo) == 8
    assert source.memo(512) is memo  # one per block size, shared
    assert cache.total == 4000 + 4000 + 8 * 41
    assert source.memo(1024) is None  # a second one would pass max_total: not made
    assert cache.total == 8328
    other = tmp_path / "g"
    other.write_bytes(b"g" * 2000)
    assert await cache.open(other) is not None  # evicts f (least recently used) with its memo
    assert cache.total == 2000
    assert source.memo(1024) is None  # f is gone from the cache: no new memo for it
    assert source.read(0, 3) == b"mmm"  # the open source still reads
    big = FileSource(os.open(path, os.O_RDONLY), 4000)
    assert big.memo(512) is None  # uncached files are not doubled in memory
    big.close()


# Files of CR, LF and other bytes around the chunk size: conversions cross chunk boundaries.
_TEXT = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"y" * 1000]), max_size=400)


@settings(max_examples=60, deadline=None)
@given(parts=_TEXT, reads=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3000)), max_size=30))
def test_netascii_source_reads_what_converting_the_whole_file_gives(
    parts: list[bytes], reads: list[tuple[float, int]]
) -> None:
    data = b"".join(parts) * 3
    whole = netascii(data)
    source = NetasciiSource(BytesSource(data))
    assert source.size == len(whole)
    for where, length in reads:  # anywhere, in any order: retransmits read behind
        offset = int(where * len(whole))
        assert source.read(offset, length) == whole[offset : offset + length]
    assert source.read(len(whole), 10) == b""


def test_netascii_source_reads_block_after_block_across_chunks() -> None:
    data = (b"a\nb\r" * NETASCII_CHUNK)[: 3 * NETASCII_CHUNK + 5]
    whole = netascii(data)
    source = NetasciiSource(BytesSource(data))
    got = b"".join(source.read(offset, 1468) for offset in range(0, source.size, 1468))
    assert got == whole


def test_netascii_source_of_a_file_that_shrank_reads_short(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\n" * (2 * NETASCII_CHUNK))
    fd = os.open(path, os.O_RDONLY)
    source = NetasciiSource(FileSource(fd, 2 * NETASCII_CHUNK))
    assert source.size == 4 * NETASCII_CHUNK
    os.truncate(path, 100)
    assert source.read(0, 300) == b"\r\n" * 100  # what there is, not garbage
    assert source.read(3 * NETASCII_CHUNK, 10) == b""
    source.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closing the converted source closes the file


async def test_netascii_transfers_of_a_cached_file_read_it_through_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of netascii requests for one file costs one pass over it, not one each."""
    path = tmp_path / "cmdline.txt"
    path.write_bytes(b"console=serial0,115200\nroot=/dev/mmcblk0p2\r\n" * 5000)
    passes: list[int] = []
    real = files_module._netascii_marks

    def counted(source: ByteSource) -> list[int]:
        passes.append(source.size)
        return real(source)

    monkeypatch.setattr(files_module, "_netascii_marks", counted)
    cache = FileCache()
    for _ in range(5):
        source = await cache.open(path)
        assert source is not None
        converted = NetasciiSource(source)
        assert converted.read(0, 1 << 20) == netascii(path.read_bytes())
    assert len(passes) == 1
