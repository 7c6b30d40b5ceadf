"""The installer's initramfs, made in memory: a newc cpio of busybox, the installer and drivers.

Pure: it reads the files it is given and returns bytes. Kernel modules are chosen by name with
everything they depend on, read from each module's ELF ``.modinfo`` section (``depends=``), and
listed in a ``modules.dep`` of kmod's format, which busybox ``modprobe`` reads. Every time in
the archive is zero and gzip's too, so equal inputs give equal bytes. A module that is not an
ELF file, or compressed in a way this module does not read, raises :class:`ValueError`.

Layout::

    /init                         SOURCES/init
    /bin/busybox, /bin/<applet>   busybox and a link per applet; /sbin, /usr/bin, /usr/sbin → bin
    /bin/openssl, /lib/<triplet>  openssl, its libraries and ELF interpreter (``programs``)
    /usr/lib/piman/installer.sh   SOURCES/installer.sh (and udhcpc.script beside it)
    /etc/piman/modules            the drivers /init loads, one name a line
    /lib/modules/<release>/       the modules and modules.dep
    /dev/console, /proc, /sys, /tmp, /mnt, /run
"""

from __future__ import annotations

import gzip
import io
import lzma
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Cpio",
    "KernelModule",
    "busybox_applets",
    "elf_interpreter",
    "installer_initramfs",
    "modinfo",
    "module_name",
    "modules_dep",
    "select_modules",
]

# Applets linked when busybox's own table cannot be read: what init and installer.sh run.
APPLETS = (
    "sh", "ash", "mount", "umount", "modprobe", "insmod", "wget", "dd", "sha256sum", "timeout",
    "blockdev", "tar", "udhcpc", "ip", "sync", "reboot", "poweroff", "losetup", "od", "stat",
    "sed", "tr", "head", "tail", "grep", "cat", "date", "sleep", "mkdir", "id", "uname",
    "setsid", "cttyhack", "echo", "printf", "ls", "dmesg", "rm", "truncate", "mkfifo", "kill",
)  # fmt: skip


def installer_initramfs(
    release: str,
    modules_dir: Path,
    busybox: bytes,
    drivers: Iterable[str],
    sources: Path,
    programs: Mapping[str, bytes | str] | None = None,
) -> tuple[bytes, list[str]]:
    """The gzip'd initramfs, and the drivers of ``drivers`` it loads (those this kernel has as
    modules; the others are built in or absent). ``programs``: more files (path → bytes,
    executable) and links (path → target)."""
    cpio = Cpio()
    for name in ("dev", "proc", "sys", "tmp", "mnt", "run", "root", "etc/piman", "usr/lib/piman"):
        cpio.directory(name)
    cpio.node("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.file("bin/busybox", busybox, 0o755)
    for applet in busybox_applets(busybox):
        cpio.symlink(f"bin/{applet}", "busybox")
    cpio.symlink("sbin", "bin")
    cpio.symlink("usr/bin", "../bin")
    cpio.symlink("usr/sbin", "../bin")
    cpio.file("init", (sources / "init").read_bytes(), 0o755)
    for name, content in sorted((programs or {}).items()):
        if isinstance(content, str):
            cpio.symlink(name, content)
        else:
            cpio.file(name, content, 0o755)
    for name in ("installer.sh", "udhcpc.script"):
        cpio.file(f"usr/lib/piman/{name}", (sources / name).read_bytes(), 0o755)
    modules, loaded = select_modules(modules_dir, drivers)
    base = f"lib/modules/{release}"
    for module in modules.values():
        cpio.file(f"{base}/{module.path}", module.data)
    cpio.file(f"{base}/modules.dep", modules_dep(modules).encode())
    listing = "# drivers /init loads with modprobe, in this order\n"
    cpio.file("etc/piman/modules", (listing + "".join(f"{n}\n" for n in loaded)).encode())
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0), loaded


class Cpio:
    """A newc cpio archive, the format the kernel unpacks as an initramfs; every time is 0.

    Parent directories are added before the first name inside them.
    """

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._names: set[str] = set()
        self._ino = 0

    def node(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        parent = name.rpartition("/")[0]
        if parent and parent not in self._names:
            self.directory(parent)
        self._names.add(name)
        self._ino += 1
        links = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._ino, mode, 0, 0, links, 0, len(data), 0, 0, *rdev, len(name) + 1, 0)
        entry = b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
        self._out.write(entry + b"\0" * (-len(entry) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        if name not in self._names:
            self.node(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.node(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self.node(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        """The archive, ended with its trailer."""
        self.node("TRAILER!!!", 0)
        return self._out.getvalue()


def busybox_applets(busybox: bytes) -> list[str]:
    """The applets compiled into a busybox binary (its sorted, NUL-separated name table, found
    without running it: the binary may be for another architecture), else :data:`APPLETS`."""
    start = busybox.find(b"[\0[[\0")
    if start >= 0:
        table = busybox[start : busybox.find(b"\0\0", start)].decode("ascii", "replace")
        names = [n for n in table.split("\0") if re.fullmatch(r"[a-z0-9_.-]+", n)]
        if set(APPLETS) <= set(names):
            return [n for n in names if n != "busybox"]
    return list(APPLETS)


@dataclass(frozen=True, slots=True)
class KernelModule:
    name: str  # ext4
    path: str  # under lib/modules/<release>: kernel/fs/ext4/ext4.ko
    data: bytes  # uncompressed
    depends: tuple[str, ...]


def module_name(filename: str) -> str:
    """A module's name from its file name, as modprobe reads it: ``sdhci-iproc.ko`` is
    ``sdhci_iproc``."""
    return filename.split(".ko", 1)[0].replace("-", "_")


def select_modules(
    modules_dir: Path, wanted: Iterable[str]
) -> tuple[dict[str, KernelModule], list[str]]:
    """The wanted modules this kernel has, with their dependencies (each after what it needs),
    and the wanted names that were found."""
    index = {module_name(p.name): p for p in (modules_dir / "kernel").rglob("*.ko*")}
    taken: dict[str, KernelModule] = {}

    def take(name: str) -> None:
        path = index.get(name)
        if name in taken or path is None:  # taken already, or built in
            return
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            data = lzma.decompress(data)
        elif not path.name.endswith(".ko"):
            raise ValueError(f"{path.name}: only .ko and .ko.xz modules are supported")
        depends = tuple(d for d in modinfo(data).get("depends", "").split(",") if d)
        relative = path.relative_to(modules_dir).as_posix().removesuffix(".xz")
        taken[name] = KernelModule(name, relative, data, depends)
        for dep in depends:
            take(module_name(dep))
        taken[name] = taken.pop(name)  # after its dependencies

    wanted = list(wanted)
    for name in wanted:
        take(name)
    return taken, [name for name in wanted if name in taken]


def modules_dep(modules: Mapping[str, KernelModule]) -> str:
    """kmod's modules.dep: each module, then everything it needs, the last one loaded first."""
    lines = []
    for module in modules.values():
        needs = " ".join(modules[d].path for d in reversed(_load_order(modules, module.name)))
        lines.append(f"{module.path}: {needs}".rstrip() + "\n")
    return "".join(lines)


def _load_order(
    modules: Mapping[str, KernelModule], name: str, order: list[str] | None = None
) -> list[str]:
    """Every module ``name`` needs, each after what it needs itself."""
    order = [] if order is None else order
    for dep in map(module_name, modules[name].depends):
        if dep in modules and dep not in order:
            _load_order(modules, dep, order)
            order.append(dep)
    return order


def elf_interpreter(elf: bytes) -> str:
    """The program interpreter (``PT_INTERP``) a dynamically linked ELF executable names:
    ``/lib/ld-linux-aarch64.so.1``. ValueError when it is not an ELF file or names none."""
    if elf[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    wide, order = elf[4] == 2, "<" if elf[5] == 1 else ">"
    if wide:  # e_phoff; e_phentsize, e_phnum
        (phoff,) = struct.unpack_from(order + "Q", elf, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", elf, 0x36)
        header = order + "I4xQ16xQ"  # p_type, (p_flags), p_offset, (p_vaddr, p_paddr), p_filesz
    else:
        (phoff,) = struct.unpack_from(order + "I", elf, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", elf, 0x2A)
        header = order + "II8xI"  # p_type, p_offset, (p_vaddr, p_paddr), p_filesz
    for i in range(phnum):
        kind, offset, size = struct.unpack_from(header, elf, phoff + i * phentsize)
        if kind == 3:  # PT_INTERP: a NUL-terminated path
            return elf[offset : offset + size].split(b"\0", 1)[0].decode()
    raise ValueError("no program interpreter: not a dynamically linked executable")


def modinfo(elf: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` section (ELF32/64, LE/BE)."""
    if elf[:4] != b"\x7fELF":
        raise ValueError("a kernel module is not an ELF file")
    wide, order = elf[4] == 2, "<" if elf[5] == 1 else ">"
    if wide:  # e_shoff, then e_shentsize, e_shnum, e_shstrndx
        shoff, shentsize, shnum, shstrndx = struct.unpack_from(order + "Q10xHHH", elf, 0x28)
        header = order + "II16xQQ"  # sh_name, sh_type, (sh_flags, sh_addr), sh_offset, sh_size
    else:
        shoff, shentsize, shnum, shstrndx = struct.unpack_from(order + "I10xHHH", elf, 0x20)
        header = order + "II8xII"

    def section(i: int) -> tuple[int, int, int]:
        name, _kind, offset, size = struct.unpack_from(header, elf, shoff + i * shentsize)
        return name, offset, size

    _name, names_at, _size = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        if elf[names_at + name : elf.index(b"\0", names_at + name)] == b".modinfo":
            strings = elf[offset : offset + size].split(b"\0")
            pairs = (s.split(b"=", 1) for s in strings if b"=" in s)
            return {k.decode(): v.decode(errors="replace") for k, v in pairs}
    return {}
