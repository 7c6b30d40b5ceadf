"""ext2/3/4 allocation against what dumpe2fs says, for the layouts mke2fs makes; conservative
where a bitmap cannot be trusted."""

from __future__ import annotations

import io
import random
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piman.deploy import ext4
from piman.deploy.errors import ImageError
from piman.deploy.partitions import Region
from tests.support import needs_tool

MIB = 1 << 20
LAYOUTS = {
    "ext4 (64bit, flex_bg, metadata_csum)": ("-t", "ext4", "-b", "4096"),
    "ext4 32-bit descriptors": ("-t", "ext4", "-b", "4096", "-O", "^64bit"),
    "ext4 uninit_bg without metadata_csum": ("-t", "ext4", "-O", "^metadata_csum,uninit_bg"),
    "ext4 1 KiB blocks": ("-t", "ext4", "-b", "1024"),
    "ext4 meta_bg": ("-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"),
    "ext4 meta_bg 32-bit": ("-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode,^64bit"),
    "ext4 bigalloc": ("-t", "ext4", "-b", "1024", "-O", "bigalloc", "-C", "16384"),
    "ext4 sparse_super2": ("-t", "ext4", "-b", "1024", "-O", "sparse_super2"),
    "ext4 without sparse_super": ("-t", "ext4", "-b", "1024", "-O", "^sparse_super,^resize_inode"),
    "ext3": ("-t", "ext3",),
    "ext2": ("-t", "ext2",),
}  # fmt: skip


def make_ext(path: Path, size: str, *options: str, files: dict[str, bytes] | None = None) -> Path:
    """An ext filesystem image made by ``mke2fs -d`` from ``files``."""
    needs_tool("mke2fs", "dumpe2fs", "debugfs")
    tree = path.with_suffix(".tree")
    tree.mkdir()
    for name, data in (files or {"etc/hostname": b"pi\n"}).items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    subprocess.run(
        ["mke2fs", "-q", "-F", *options, "-d", str(tree), str(path), size],
        check=True,
        capture_output=True,
    )
    return path


def debugfs(image: Path, command: str) -> str:
    out = subprocess.run(
        ["debugfs", "-w", "-R", command, str(image)], capture_output=True, text=True, check=True
    )
    return out.stdout


def dumpe2fs_groups(image: Path, ratio: int = 1) -> list[tuple[range, set[int], bool]]:
    """Per group: its blocks, the blocks dumpe2fs says are free, whether it is BLOCK_UNINIT.
    Under bigalloc dumpe2fs names each free cluster by its first block."""
    text = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True).stdout
    groups = []
    for block in re.split(r"\n(?=Group \d+:)", text)[1:]:
        head = re.match(r"Group \d+: \(Blocks (\d+)-(\d+)\)(.*)", block)
        assert head is not None
        free: set[int] = set()
        found = re.search(r"Free blocks: ([\d, -]*)", block)
        for part in (found.group(1) if found else "").split(","):
            if part.strip():
                a, _, b = part.strip().partition("-")
                free.update(range(int(a), int(b or a) + ratio))
        span = range(int(head.group(1)), int(head.group(2)) + 1)
        groups.append((span, free, "BLOCK_UNINIT" in head.group(3)))
    return groups


def allocation(image: Path) -> ext4.ExtAllocation:
    with image.open("rb") as f:
        return ext4.allocation(Region(f, 0, image.stat().st_size))


def used_blocks(result: ext4.ExtAllocation, block: int) -> set[int]:
    blocks: set[int] = set()
    for start, end in result.ranges:
        blocks.update(range(start // block, -(-end // block)))
    return blocks


@pytest.mark.parametrize("options", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_allocation_is_what_dumpe2fs_says_even_for_uninit_groups(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    files = {"etc/hostname": b"pi\n", "big.bin": random.Random(5).randbytes(2 * MIB)}
    image = make_ext(tmp_path / "fs.img", "48M", *options, files=files)
    with image.open("rb") as f:
        sb = ext4.read_superblock(Region(f, 0, image.stat().st_size))
    result = allocation(image)
    used = used_blocks(result, sb.block_size)
    groups = dumpe2fs_groups(image, sb.cluster_ratio)
    assert len(groups) == sb.group_count
    assert not result.whole
    # A BLOCK_UNINIT group's bitmap was never written: its metadata is computed as the kernel
    # does, except under meta_bg and bigalloc, where the whole group counts (conservative).
    whole = "meta_bg" in " ".join(options) or sb.cluster_ratio > 1
    assert list(result.uncertain_groups) == [i for i, g in enumerate(groups) if g[2] and whole]
    for span, free, uninit in groups:
        expected = set(span) if uninit and whole else set(span) - free
        assert used & set(span) == expected, (span, uninit)
    assert all(a[1] < b[0] for a, b in zip(result.ranges, result.ranges[1:], strict=False))


def test_superblock_names_the_version_label_and_geometry(tmp_path: Path) -> None:
    image = make_ext(tmp_path / "fs.img", "16M", "-t", "ext4", "-b", "4096", "-L", "rootfs")
    with image.open("rb") as f:
        sb = ext4.read_superblock(Region(f, 0, image.stat().st_size))
    assert (sb.version, sb.label, sb.block_size, sb.blocks_count) == ("ext4", "rootfs", 4096, 4096)


def test_a_deleted_file_is_not_in_use(tmp_path: Path) -> None:
    big = random.Random(6).randbytes(8 * MIB)
    image = make_ext(tmp_path / "fs.img", "32M", "-t", "ext4", "-b", "4096",
                     files={"big.bin": big, "etc/hostname": b"pi\n"})  # fmt: skip
    before = sum(e - s for s, e in allocation(image).ranges)
    blocks = debugfs(image, "blocks /big.bin").split()
    debugfs(image, "rm /big.bin")
    after = allocation(image)
    assert before - sum(e - s for s, e in after.ranges) >= len(big)
    first = int(blocks[0]) * 4096
    assert not any(s <= first < e for s, e in after.ranges)
    assert image.read_bytes()[first : first + 4096] == big[:4096]  # the bytes stay behind


def test_a_journal_to_replay_makes_the_whole_filesystem_in_use(tmp_path: Path) -> None:
    image = make_ext(tmp_path / "fs.img", "16M", "-t", "ext4", "-b", "4096")
    debugfs(image, "feature needs_recovery")
    result = allocation(image)
    assert result.whole
    assert result.ranges == ((0, 16 * MIB),)


def test_a_descriptor_with_a_bad_checksum_makes_its_group_in_use(tmp_path: Path) -> None:
    image = make_ext(tmp_path / "fs.img", "48M", "-t", "ext4", "-b", "1024")
    groups = dumpe2fs_groups(image)
    victim = next(i for i, g in enumerate(groups) if not g[2] and i > 0)
    debugfs(image, f"set_bg {victim} checksum 0x1234")
    result = allocation(image)
    assert victim in result.uncertain_groups
    assert set(groups[victim][0]) <= used_blocks(result, 1024)


def test_a_bitmap_with_a_bad_checksum_makes_its_group_in_use(tmp_path: Path) -> None:
    image = make_ext(tmp_path / "fs.img", "48M", "-t", "ext4", "-b", "1024")
    debugfs(image, "set_bg 0 block_bitmap_csum 0x1234")
    debugfs(image, "set_bg 0 checksum calc")
    assert 0 in allocation(image).uncertain_groups


def test_a_corrupt_superblock_is_refused(tmp_path: Path) -> None:
    image = make_ext(tmp_path / "fs.img", "16M", "-t", "ext4")
    data = bytearray(image.read_bytes())
    data[1024 + 0x78] ^= 0xFF  # the label: only the checksum notices
    image.write_bytes(data)
    with pytest.raises(ImageError, match="checksum does not match"):
        allocation(image)


def test_a_filesystem_larger_than_its_partition_is_refused(tmp_path: Path) -> None:
    image = make_ext(tmp_path / "fs.img", "16M", "-t", "ext4")
    with image.open("rb") as f, pytest.raises(ImageError, match="partition holds"):
        ext4.allocation(Region(f, 0, 8 * MIB))


def test_anything_else_is_not_ext(tmp_path: Path) -> None:
    needs_tool("mkfs.vfat")
    fat = tmp_path / "fat.img"
    subprocess.run(["mkfs.vfat", "-C", str(fat), "4096"], check=True, capture_output=True)
    for content in (fat.read_bytes(), bytes(4096), b"x" * 100):
        region = Region(io.BytesIO(content), 0, len(content))
        assert not ext4.probe(region)
        with pytest.raises(ImageError, match="not an ext2/3/4 filesystem"):
            ext4.read_superblock(region)


@pytest.fixture(scope="module", params=["64bit", "^64bit,^metadata_csum,uninit_bg"], ids=str)
def fuzz_fs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> io.BytesIO:
    path = tmp_path_factory.mktemp("fuzz") / "fs.img"
    image = make_ext(path, "8M", "-t", "ext4", "-b", "1024", "-O", request.param)
    return io.BytesIO(image.read_bytes())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_filesystems_raise_image_error_only(
    fuzz_fs: io.BytesIO, data: st.DataObject
) -> None:
    """Random bytes in the superblock (its checksum fixed up half the time, so that the rest of
    it gets looked at), the descriptors and the first bitmaps."""
    flips = data.draw(st.lists(st.tuples(st.integers(1024, 1024 * 40), st.integers(0, 255)),
                               max_size=10))  # fmt: skip
    buffer = fuzz_fs.getbuffer()
    saved = [(at, buffer[at]) for at, _ in flips] + [(a, buffer[a]) for a in range(2044, 2048)]
    for at, value in flips:
        buffer[at] = value
    if data.draw(st.booleans()):
        buffer[2044:2048] = ext4.crc32c(bytes(buffer[1024:2044])).to_bytes(4, "little")
    try:
        ext4.allocation(Region(fuzz_fs, 0, len(buffer)))
    except ImageError:
        pass
    finally:
        for at, value in reversed(saved):
            buffer[at] = value
        del buffer
