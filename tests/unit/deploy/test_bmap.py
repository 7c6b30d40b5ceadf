"""Block maps that Debian's bmaptool reads and copies, mapping exactly what the filesystems use."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import subprocess
from pathlib import Path

import pytest

from piman.deploy import bmap
from piman.deploy.errors import ImageError
from piman.deploy.images import inspect
from tests.support import needs_root, needs_tool
from tests.unit.deploy.test_images import MIB, RASPIOS_BOOT, build_image, run

BLOCK = 4096


def mapped(result: bmap.Bmap) -> set[int]:
    return {b for r in result.ranges for b in range(r.first, r.last + 1)}


def block_of(offset: int) -> int:
    return offset // BLOCK


def bmaptool_copy(bmap_file: Path, image: Path, dest: Path | str) -> None:
    needs_tool("bmaptool")
    run("bmaptool", "copy", "--bmap", str(bmap_file), str(image), str(dest))


def make_bmap(image: Path, **limits: int) -> tuple[bmap.Bmap, Path]:
    result = bmap.compute(image, inspect(image), **limits)
    path = image.with_suffix(".bmap")
    bmap.write(result, path)
    return result, path


@pytest.mark.parametrize("table", ["mbr", "gpt"])
def test_bmaptool_copy_reproduces_the_image(tmp_path: Path, table: str) -> None:
    image = build_image(tmp_path / "pi.img", table=table, other_mib=1)
    result, path = make_bmap(image)
    assert result.image_size == image.stat().st_size
    assert result.mapped_blocks < result.blocks_count
    bmaptool_copy(path, image, tmp_path / "dest.img")
    assert (tmp_path / "dest.img").read_bytes() == image.read_bytes()


def test_ranges_are_ordered_split_capped_and_hash_their_bytes(tmp_path: Path) -> None:
    image = build_image(tmp_path / "pi.img", root={"data.bin": random.randbytes(300_000)})
    result, path = make_bmap(image, max_range_blocks=7, split_at_block=300)
    data = image.read_bytes()
    for left, right in itertools.pairwise(result.ranges):
        assert left.last < right.first
    for r in result.ranges:
        assert r.blocks <= 7
        assert not r.first < 300 <= r.last
        assert r.sha256 == hashlib.sha256(data[r.first * BLOCK : (r.last + 1) * BLOCK]).hexdigest()
    bmaptool_copy(path, image, tmp_path / "dest.img")
    assert (tmp_path / "dest.img").read_bytes() == data


def test_read_gives_back_what_write_wrote_and_refuses_a_changed_file(tmp_path: Path) -> None:
    image = build_image(tmp_path / "pi.img")
    result, path = make_bmap(image)
    assert bmap.read(path) == result
    text = path.read_text()
    changed = text.replace(f"> {result.ranges[1].first}-", f"> {result.ranges[1].first + 1}-", 1)
    assert changed != text
    path.write_text(changed)
    with pytest.raises(ImageError, match=r"^pi\.bmap: its BmapFileChecksum does not match"):
        bmap.read(path)
    needs_tool("bmaptool")
    refused = subprocess.run(
        ["bmaptool", "copy", "--bmap", str(path), str(image), str(tmp_path / "d.img")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "checksum mismatch" in refused.stderr
    with pytest.raises(FileNotFoundError):
        bmap.read(tmp_path / "missing.bmap")
    (tmp_path / "junk.bmap").write_text("<html>")
    with pytest.raises(ImageError, match="not a bmap file"):
        bmap.read(tmp_path / "junk.bmap")


def test_read_accepts_what_bmaptool_create_writes(tmp_path: Path) -> None:
    needs_tool("bmaptool")
    image = build_image(tmp_path / "pi.img")
    run("bmaptool", "create", "-o", str(tmp_path / "made.bmap"), str(image))
    theirs = bmap.read(tmp_path / "made.bmap")
    data = image.read_bytes()
    assert theirs.image_size == len(data)
    for r in theirs.ranges:
        assert r.sha256 == hashlib.sha256(data[r.first * BLOCK : (r.last + 1) * BLOCK]).hexdigest()


def test_deleted_files_are_not_mapped_though_their_bytes_remain(tmp_path: Path) -> None:
    needs_tool("mdel", "debugfs")
    fat_big, ext_big = random.randbytes(3 * MIB), random.randbytes(4 * MIB)
    boot = {**RASPIOS_BOOT, "big.bin": fat_big}
    image = build_image(tmp_path / "pi.img", boot, {"big.bin": ext_big, "etc/hostname": b"pi\n"})
    info = inspect(image)
    fat_start = info.partitions[0].partition.start_bytes
    ext_start = info.partitions[1].partition.start_bytes
    blocks = subprocess.run(
        ["debugfs", "-R", "blocks /big.bin", f"{image}?offset={ext_start}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ext_blocks = {block_of(ext_start) + int(b) for b in blocks}
    data = image.read_bytes()
    fat_offset = data.index(fat_big[:4096], fat_start)
    fat_blocks = set(range(block_of(fat_offset) + 1, block_of(fat_offset + len(fat_big))))
    before = mapped(bmap.compute(image, info))
    assert fat_blocks <= before
    assert ext_blocks <= before
    run("mdel", "-i", f"{image}@@{fat_start}", "::/big.bin")
    run("debugfs", "-w", "-R", "rm /big.bin", f"{image}?offset={ext_start}")
    after = mapped(bmap.compute(image, inspect(image)))
    assert not fat_blocks & after
    assert not ext_blocks & after
    assert len(before) - len(after) >= (len(fat_big) + len(ext_big)) // BLOCK - 2
    assert image.read_bytes()[fat_offset : fat_offset + 4096] == fat_big[:4096]


def test_outside_the_partitions_only_head_data_is_mapped_and_other_partitions_in_full(
    tmp_path: Path,
) -> None:
    image = build_image(tmp_path / "pi.img", other_mib=2, tail_mib=2)
    size = image.stat().st_size
    with image.open("r+b") as f:
        f.seek(512 * 1024)  # a bootloader in the gap before the first partition
        f.write(b"\xea" * 3000)
        f.seek(size - MIB)  # junk after the last partition
        f.write(random.randbytes(MIB))
    info = inspect(image)
    result = mapped(bmap.compute(image, info))
    assert 0 in result
    assert {128} <= result  # the bootloader's block
    assert 64 not in result  # a hole in the gap
    other = info.partitions[2].partition
    assert set(range(block_of(other.start_bytes), block_of(other.end_bytes))) <= result
    assert not result & set(range(block_of(other.end_bytes), block_of(size)))


def test_an_image_without_a_table_maps_its_data(tmp_path: Path) -> None:
    image = tmp_path / "raw.img"
    with image.open("wb") as f:
        f.truncate(10_000 + 8 * BLOCK)
        f.seek(8 * BLOCK)
        f.write(random.randbytes(10_000))
    result, path = make_bmap(image)
    assert [(r.first, r.last) for r in result.ranges] == [(8, 10)]
    assert bmap.mapped_bytes(result) == 10_000
    bmaptool_copy(path, image, tmp_path / "dest.img")
    assert (tmp_path / "dest.img").read_bytes() == image.read_bytes()


def test_an_image_changed_since_inspection_is_refused(tmp_path: Path) -> None:
    image = build_image(tmp_path / "pi.img")
    info = inspect(image)
    with image.open("ab") as f:
        f.write(b"more")
    with pytest.raises(ImageError, match="changed since it was inspected"):
        bmap.compute(image, info)


def test_bmaptool_onto_garbage_gives_the_same_filesystems(tmp_path: Path) -> None:
    """A card full of old data: only mapped blocks are written, and that is enough. Blocks in
    use that hold zeros, and are holes in the stored image, are written too."""
    needs_root()
    needs_tool("losetup", "fallocate", "fsck.vfat", "e2fsck", "debugfs", "mdir", "mtype", "sgdisk")
    zeros_ext = random.randbytes(64 * 1024)
    boot = {**RASPIOS_BOOT, "zeros.bin": bytes(200_000), "gone.bin": random.randbytes(MIB)}
    root = {"etc/hostname": b"pi\n", "zeroed.bin": zeros_ext, "gone.bin": random.randbytes(MIB)}
    image = build_image(tmp_path / "pi.img", boot, root, table="gpt", fat_bits=32, boot_mib=40)
    info = inspect(image)
    fat, ext = (p.partition for p in info.partitions)
    run("mdel", "-i", f"{image}@@{fat.start_bytes}", "::/gone.bin")
    run("debugfs", "-w", "-R", "rm /gone.bin", f"{image}?offset={ext.start_bytes}")
    first = subprocess.run(
        ["debugfs", "-R", "blocks /zeroed.bin", f"{image}?offset={ext.start_bytes}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    zeroed_at = ext.start_bytes + int(first) * BLOCK
    with image.open("r+b") as f:  # the file's first block now holds zeros: allocated, all zero
        f.seek(zeroed_at)
        f.write(bytes(BLOCK))
    run("fallocate", "--dig-holes", str(image))
    assert _is_hole(image, zeroed_at)
    result, path = make_bmap(image)
    assert block_of(zeroed_at) in mapped(result)

    card = tmp_path / "card.img"
    card.write_bytes(random.randbytes(image.stat().st_size))
    loop = subprocess.run(["losetup", "-f", "--show", str(card)], capture_output=True, text=True)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    try:
        bmaptool_copy(path, image, loop.stdout.strip())
    finally:
        run("losetup", "-d", loop.stdout.strip())

    verify = subprocess.run(["sgdisk", "-v", str(card)], capture_output=True, text=True)
    assert "No problems found" in verify.stdout, verify.stdout
    written, original = card.read_bytes(), image.read_bytes()
    assert info.table is not None
    for start, end in info.table.metadata:  # both GPT headers and entry arrays, byte for byte
        assert written[start:end] == original[start:end]
    (tmp_path / "p1").write_bytes(written[fat.start_bytes : fat.end_bytes])
    (tmp_path / "p2").write_bytes(written[ext.start_bytes : ext.end_bytes])
    run("fsck.vfat", "-n", str(tmp_path / "p1"))
    run("e2fsck", "-fn", str(tmp_path / "p2"))
    listing = ["mdir", "-/", "-b", "-i"]
    want = subprocess.run([*listing, f"{image}@@{fat.start_bytes}", "::/"], capture_output=True)
    got = subprocess.run([*listing, str(tmp_path / "p1"), "::/"], capture_output=True)
    assert got.stdout == want.stdout
    for name, data in boot.items():
        if name != "gone.bin":
            out = subprocess.run(["mtype", "-i", str(tmp_path / "p1"), f"::/{name}"],
                                 capture_output=True, check=True)  # fmt: skip
            assert out.stdout == data
    for name, data in {
        "etc/hostname": b"pi\n",
        "zeroed.bin": bytes(BLOCK) + zeros_ext[BLOCK:],
    }.items():
        out = subprocess.run(["debugfs", "-R", f"cat /{name}", str(tmp_path / "p2")],
                             capture_output=True, check=True)  # fmt: skip
        assert out.stdout == data


def _is_hole(path: Path, offset: int) -> bool:
    with path.open("rb") as f:
        return os.lseek(f.fileno(), offset, os.SEEK_HOLE) == offset
