"""The installer initramfs's pure parts: the ELF interpreter of a program it carries."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest

from piman.deploy.installer import SOURCES_DIR
from piman.deploy.installer.initramfs import elf_interpreter, installer_initramfs


def elf(wide: bool, order: str, interpreter: bytes | None) -> bytes:
    """A minimal ELF executable: a header, then program headers (a PT_LOAD, and a PT_INTERP
    when ``interpreter`` is given), then the interpreter's path."""
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    kinds = [1] + ([3] if interpreter is not None else [])
    path_at = ehsize + phentsize * len(kinds)
    path = (interpreter or b"") + b"\0"
    if wide:
        head = struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, ehsize, 0, 0, ehsize,
                           phentsize, len(kinds), 64, 0, 0)  # fmt: skip
        phdrs = b"".join(
            struct.pack(order + "IIQQQQQQ", k, 4, path_at, 0, 0, len(path), len(path), 1)
            for k in kinds
        )
    else:
        head = struct.pack(order + "HHIIIIIHHHHHH", 2, 40, 1, 0, ehsize, 0, 0, ehsize,
                           phentsize, len(kinds), 40, 0, 0)  # fmt: skip
        phdrs = b"".join(
            struct.pack(order + "IIIIIIII", k, path_at, 0, 0, len(path), len(path), 4, 1)
            for k in kinds
        )
    return ident + head + phdrs + path


@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("order", ["<", ">"])
def test_the_interpreter_of_32_and_64_bit_elf_of_either_byte_order(wide: bool, order: str) -> None:
    made = elf(wide, order, b"/lib/ld-linux-aarch64.so.1")
    assert elf_interpreter(made) == "/lib/ld-linux-aarch64.so.1"


def test_a_host_program_names_its_interpreter() -> None:
    found = shutil.which("openssl") or shutil.which("python3")
    assert found is not None
    interpreter = elf_interpreter(Path(found).resolve().read_bytes())
    assert interpreter.startswith("/")
    assert Path(interpreter).exists(), interpreter


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"#!/bin/sh\n", "not an ELF file"),
        (elf(True, "<", None), "no program interpreter"),  # a static program (busybox-static)
    ],
)
def test_no_interpreter_is_one_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        elf_interpreter(data)


def test_programs_and_their_links_go_into_the_archive(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()
    programs: dict[str, bytes | str] = {
        "bin/openssl": b"\x7fELF-openssl",
        "lib/x86_64-linux-gnu/libc.so.6": b"libc",
        "lib64/ld-linux-x86-64.so.2": "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    }
    archive, loaded = installer_initramfs("6.1.0", tmp_path, b"busybox", [], SOURCES_DIR, programs)
    assert loaded == []
    cpio = gzip.decompress(archive)
    names = set()
    at = 0
    while True:  # newc: a 110-byte header, the name, then the data, each padded to 4
        header = cpio[at : at + 110]
        mode, size, name_size = (int(header[f : f + 8], 16) for f in (14, 54, 94))
        name = cpio[at + 110 : at + 110 + name_size - 1].decode()
        data_at = at + 110 + name_size + (-(110 + name_size) % 4)
        data = cpio[data_at : data_at + size]
        if name == "TRAILER!!!":
            break
        names.add(name)
        if name in programs:
            want = programs[name]
            if isinstance(want, str):
                assert mode & 0o170000 == 0o120000, name
                assert data == want.encode(), name
            else:
                assert mode & 0o170000 == 0o100000, name
                assert mode & 0o111, name
                assert data == want, name
        at = data_at + size + (-size % 4)
    assert set(programs) <= names
    assert {"lib", "lib64", "lib/x86_64-linux-gnu"} <= names  # parents made before their files
