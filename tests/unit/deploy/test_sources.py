"""Importing images and root filesystems: every kind round-trips; broken sources leave nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import random
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from piman.deploy import sources
from piman.deploy.errors import ImageError
from piman.deploy.images import inspect
from piman.deploy.sources import import_source
from tests.support import needs_root, needs_tool
from tests.unit.deploy.test_images import MIB, build_image

BLOCK = 4096


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 33 MiB Pi-like image with random data in both filesystems (and long runs of zeros)."""
    root = {"etc/hostname": b"pi\n", "data.bin": random.Random(11).randbytes(3 * MIB)}
    return build_image(tmp_path_factory.mktemp("src") / "raspios.img", root=root)


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Anything an import may have left beside its destination."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".out"))


def xz(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=0)


def zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


def tar_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def halves(encode: Callable[[bytes], bytes], cut: int) -> Callable[[bytes], bytes]:
    """Two members, streams or frames, one after the other."""
    return lambda d: encode(d[:cut]) + encode(d[cut:])


def gz(data: bytes) -> bytes:
    return gzip.compress(data, 1)


ENCODINGS: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "raw": (".img", lambda d: d, "img"),
    "gzip": (".img.gz", gz, "gz"),
    "gzip, two members": (".img.gz", halves(gz, MIB), "gz"),
    "xz": (".img.xz", xz, "xz"),
    "xz, two streams and padding": (".img.xz", lambda d: halves(xz, MIB)(d) + bytes(8), "xz"),
    "zstd": (".img.zst", zst, "zst"),
    "zstd, two frames": (".img.zst", halves(zst, 3 * MIB), "zst"),
    "piseduce .img.tar.gz": (".img.tar.gz", lambda d: gz(tar_of({"os.img": d})), "piseduce"),
    "tar: readme, image": (".tar", lambda d: tar_of({"README": b"hi", "x/os.img": d}), "piseduce"),
}  # fmt: skip


@pytest.mark.parametrize("encoding", ENCODINGS.values(), ids=ENCODINGS.keys())
def test_each_kind_imports_to_the_same_sparse_image(
    tmp_path: Path, image: Path, encoding: tuple[str, Callable[[bytes], bytes], str]
) -> None:
    suffix, encode, kind = encoding
    src = tmp_path / f"raspios{suffix}"
    src.write_bytes(encode(image.read_bytes()))
    seen: list[tuple[int, int | None]] = []
    info = import_source(src, tmp_path / "out.img", on_progress=lambda d, t: seen.append((d, t)))
    out = tmp_path / "out.img"
    assert out.read_bytes() == image.read_bytes()
    assert (info.kind, info.raw_size, info.raw_sha256) == (
        kind,
        image.stat().st_size,
        sha256(image),
    )
    assert (info.source_sha256, info.source_bytes) == (sha256(src), src.stat().st_size)
    assert out.stat().st_blocks * 512 < 8 * MIB  # the zeros became holes
    assert seen[-1] == (src.stat().st_size, src.stat().st_size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert leftovers(tmp_path) == []
    if kind == "piseduce":
        assert info.member in ("os.img", "x/os.img")


def test_zero_blocks_become_holes_and_data_blocks_stay(tmp_path: Path) -> None:
    data = bytes(3 * BLOCK) + b"x" + bytes(BLOCK - 1) + bytes(10 * BLOCK) + b"tail"
    (tmp_path / "a.img").write_bytes(data)
    import_source(tmp_path / "a.img", tmp_path / "out.img")
    out = tmp_path / "out.img"
    assert out.read_bytes() == data
    with out.open("rb") as f:
        assert os.lseek(f.fileno(), 0, os.SEEK_DATA) == 3 * BLOCK
        assert os.lseek(f.fileno(), 3 * BLOCK, os.SEEK_HOLE) == 4 * BLOCK
        assert os.lseek(f.fileno(), 4 * BLOCK, os.SEEK_DATA) == 14 * BLOCK


def test_pzstd_output_with_skippable_frames_imports(tmp_path: Path, image: Path) -> None:
    needs_tool("pzstd")
    src = tmp_path / "raspios.img.zst"
    subprocess.run(["pzstd", "-q", "-p", "2", str(image), "-o", str(src)], check=True)
    info = import_source(src, tmp_path / "out.img")
    assert info.raw_sha256 == sha256(image)


BROKEN: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "gzip cut short": (".img.gz", lambda d: gz(d)[:-1000],
                       r"the gzip stream is truncated \(ends at \d+ bytes\)$"),
    "xz cut short": (".img.xz", lambda d: xz(d)[:-100], "the xz stream is truncated"),
    "zstd cut short": (".img.zst", lambda d: zst(d)[:-5000], "the zstd stream is truncated"),
    "xz with a flipped byte": (".img.xz", lambda d: _flip(xz(d)), "the xz data is corrupt near"),
    "gzip with a bad CRC": (".img.gz", lambda d: _flip(gz(d), -6), "the gzip data is corrupt"),
    "gzip then garbage": (".img.gz", lambda d: gz(d) + b"garbage!", "garbage follows the gzip"),
    "tar.gz cut inside the image": (".img.tar.gz", lambda d: gz(tar_of({"os.img": d})[: 2 * MIB]),
                                    "the tar member os.img is cut short"),
    "tar without an image": (".tar", lambda d: tar_of({"README": b"hi", "notes/x.txt": b"x"}),
                             "neither a disk image"),
    "tar with two images": (".tar", lambda d: tar_of({"a.img": d[:MIB], "b.img": d[:MIB]}),
                            "holds two images"),
}  # fmt: skip


def _flip(data: bytes, at: int | None = None) -> bytes:
    changed = bytearray(data)
    changed[len(data) // 2 if at is None else at] ^= 0x55
    return bytes(changed)


@pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_source_is_refused_and_leaves_nothing(
    tmp_path: Path, image: Path, broken: tuple[str, Callable[[bytes], bytes], str]
) -> None:
    suffix, encode, message = broken
    src = tmp_path / f"raspios{suffix}"
    src.write_bytes(encode(image.read_bytes()))
    with pytest.raises(ImageError, match=rf"^{re.escape(src.name)}: .*{message}"):
        import_source(src, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()
    assert leftovers(tmp_path) == []


def test_the_expected_sha256_is_checked_before_anything_is_kept(
    tmp_path: Path, image: Path
) -> None:
    src = tmp_path / "raspios.img.xz"
    src.write_bytes(xz(image.read_bytes()))
    good = sha256(src)
    dest = tmp_path / "out.img"
    dest.write_bytes(b"the previous image")
    with pytest.raises(ImageError, match=f"its SHA-256 is {good}, not the expected 0+$"):
        import_source(src, dest, expect_sha256="0" * 64)
    assert dest.read_bytes() == b"the previous image"
    assert leftovers(tmp_path) == []
    with pytest.raises(ImageError, match="is not a SHA-256"):
        import_source(src, dest, expect_sha256="abc")
    info = import_source(src, dest, expect_sha256=f" {good.upper()}\n")
    assert info.source_sha256 == good
    assert dest.read_bytes() == image.read_bytes()


def test_ctrl_c_during_an_import_leaves_nothing(tmp_path: Path, image: Path) -> None:
    src = tmp_path / "raspios.img.gz"
    src.write_bytes(gzip.compress(image.read_bytes(), 1))

    def interrupt(done: int, total: int | None) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_source(src, tmp_path / "out.img", on_progress=interrupt)
    assert not (tmp_path / "out.img").exists()
    assert leftovers(tmp_path) == []


def test_hashing_a_sparse_file_skips_its_holes_and_agrees_with_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with path.open("wb") as f:
        f.truncate(50 * MIB + 123)
        for at in (0, 5 * MIB + 7, 20 * MIB, 50 * MIB):
            f.seek(at)
            f.write(random.randbytes(100_000))
    for size in (50 * MIB + 123, 30 * MIB, 3 * MIB):  # data, or a hole, at the very end
        with path.open("r+b") as f:
            f.truncate(size)
        assert sources._hash_file(path) == (size, sha256(path))


@pytest.mark.parametrize("content", [None, b""], ids=["missing", "empty"])
def test_a_missing_or_empty_source_is_refused(tmp_path: Path, content: bytes | None) -> None:
    src = tmp_path / "raspios.img"
    if content is not None:
        src.write_bytes(content)
    with pytest.raises(ImageError, match=r"^raspios\.img: (no such file|is empty)$"):
        import_source(src, tmp_path / "out.img")


# -- root filesystems ---------------------------------------------------------------------------

FIRMWARE = {
    "config.txt": b"arm_64bit=1\n",
    "cmdline.txt": b"console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 rootwait\n",
    "issue.txt": b"Raspberry Pi reference 2024-11-19\n",
    "start4.elf": random.Random(12).randbytes(200_000),
    "overlays/vc4-kms-v3d-pi4.dtbo": random.Random(13).randbytes(3000),
}


def rootfs_tree(path: Path, boot_dir: str) -> Path:
    """A small root filesystem: owners, modes, a hard link, a device node, a symlink (also one
    in the boot directory that points at the host), and the boot files under ``boot_dir``."""
    (path / "etc").mkdir(parents=True)
    (path / "etc/hostname").write_text("rootfs-pi\n")
    (path / "etc/shadow").write_text("root:*:19000::::::\n")
    (path / "etc/shadow").chmod(0o640)
    (path / "usr/bin").mkdir(parents=True)
    (path / "usr/bin/sudo").write_bytes(random.Random(14).randbytes(50_000))
    (path / "usr/bin/sudo").chmod(0o4755)
    os.link(path / "usr/bin/sudo", path / "usr/bin/sudoedit")
    (path / "bin").symlink_to("usr/bin")
    (path / "home/pi").mkdir(parents=True)
    (path / "home/pi/.profile").write_text("# pi\n")
    os.chown(path / "home/pi", 1000, 1000)
    os.chown(path / "home/pi/.profile", 1000, 1000)
    (path / "dev").mkdir()
    os.mknod(path / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    (path / "dev/null").chmod(0o666)
    for name, data in FIRMWARE.items():
        (path / boot_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (path / boot_dir / name).write_bytes(data)
    (path / boot_dir / "host-secret").symlink_to("/etc/hostname")
    (path / boot_dir / "host-etc").symlink_to("/etc")
    return path


def debugfs(image: Path, offset: int, command: str) -> str:
    out = subprocess.run(["debugfs", "-R", command, f"{image}?offset={offset}"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return out.stdout


@pytest.mark.parametrize(
    ("boot_dir", "compress", "suffix"),
    [("boot/firmware", "--gzip", "rootfs.tgz"), ("boot", "--zstd", "rootfs.tar.zst"),
     ("boot/firmware", "--xz", "rootfs.tar.xz")],
)  # fmt: skip
def test_a_root_filesystem_tarball_becomes_a_bootable_looking_image(
    tmp_path: Path, boot_dir: str, compress: str, suffix: str
) -> None:
    needs_root()  # the test tree has owners and a device node
    needs_tool("tar", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs", "e2fsck", "fsck.vfat")
    tree = rootfs_tree(tmp_path / "tree", boot_dir)
    src = tmp_path / suffix
    subprocess.run(["tar", compress, "--numeric-owner", "-cf", str(src), "-C", str(tree), "."],
                   check=True)  # fmt: skip
    dest = tmp_path / "out.img"
    info = import_source(src, dest)
    assert (info.kind, info.source_sha256) == ("rootfs", sha256(src))
    if suffix == "rootfs.tgz":  # reading 420 MiB back takes a second: once is enough
        assert info.raw_sha256 == sha256(dest)

    image = inspect(dest)
    assert image.table is not None
    assert image.table.disk_id == "0x6c586e13"  # from root=PARTUUID=6c586e13-02
    boot, root = (p.partition for p in image.partitions)
    assert (boot.start_bytes, boot.size_bytes, boot.type) == (4 * MIB, 256 * MIB, "0x0c")
    assert [p.detail for p in image.partitions] == ["FAT32", "ext4"]
    assert sorted(image.boot_files) == sorted(FIRMWARE)  # the host's files stayed out
    listing = subprocess.run(["mdir", "-/", "-b", "-i", f"{dest}@@{boot.start_bytes}", "::/"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert {line.removeprefix("::/") for line in listing.split()} >= set(FIRMWARE)
    assert (image.os_family, image.customisation) == ("raspios", "firstrun")

    with dest.open("rb") as f:
        f.seek(root.start_bytes)
        (tmp_path / "root.ext4").write_bytes(f.read(root.size_bytes))
    subprocess.run(["e2fsck", "-fn", str(tmp_path / "root.ext4")], check=True, capture_output=True)
    etc = debugfs(dest, root.start_bytes, "ls -l /etc")
    assert "hostname" in etc
    assert "100640 (1)      0      0" in etc  # /etc/shadow: mode and owner kept
    assert debugfs(dest, root.start_bytes, "cat /etc/hostname") == "rootfs-pi\n"
    assert "1000   1000" in debugfs(dest, root.start_bytes, "ls -l /home/pi")
    assert "20666 (3)" in debugfs(dest, root.start_bytes, "ls -l /dev")  # the device node
    bins = debugfs(dest, root.start_bytes, "ls -l /usr/bin").split("\n")
    sudo = [line.split()[0] for line in bins if "sudo" in line]
    assert len(sudo) == 2
    assert sudo[0] == sudo[1]  # one inode: the hard link survived
    assert "104755" in " ".join(bins)
    assert "firmware" not in debugfs(dest, root.start_bytes, f"ls -l /{boot_dir}")  # empty
    assert leftovers(tmp_path) == []


def test_a_root_filesystem_under_fakeroot_keeps_its_owners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a non-root manager does: tar and mke2fs share one fakeroot state."""
    needs_root()  # the test tree has owners and a device node
    needs_tool("fakeroot", "tar", "sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs")
    tree = rootfs_tree(tmp_path / "tree", "boot/firmware")
    src = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "-cf", str(src), "-C", str(tree), "."], check=True)
    monkeypatch.setattr(sources.rootfs.os, "geteuid", lambda: 1000)
    import_source(src, tmp_path / "out.img")
    root = inspect(tmp_path / "out.img").partitions[1].partition
    assert "1000   1000" in debugfs(tmp_path / "out.img", root.start_bytes, "ls -l /home/pi")
    assert "20666 (3)" in debugfs(tmp_path / "out.img", root.start_bytes, "ls -l /dev")


def test_a_root_filesystem_whose_boot_files_clash_in_case_is_refused(tmp_path: Path) -> None:
    needs_tool("tar")
    members = {"etc/hostname": b"pi\n", "boot/config.txt": b"a", "boot/CONFIG.TXT": b"b"}
    src = tmp_path / "rootfs.tar"
    src.write_bytes(tar_of(members))
    with pytest.raises(ImageError, match="differ only in case"):
        import_source(src, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()
    assert leftovers(tmp_path) == []
