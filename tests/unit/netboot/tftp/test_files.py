"""Path safety: nothing from the wire ever names a file outside the TFTP root."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from piman.netboot.tftp.files import (
    AccessViolation,
    BytesSource,
    FileCache,
    RootDirectory,
    netascii,
    resolve_inside,
)


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
