"""The FAT reader against volumes made by mkfs.vfat and filled by mtools, checked by mtools."""

from __future__ import annotations

import io
import itertools
import os
import random
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piman.deploy.errors import ImageError
from piman.deploy.fat import FatVolume, probe
from piman.deploy.partitions import Region
from tests.support import needs_tool

KIB = 1024
# name → content: long names, spaces, unicode, case, nesting, an empty file, a multi-cluster file
TREE: dict[str, bytes] = {
    "config.txt": b"arm_64bit=1\n",
    "cmdline.txt": b"console=tty1 root=PARTUUID=abcdef12-02\n",
    "A Long File Name With Spaces.txt": b"long\n",
    "Überraschung ünïcode.txt": "grüße\n".encode(),
    "UPPER.TXT": b"upper\n",
    "empty": b"",
    "overlays/vc4-kms-v3d-pi4.dtbo": random.Random(1).randbytes(5000),
    "overlays/README": b"overlays\n",
    "sub/deeper/still deeper/random.bin": random.Random(2).randbytes(70_000),
}


def mtools(*args: str, stdin: bytes | None = None) -> bytes:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(args, input=stdin, capture_output=True, check=True, env=env).stdout


def fill(image: str, root: Path, files: dict[str, bytes]) -> None:
    """Writes ``files`` under ``root`` and copies them into the FAT ``image`` (mcopy -s)."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    tops = sorted({name.split("/", 1)[0] for name in files})
    mtools("mcopy", "-s", "-i", image, *(str(root / t) for t in tops), "::/")


def make_fat(tmp_path: Path, bits: int, kib: int, files: dict[str, bytes], *extra: str) -> Path:
    """A FAT``bits`` volume of ``kib`` KiB made by mkfs.vfat and filled by mcopy."""
    needs_tool("mkfs.vfat", "mcopy")
    image = tmp_path / f"fat{bits}.img"
    subprocess.run(
        ["mkfs.vfat", "-C", "-F", str(bits), "-n", f"VOL{bits}", *extra, str(image), str(kib)],
        capture_output=True,
        check=True,
    )
    tree = tmp_path / f"tree{bits}"
    tree.mkdir()
    fill(str(image), tree, files)
    return image


@contextmanager
def volume(image: Path) -> Iterator[FatVolume]:
    with image.open("rb") as f:
        yield FatVolume.open(Region(f, 0, image.stat().st_size))


@pytest.fixture(params=[(12, 2048), (16, 20480), (32, 40960)], ids=["FAT12", "FAT16", "FAT32"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    bits, kib = request.param
    extra = ("-s", "1") if bits == 32 else ()
    return make_fat(tmp_path, bits, kib, TREE, *extra)


def test_every_file_lists_and_reads_as_mtools_sees_it(image: Path) -> None:
    with volume(image) as vol:
        assert vol.kind == "FAT" + image.stem[3:]
        assert vol.label == "VOL" + image.stem[3:]
        listed = {e.path: e for e in vol.entries()}
        bare = mtools("mdir", "-/", "-b", "-i", str(image), "::/").decode().splitlines()
        assert {p.removeprefix("::/").rstrip("/") for p in bare} == set(listed)
        assert {e.path for e in vol.files()} == set(TREE)
        for name, data in TREE.items():
            assert vol.read(name) == data
            assert listed[name].size == len(data)
            assert mtools("mtype", "-i", str(image), f"::/{name}") == data
        assert listed["sub/deeper"].is_dir


def test_paths_match_in_any_case_on_long_and_short_names(image: Path) -> None:
    with volume(image) as vol:
        assert vol.read("/OVERLAYS/readme") == b"overlays\n"
        assert vol.read("upper.txt") == b"upper\n"
        short = vol.find("A Long File Name With Spaces.txt")
        assert short is not None
        assert short.short_name.startswith("ALONGF~")
        assert vol.find("nope.txt") is None
        assert vol.find("") is None
        with pytest.raises(ImageError, match="no such file"):
            vol.read("nope.txt")
        with pytest.raises(ImageError, match="is a directory"):
            vol.read("overlays")


def free_bytes(image: Path) -> int:
    """What mtools says is free on the volume."""
    last = mtools("mdir", "-i", str(image), "::/").decode().strip().splitlines()[-1]
    return int(last.split("bytes free")[0].replace(" ", ""))


def test_allocation_is_the_head_plus_every_used_cluster(image: Path) -> None:
    with volume(image) as vol:
        ranges = vol.allocation()
        assert ranges[0][0] == 0
        assert ranges[0][1] >= vol.data_start
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
        used = sum(end - start for start, end in ranges) - vol.data_start
        assert vol.clusters * vol.cluster_size - used == free_bytes(image)
        for entry in vol.files():
            for cluster in vol.chain(entry.first_cluster, entry.path) if entry.size else ():
                at = vol.data_start + (cluster - 2) * vol.cluster_size
                assert any(s <= at < e for s, e in ranges)


def test_a_deleted_file_leaves_its_clusters_unallocated_though_its_data_remains(
    tmp_path: Path,
) -> None:
    big = random.Random(3).randbytes(3 * 1024 * KIB)
    image = make_fat(tmp_path, 32, 40960, {"keep.txt": b"kept\n", "big.bin": big}, "-s", "1")
    with volume(image) as vol:
        before = vol.allocation()
        entry = vol.find("big.bin")
        assert entry is not None
        start = vol.data_start + (entry.first_cluster - 2) * vol.cluster_size
    mtools("mdel", "-i", str(image), "::/big.bin")
    with volume(image) as vol:
        after = vol.allocation()
        assert sum(e - s for s, e in before) - sum(e - s for s, e in after) >= len(big)
        assert not any(s <= start < e for s, e in after)
        assert vol.read("keep.txt") == b"kept\n"
    data = image.read_bytes()
    assert data[start : start + 4096] == big[:4096]  # still there, just no longer in use


def test_a_fragmented_file_reads_back_whole(tmp_path: Path) -> None:
    rng = random.Random(4)
    files = {f"small{i}.bin": rng.randbytes(3000) for i in range(12)}
    image = make_fat(tmp_path, 16, 20480, files)
    for i in range(0, 12, 2):
        mtools("mdel", "-i", str(image), f"::/small{i}.bin")
    frag = rng.randbytes(200_000)
    (tmp_path / "frag.bin").write_bytes(frag)
    mtools("mcopy", "-i", str(image), str(tmp_path / "frag.bin"), "::/frag.bin")
    with volume(image) as vol:
        entry = vol.find("frag.bin")
        assert entry is not None
        clusters = list(vol.chain(entry.first_cluster, "frag"))
        assert any(b != a + 1 for a, b in itertools.pairwise(clusters))
        assert vol.read("frag.bin") == frag


def patched(image: Path, at: int, data: bytes) -> None:
    with image.open("r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_cluster_chain_that_loops_is_corruption(tmp_path: Path) -> None:
    image = make_fat(tmp_path, 16, 20480, {"a.bin": bytes(range(256)) * 40})
    with volume(image) as vol:
        entry = vol.find("a.bin")
        assert entry is not None
        fat = vol.sector_size * struct.unpack_from("<H", image.read_bytes(), 14)[0]
    second = entry.first_cluster + 1
    patched(image, fat + 2 * second, struct.pack("<H", entry.first_cluster))
    with volume(image) as vol:
        with pytest.raises(ImageError, match="loops"):
            vol.read("a.bin")


def test_a_chain_shorter_than_the_file_is_corruption(tmp_path: Path) -> None:
    image = make_fat(tmp_path, 16, 20480, {"a.bin": bytes(range(256)) * 40})
    with volume(image) as vol:
        entry = vol.find("a.bin")
        assert entry is not None
        fat = vol.sector_size * struct.unpack_from("<H", image.read_bytes(), 14)[0]
    patched(image, fat + 2 * entry.first_cluster, struct.pack("<H", 0xFFFF))
    with volume(image) as vol:
        with pytest.raises(ImageError, match="shorter than its size"):
            vol.read("a.bin")


def test_a_filesystem_larger_than_its_region_is_refused(tmp_path: Path) -> None:
    image = make_fat(tmp_path, 16, 20480, {"a.txt": b"a"})
    with image.open("rb") as f, pytest.raises(ImageError, match="partition holds"):
        FatVolume.open(Region(f, 0, image.stat().st_size - 4096))


def test_other_filesystems_are_not_fat(tmp_path: Path) -> None:
    needs_tool("mke2fs")
    ext = tmp_path / "ext.img"
    subprocess.run(["mke2fs", "-q", "-F", str(ext), "1M"], check=True, capture_output=True)
    for content in (ext.read_bytes(), bytes(8192)):
        region = Region(io.BytesIO(content), 0, len(content))
        assert not probe(region)
        with pytest.raises(ImageError, match="no FAT boot sector"):
            FatVolume.open(region)


FUZZ_FILES = {"a long name.txt": b"x" * 3000, "d/e/f.txt": b"y" * 100, "g": b"", "h/i": b"z"}


@pytest.fixture(scope="module", params=[(12, 256), (16, 8192), (32, 33 * 1024)], ids=str)
def fuzz_volume(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[io.BytesIO, list[tuple[int, int]]]:
    """A small volume in memory, and the byte windows worth corrupting: the boot sector, the
    start of the first FAT, the start of the data area (FAT12/16: the root directory)."""
    bits, kib = request.param
    extra = ("-s", "1") if bits != 12 else ()
    image = make_fat(tmp_path_factory.mktemp("fuzz"), bits, kib, FUZZ_FILES, *extra)
    with volume(image) as vol:
        fat = vol.sector_size * struct.unpack_from("<H", image.read_bytes(), 14)[0]
        root = vol.data_start - (32 * 512 if bits != 32 else 0)
    windows = [(0, 512), (fat, fat + 1024), (root, root + 32 * 512 + 8192)]
    return io.BytesIO(image.read_bytes()), windows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupted_volumes_raise_image_error_only(
    fuzz_volume: tuple[io.BytesIO, list[tuple[int, int]]], data: st.DataObject
) -> None:
    """Random bytes in the boot sector, the FAT, directories and first clusters."""
    file, windows = fuzz_volume
    flips = data.draw(
        st.lists(st.tuples(st.sampled_from(windows), st.integers(0, 1 << 20), st.integers(0, 255)),
                 max_size=12)
    )  # fmt: skip
    buffer = file.getbuffer()
    saved = []
    for (start, end), offset, value in flips:
        at = start + offset % (end - start)
        saved.append((at, buffer[at]))
        buffer[at] = value
    try:
        region = Region(file, 0, len(buffer))
        vol = FatVolume.open(region)
        vol.allocation()
        for entry in vol.files():
            b"".join(vol.chunks(entry))
    except ImageError:
        pass
    finally:
        for at, value in reversed(saved):
            buffer[at] = value
        del buffer
