"""Building the netboot installer from Debian packages, under ``data_dir/installer/<arch>/``.

Theory of operation
-------------------
1. A private apt configuration under ``cache_dir/apt-<arch>/`` (its own sources.list, lists,
   caches and an empty dpkg status) names one mirror (given, else the host's own Debian mirror
   for ``suite``, else deb.debian.org), components ``main non-free-firmware``, and the target
   architecture only. The host's apt sources, lists and caches are never touched. The lists
   are fetched again when missing, older than a day, for another mirror or suite, or on
   ``force``; otherwise a build makes no network request at all.
2. ``apt-cache show`` resolves each package to a version, a pool file and its SHA-256. The
   kernel is the real package ``linux-image-<arch>`` depends on (``linux-image-6.1.0-50-arm64``).
3. When ``build.json`` records the same packages and the same installer sources and every file
   it lists is there with that hash, the build is kept as is: the fast path.
4. Otherwise each .deb missing from ``cache_dir/debs`` is fetched (``apt-get download``) and all
   are unpacked (``dpkg-deb -x``) into a scratch directory, removed afterwards. The initramfs
   (see ``initramfs``) takes the drivers of :data:`MODULES` that this kernel has as modules,
   with their dependencies; equal inputs give equal bytes. It also holds Debian's ``openssl``
   with the libraries it loads (libssl, libcrypto, libc) and its ELF interpreter: the
   installer hashes the ranges it reads back with it (the CPU's SHA instructions where it has
   some; several times busybox's ``sha256sum`` everywhere).
5. Each output is written beside its final name and renamed into place, files the previous
   ``build.json`` lists that are no longer made are removed, and ``build.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from piman.deploy.installer.initramfs import elf_interpreter, installer_initramfs
from piman.errors import PimanError

__all__ = [
    "SOURCES_DIR",
    "Arch",
    "InstallerBuild",
    "InstallerBuildError",
    "InstallerPaths",
    "build_installer",
    "host_mirror",
    "installer_paths",
]

Arch = Literal["arm64", "amd64"]

SOURCES_DIR = Path(__file__).resolve().parent  # installer.sh, init, udhcpc.script
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
COMPONENTS = "main non-free-firmware"
LISTS_MAX_AGE = 24 * 3600  # seconds before the package lists are fetched again
BUILD_FORMAT = 1  # of build.json and the initramfs layout

KERNEL_FILE: dict[Arch, str] = {"arm64": "kernel8.img", "amd64": "vmlinuz"}
PI_FIRMWARE = ("bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat")
# The DTB names the Pi firmware asks for → Debian's (upstream) names under broadcom/. Every
# other broadcom/bcm2711-*, bcm2712-*, bcm2837-* Pi DTB is copied under its own name as well.
PI_DTBS: dict[str, tuple[str, ...]] = {
    "bcm2711-rpi-4-b.dtb": ("bcm2711-rpi-4-b.dtb",),
    "bcm2711-rpi-400.dtb": ("bcm2711-rpi-400.dtb",),
    "bcm2711-rpi-cm4.dtb": ("bcm2711-rpi-cm4.dtb", "bcm2711-rpi-cm4-io.dtb"),
    "bcm2837-rpi-3-b.dtb": ("bcm2837-rpi-3-b.dtb",),
    "bcm2837-rpi-3-b-plus.dtb": ("bcm2837-rpi-3-b-plus.dtb",),
    # the Raspberry Pi kernel's names, which a Pi 3's firmware looks for by default
    "bcm2710-rpi-3-b.dtb": ("bcm2837-rpi-3-b.dtb",),
    "bcm2710-rpi-3-b-plus.dtb": ("bcm2837-rpi-3-b-plus.dtb",),
}
REQUIRED_DTBS = ("bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb")
PI_DTB_PATTERN = re.compile(r"bcm(2711|2712|2837)-rpi-.*\.dtb")

# The drivers the installer loads, by module name (file name, "-" read as "_"). A name this
# kernel builds in or lacks is left out; dependencies come along.
MODULES: dict[Arch, tuple[str, ...]] = {
    "arm64": (
        "virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net",  # QEMU's virt machine
        "fixed", "gpio_regulator",  # the SD card's supplies (regulator-fixed, -gpio)
        "bcm2835", "sdhci_iproc",  # Pi SD: sdhost (MMC_BCM2835), emmc2 (Pi 4)
        "broadcom", "mdio_bcm_unimac", "genet",  # Pi 4 Ethernet (BCMGENET), PHY driver first
        "phy_generic", "dwc2",  # Pi 3 USB (usb-nop-xceiv, DesignWare OTG)
        "microchip", "smsc95xx", "lan78xx",  # Pi 3 Ethernet, behind USB
        "af_packet", "loop", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859_1",
        "ext4",
    ),
    "amd64": (
        "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "e1000", "e1000e",
        "ahci", "sd_mod", "nvme", "usb_storage",
        "af_packet", "loop", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859_1",
        "ext4",
    ),
}  # fmt: skip


class InstallerBuildError(PimanError):
    """The installer could not be built: no network, a package or tool missing, a bad mirror."""


@dataclass(frozen=True, slots=True)
class InstallerPaths:
    """Where a built installer's files are (present once :func:`build_installer` ran)."""

    arch: Arch
    root: Path  # data_dir/installer/<arch>
    kernel: Path  # kernel8.img (arm64: an uncompressed Image) or vmlinuz (amd64)
    initrd: Path
    firmware: tuple[Path, ...]  # the Pi firmware (arm64); empty for amd64
    build_json: Path

    def dtbs(self) -> list[Path]:
        """The device trees of the build, under the names the Pi firmware asks for."""
        return sorted(self.root.glob("*.dtb"))


@dataclass(frozen=True, slots=True)
class InstallerBuild:
    """What :func:`build_installer` made, or found already made (``reused``)."""

    paths: InstallerPaths
    kernel_release: str  # 6.1.0-50-arm64
    packages: Mapping[str, str]  # Debian package → version
    files: Mapping[str, str]  # file name under paths.root → sha256
    modules: tuple[str, ...]  # what the initramfs loads (/etc/piman/modules)
    reused: bool


@dataclass(frozen=True, slots=True)
class _Package:
    name: str
    version: str
    filename: str  # in the pool
    sha256: str
    depends: str


def installer_paths(data_dir: Path, arch: Arch) -> InstallerPaths:
    """Where the installer of ``arch`` lives under ``data_dir``, for the boot tree."""
    root = data_dir / "installer" / arch
    return InstallerPaths(
        arch=arch,
        root=root,
        kernel=root / KERNEL_FILE[arch],
        initrd=root / "initrd.img",
        firmware=tuple(root / name for name in PI_FIRMWARE) if arch == "arm64" else (),
        build_json=root / "build.json",
    )


def host_mirror(suite: str, apt_etc: Path = Path("/etc/apt")) -> str | None:
    """The host's own Debian mirror for ``suite``: the first http(s) URI of a ``deb`` source
    that carries it, in sources.list, sources.list.d/*.list or deb822 *.sources files."""
    files = [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*.list"))]
    for path in files:
        for line in _read_lines(path):
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                if words[1].startswith(("http://", "https://")):
                    return words[1].rstrip("/")
    for path in sorted((apt_etc / "sources.list.d").glob("*.sources")):
        text = "\n".join(x for x in _read_lines(path) if not x.lstrip().startswith("#"))
        for stanza in re.split(r"\n\s*\n", text):
            fields = _deb822(stanza)
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
            ):
                for uri in fields.get("uris", "").split():
                    if uri.startswith(("http://", "https://")):
                        return uri.rstrip("/")
    return None


def build_installer(
    data_dir: Path,
    arch: Arch,
    *,
    mirror: str | None = None,
    suite: str = "bookworm",
    cache_dir: Path | None = None,
    force: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> InstallerBuild:
    """Build (or find up to date) the installer of ``arch`` under ``data_dir/installer/<arch>``.

    Raises :class:`InstallerBuildError` with one line when a tool, the mirror or a package is
    missing. ``force`` fetches the package lists again and rebuilds every file.
    """
    say = on_progress or (lambda _message: None)
    if arch not in get_args(Arch):
        raise InstallerBuildError(f"unknown architecture {arch!r}: use arm64 or amd64")
    paths = installer_paths(data_dir, arch)
    cache = cache_dir or data_dir / "installer" / "cache"
    apt = _Apt(cache / f"apt-{arch}", arch, (mirror or host_mirror(suite) or DEFAULT_MIRROR), suite)
    inputs = _inputs_digest(arch)
    apt.refresh(force, say)
    kernel = _kernel_package(apt, arch)
    names = [kernel, "busybox-static", "openssl"] + (["raspi-firmware"] if arch == "arm64" else [])
    packages = apt.show(*names)
    libssl = _openssl_library(packages["openssl"])
    packages |= apt.show(libssl, "libc6")
    recorded = {n: {"version": p.version, "sha256": p.sha256} for n, p in packages.items()}
    release = kernel.removeprefix("linux-image-")
    previous = _up_to_date(paths, recorded, inputs) if not force else None
    if previous is not None:
        say(f"installer {arch} is up to date (kernel {release})")
        return _result(paths, release, packages, *previous, reused=True)
    debs = {name: apt.fetch(package, cache / "debs", say) for name, package in packages.items()}
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unpack-", dir=cache) as scratch:
        trees: dict[str, Path] = {}
        for name, deb in debs.items():
            say(f"unpacking {deb.name}")
            trees[name] = Path(scratch) / name
            _run(["dpkg-deb", "-x", str(deb), str(trees[name])], f"unpacking {deb.name}")
        say("building initrd.img")
        programs = _openssl_files(trees["openssl"], trees[libssl], trees["libc6"])
        outputs, modules = _assemble(
            arch, release, trees[kernel], trees["busybox-static"], trees, programs
        )
        files = _install(paths, outputs, say)
    _write_build_json(paths, arch, apt, release, recorded, inputs, files, modules)
    say(f"installer {arch} built in {paths.root}")
    return _result(paths, release, packages, files, modules, reused=False)


# --- apt, privately -------------------------------------------------------------------


class _Apt:
    """apt-get and apt-cache with their own sources, lists and caches under ``root``."""

    def __init__(self, root: Path, arch: Arch, mirror: str, suite: str) -> None:
        self.root, self.arch, self.mirror, self.suite = root, arch, mirror.rstrip("/"), suite
        self.sources = f"deb [arch={arch} signed-by={KEYRING}] {self.mirror} {suite} {COMPONENTS}\n"

    def options(self) -> list[str]:
        r = self.root
        settings = {
            "Dir::Etc::SourceList": r / "sources.list",
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State": r / "state",
            "Dir::State::Lists": r / "lists",
            "Dir::State::status": r / "state" / "status",
            "Dir::Cache": r / "cache",
            "APT::Architecture": self.arch,
            "APT::Architectures::": self.arch,
            "Acquire::Languages": "none",
            "Acquire::Retries": "2",
            "Acquire::http::Timeout": "30",
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def refresh(self, force: bool, say: Callable[[str], None]) -> None:
        """``apt-get update`` when the lists are missing, stale, for other sources, or forced."""
        if not KEYRING.exists():
            raise InstallerBuildError(f"no {KEYRING}: install Debian's debian-archive-keyring")
        stamp = self.root / "lists" / "piman-sources"
        fresh = (
            stamp.exists()
            and stamp.read_text() == self.sources
            and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE
        )
        if fresh and not force:
            return
        for sub in ("lists/partial", "cache/archives/partial", "state"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state" / "status").touch()
        (self.root / "sources.list").write_text(self.sources)
        stamp.unlink(missing_ok=True)
        say(f"fetching the package lists of {self.suite} ({self.arch}) from {self.mirror}")
        _run(
            ["apt-get", "-q", *self.options(), "update", "--error-on=any"],
            f"apt-get update from {self.mirror}",
        )
        stamp.write_text(self.sources)

    def show(self, *names: str) -> dict[str, _Package]:
        """The candidate version of each of ``names`` in the private lists."""
        args = ["apt-cache", *self.options(), "show", "--no-all-versions", *names]
        found: dict[str, _Package] = {}
        for stanza in _run(args, "", check=False).split("\n\n"):
            f = _deb822(stanza)
            name, version, pool = f.get("package", ""), f.get("version"), f.get("filename")
            if name in names and version and pool and name not in found:
                found[name] = _Package(
                    name, version, pool, f.get("sha256", ""), f.get("depends", "")
                )
        for name in names:
            if name not in found:
                raise InstallerBuildError(
                    f"package {name} not found in {self.suite} ({COMPONENTS}, {self.arch}) "
                    f"on {self.mirror}"
                )
        return found

    def fetch(self, package: _Package, debs: Path, say: Callable[[str], None]) -> Path:
        """The package's .deb in ``debs``, downloaded only when no file with its hash is there."""
        target = debs / Path(package.filename).name
        if target.exists() and _sha256_file(target) == package.sha256:
            return target
        debs.mkdir(parents=True, exist_ok=True)
        say(f"downloading {package.name} {package.version}")
        with tempfile.TemporaryDirectory(prefix="download-", dir=debs) as scratch:
            _run(
                ["apt-get", "-q", *self.options(), "download", f"{package.name}={package.version}"],
                f"downloading {package.name} from {self.mirror}",
                cwd=Path(scratch),
            )
            got = sorted(Path(scratch).glob("*.deb"))
            if len(got) != 1 or _sha256_file(got[0]) != package.sha256:
                raise InstallerBuildError(f"{package.name}: the download does not match its hash")
            os.replace(got[0], target)
        return target


def _kernel_package(apt: _Apt, arch: Arch) -> str:
    """The versioned kernel package the ``linux-image-<arch>`` metapackage depends on."""
    meta = apt.show(f"linux-image-{arch}")[f"linux-image-{arch}"]
    found = re.search(r"linux-image-\d[^\s,(|]*", meta.depends)
    if found is None:
        raise InstallerBuildError(f"linux-image-{arch} {meta.version} names no kernel package")
    return found.group(0)


# --- assembling the files ---------------------------------------------------------------


def _assemble(
    arch: Arch,
    release: str,
    kernel: Path,
    busybox: Path,
    trees: Mapping[str, Path],
    programs: Mapping[str, bytes | str],
) -> tuple[dict[str, Path | bytes], list[str]]:
    """Every output file of the build (name → a file to copy, or the bytes to write), and the
    drivers the initramfs loads."""
    out: dict[str, Path | bytes] = {
        KERNEL_FILE[arch]: _first(kernel, f"boot/vmlinuz-{release}"),
    }
    modules_dir = _first(kernel, f"lib/modules/{release}", f"usr/lib/modules/{release}")
    busybox_bin = _first(busybox, "bin/busybox", "usr/bin/busybox")
    try:
        out["initrd.img"], loaded = installer_initramfs(
            release, modules_dir, busybox_bin.read_bytes(), MODULES[arch], SOURCES_DIR, programs
        )
    except ValueError as err:
        raise InstallerBuildError(f"building initrd.img: {err}") from err
    if arch == "arm64":
        firmware = _first(trees["raspi-firmware"], "usr/lib/raspi-firmware", "boot/firmware")
        for name in PI_FIRMWARE:
            out[name] = _first(firmware, name)
        broadcom = _first(kernel, f"usr/lib/linux-image-{release}/broadcom")
        for dtb in sorted(broadcom.iterdir()):
            if PI_DTB_PATTERN.fullmatch(dtb.name):
                out[dtb.name] = dtb
        for name, candidates in PI_DTBS.items():
            found = [broadcom / c for c in candidates if (broadcom / c).exists()]
            if found:
                out[name] = found[0]
        missing = [name for name in REQUIRED_DTBS if name not in out]
        if missing:
            raise InstallerBuildError(f"kernel {release} lacks {', '.join(missing)}")
    return out, loaded


def _openssl_library(openssl: _Package) -> str:
    """The libssl package ``openssl`` depends on (``libssl3``; ``libssl3t64`` since trixie)."""
    for alternative in re.split(r"[,|]", openssl.depends):
        name = alternative.split("(")[0].split(":")[0].strip()
        if name.startswith("libssl"):
            return name
    raise InstallerBuildError(f"openssl {openssl.version} depends on no libssl package")


def _openssl_files(openssl: Path, libssl: Path, libc: Path) -> dict[str, bytes | str]:
    """``bin/openssl``, the libraries it loads in ``lib/<triplet>/`` (a directory its ELF
    interpreter searches without an ld.so.cache), and the interpreter where the binary names
    it (a link when that is elsewhere): initramfs path → bytes, or → a link's target."""
    binary = _first(openssl, "usr/bin/openssl").read_bytes()
    try:
        interpreter = elf_interpreter(binary).lstrip("/")
    except ValueError as err:
        raise InstallerBuildError(f"openssl: {err}") from err
    libc_so = _regular(libc, "libc.so.6")
    lib = f"lib/{libc_so.parent.name}"  # lib/aarch64-linux-gnu
    loader = _regular(libc, Path(interpreter).name)
    files: dict[str, bytes | str] = {"bin/openssl": binary}
    libraries = (_regular(libssl, "libssl.so.3"), _regular(libssl, "libcrypto.so.3"))
    for found in (libc_so, loader, *libraries):
        files[f"{lib}/{found.name}"] = found.read_bytes()
    if interpreter != f"{lib}/{loader.name}":
        files[interpreter] = f"/{lib}/{loader.name}"
    return files


def _regular(root: Path, name: str) -> Path:
    """The regular file called ``name`` in an unpacked package (not one of its links)."""
    for path in sorted(root.rglob(name)):
        if path.is_file() and not path.is_symlink():
            return path
    raise InstallerBuildError(f"{name} is missing from the unpacked package {root.name}")


# --- writing the build ------------------------------------------------------------------


def _install(
    paths: InstallerPaths, outputs: Mapping[str, Path | bytes], say: Callable[[str], None]
) -> dict[str, str]:
    """Write the outputs into place (each renamed over the old one); remove the files of the
    previous build that this one does not make (nothing else: the directory may hold more)."""
    try:
        before = json.loads(paths.build_json.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        before = {}
    paths.root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, source in sorted(outputs.items()):
        partial = paths.root / f".{name}.partial"
        if isinstance(source, bytes):
            partial.write_bytes(source)
        else:
            shutil.copyfile(source, partial)
        os.replace(partial, paths.root / name)
        files[name] = _sha256_file(paths.root / name)
    for name in before:
        old = paths.root / str(name)
        if str(name) not in files and old.parent == paths.root and old.is_file():
            say(f"removing {old.name} (no longer built)")
            old.unlink()
    return files


def _write_build_json(
    paths: InstallerPaths,
    arch: Arch,
    apt: _Apt,
    release: str,
    packages: Mapping[str, Mapping[str, str]],
    inputs: str,
    files: Mapping[str, str],
    modules: list[str],
) -> None:
    record = {
        "format": BUILD_FORMAT,
        "arch": arch,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mirror": apt.mirror,
        "suite": apt.suite,
        "kernel_release": release,
        "inputs": inputs,
        "packages": packages,
        "modules": modules,
        "files": dict(sorted(files.items())),
    }
    partial = paths.root / ".build.json.partial"
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, paths.build_json)


def _up_to_date(
    paths: InstallerPaths, packages: Mapping[str, Mapping[str, str]], inputs: str
) -> tuple[dict[str, str], list[str]] | None:
    """The files and drivers of the previous build, when it was made of the same inputs and
    every file is intact."""
    try:
        record = json.loads(paths.build_json.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != BUILD_FORMAT:
        return None
    if record.get("inputs") != inputs or record.get("packages") != packages:
        return None
    files, modules = record.get("files"), record.get("modules")
    if not isinstance(files, dict) or not files or not isinstance(modules, list):
        return None
    for name, digest in files.items():
        path = paths.root / str(name)
        if not path.is_file() or _sha256_file(path) != digest:
            return None
    return {str(k): str(v) for k, v in files.items()}, [str(m) for m in modules]


def _result(
    paths: InstallerPaths,
    release: str,
    packages: Mapping[str, _Package],
    files: Mapping[str, str],
    modules: list[str],
    *,
    reused: bool,
) -> InstallerBuild:
    return InstallerBuild(
        paths=paths,
        kernel_release=release,
        packages={name: p.version for name, p in packages.items()},
        files=dict(files),
        modules=tuple(modules),
        reused=reused,
    )


def _inputs_digest(arch: Arch) -> str:
    """What else a build depends on: this module, the installer's sources, the driver list."""
    digest = hashlib.sha256(f"{BUILD_FORMAT} {arch} {MODULES[arch]}".encode())
    for name in ("build.py", "initramfs.py", "init", "installer.sh", "udhcpc.script"):
        try:
            digest.update((SOURCES_DIR / name).read_bytes())
        except OSError as err:
            raise InstallerBuildError(
                f"{SOURCES_DIR / name} is missing from this piman installation: reinstall it"
            ) from err
    return digest.hexdigest()


# --- small helpers ----------------------------------------------------------------------


def _run(args: list[str], what: str, cwd: Path | None = None, check: bool = True) -> str:
    """Run a tool, return its output; its failure (when ``check``) becomes an
    InstallerBuildError naming ``what`` and the tool's reason."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, check=False)
    except FileNotFoundError:
        raise InstallerBuildError(
            f"{args[0]} not found: building the installer needs Debian's apt and dpkg"
        ) from None
    if check and done.returncode != 0:
        lines = [x.strip() for x in (done.stderr or done.stdout).splitlines() if x.strip()]
        errors = [x.removeprefix("E: ") for x in lines if x.startswith("E: ")]
        reason = " ".join((errors or lines or [f"exit status {done.returncode}"])[0].split())
        raise InstallerBuildError(f"{what}: {reason}" if what else reason)
    return done.stdout


def _first(root: Path, *candidates: str) -> Path:
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    raise InstallerBuildError(f"{candidates[0]} is missing from the unpacked package")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _deb822(stanza: str) -> dict[str, str]:
    """The fields of one deb822 stanza (lower-case names; continuation lines joined)."""
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []
