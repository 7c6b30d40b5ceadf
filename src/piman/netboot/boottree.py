"""Per-node virtual TFTP tree: which files a netbooting Pi gets (DESIGN.md §3, PROTOCOLS.md §2).

:class:`BootTree` is the TFTP server's application hook. A request is answered from one of three
trees, all under ``manager.data_dir``:

- ``nodes/<name>/boot/``: the node's own boot files (normal boot; after a deployment, the
  environment's boot partition);
- ``installer/<arch>/`` (or ``installer/``): the netboot installer, while the deploy engine
  says so (``deploy.boot_choice(node)`` is ``installer``; tests pass ``installer=``);
- the default tree ``tftp.root`` (default ``boot/``) for unknown clients, and for known nodes
  whose own tree does not exist yet.

Who asks is learnt from the path prefix (``<serial>/…`` with 8 lower-case hex digits, Pi 4
``TFTP_PREFIX=0``; ``<mac-with-dashes>/…``, ``TFTP_PREFIX=2``), else from the client's IP (the
address the store has for the node), else from the neighbour table (``/proc/net/arp``: in proxy
DHCP mode the manager never handed out the address). Every identified request is a sighting
(:mod:`piman.inventory.sightings`, the throttle DHCP uses too): a serial learnt from the prefix
is recorded on the node, and ``last_seen`` moves.

Pi 4 prefix rule: the firmware probes ``<serial>/start4.elf``; when neither ``start4.elf`` nor
``start.elf`` exists under the prefix it drops the prefix. So a prefixed request is answered
"not found" unless the tree it maps to has one of them, or (Pi 5, which has no start4.elf) a
``config.txt`` and a ``.dtb``.

``config.txt``, ``cmdline.txt`` and ``boot.ipxe`` for a known node are generated from templates
(``string.Template``; package data in ``piman/netboot/templates/``, overridden by files of the
same name in ``<data_dir>/templates/``): always for the installer tree (``installer-*``, with the
deployment's one-time token on the kernel command line), and for the node's own tree when it has
no such file. While a freshly deployed node boots for the first time, its ``cmdline.txt`` is the
deploy engine's (with the first-boot words), and the first file it fetches from its own tree
tells the engine it booted.

:func:`check_boot_trees` warns about files the Pi firmware cannot fetch over TFTP (more than
65535 blocks at the node's block size); the manager calls it at start, ``piman config check``
can too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from string import Template

from piman.config.models import Config
from piman.config.types import parse_host_port
from piman.context import DeployHandle, InventoryHandle
from piman.fleet.models import installer_arch
from piman.fleet.ports import NodeRepository
from piman.fleet.records import NodeRecord
from piman.netboot.tftp.files import ByteSource, BytesSource, FileCache, resolve_inside

__all__ = [
    "CACHE_SECONDS",
    "BootTree",
    "check_boot_trees",
    "max_tftp_size",
    "read_neighbours",
    "split_prefix",
]

logger = logging.getLogger(__name__)

CACHE_SECONDS = 2.0  # how long a (prefix, IP) → node answer is reused
_SERIAL_RE = re.compile(r"^[0-9a-f]{8}$")
_MAC_DASH_RE = re.compile(r"^[0-9a-f]{2}(-[0-9a-f]{2}){5}$")
_GENERATED = ("config.txt", "cmdline.txt", "boot.ipxe")
_PI_FAMILIES = ("pi", "cm")  # model names of Pis (pi4, pi3b+, cm4 …): the arm64 installer
_START_FILES = ("start4.elf", "start.elf")
# Block size each Pi family asks for (PROTOCOLS.md §2): Pi 3 ROM none (512), Pi 4 1024
# (1468 since late 2022, but older firmware is common), Pi 5 1468.
_FAMILY_BLKSIZE = {3: 512, 4: 1024, 5: 1468}
_DEFAULT_BLKSIZE = 1024
MAX_BLOCKS = 65535


def split_prefix(path: str) -> tuple[str | None, str | None, str]:
    """``(kind, value, rest)``: kind ``serial`` or ``mac`` (value ``dc:a6:…``) or None."""
    path = path.lstrip("/")
    first, sep, rest = path.partition("/")
    key = first.lower()
    if sep and _SERIAL_RE.match(key):
        return "serial", key, rest
    if sep and _MAC_DASH_RE.match(key):
        return "mac", key.replace("-", ":"), rest
    return None, None, path


def read_neighbours(path: Path = Path("/proc/net/arp")) -> dict[str, str]:
    """IP → MAC from the kernel's neighbour table (complete entries only)."""
    table: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return table
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and int(fields[2], 16) & 0x2 and fields[3] != "00:00:00:00:00:00":
            table[fields[0]] = fields[3].lower()
    return table


class BootTree:
    """The TFTP application hook: ``await tree(path, (ip, port))`` → a byte source or None."""

    def __init__(
        self,
        config: Config,
        nodes: NodeRepository | None = None,
        *,
        sightings: InventoryHandle | None = None,
        deploy: DeployHandle | None = None,
        installer: Callable[[NodeRecord], bool] | None = None,
        neighbours: Callable[[], dict[str, str]] = read_neighbours,
        cache: FileCache | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.nodes = nodes
        self.sightings = sightings
        self.deploy = deploy
        self.installer = installer
        self.neighbours = neighbours
        self.cache = cache or FileCache()
        self.clock = clock
        data_dir = config.manager.data_dir
        self.default_root = config.tftp_root.resolve()
        self.installer_root = (data_dir / "installer").resolve()
        self.nodes_root = (data_dir / "nodes").resolve()
        self.template_dir = data_dir / "templates"
        self._known: dict[tuple[str | None, str | None, str], tuple[float, NodeRecord | None]] = {}

    async def __call__(self, name: str, client: tuple[str, int]) -> ByteSource | None:
        kind, value, rest = split_prefix(name)
        node = await self.identify(kind, value, client[0])
        tree = self.tree_for(node)
        if kind is not None and not self._bootable(tree, node):
            logger.debug(
                "tftp[peer=%s node=%s]: no start4.elf/start.elf under prefix %s: not found",
                client[0], node.name if node else "-", value,
            )  # fmt: skip
            return None
        if node is not None and self.deploy is not None and self.choice(node) == "local":
            self.deploy.local_boot_seen(node.name, rest)
        if node is not None and rest in _GENERATED:
            text = self.render(rest, node, tree)
            if text is not None:
                return BytesSource(text.encode())
        return await self.cache.open(resolve_inside(tree, rest))

    # -- identity -----------------------------------------------------------------------------

    async def identify(self, kind: str | None, value: str | None, ip: str) -> NodeRecord | None:
        """The node asking, by prefix, then IP, then the neighbour table; None when unknown."""
        if self.nodes is None:
            return None
        now = self.clock()
        key = (kind, value, ip)
        cached = self._known.get(key)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        node = await self._lookup(kind, value, ip)
        if len(self._known) > 4096:
            self._known.clear()
        self._known[key] = (now, node)
        return node

    async def _lookup(self, kind: str | None, value: str | None, ip: str) -> NodeRecord | None:
        assert self.nodes is not None
        nodes = self.nodes
        node: NodeRecord | None = None
        if kind == "serial":
            node = await nodes.find(serial=value)
        elif kind == "mac":
            node = await nodes.find(mac=value)
        mac = None
        if node is None:
            node = await nodes.find(ip=ip)
        if node is None:
            mac = (await asyncio.to_thread(self.neighbours)).get(ip)
            if mac is not None:
                node = await nodes.find(mac=mac)
        serial = value if kind == "serial" else None
        sighting_mac = node.mac if node is not None else mac
        if sighting_mac is None or self.sightings is None:
            return node
        if node is None and serial is None:
            return None  # an unknown non-Pi client: DHCP records those, not TFTP
        learns_serial = serial is not None and (node is None or node.serial != serial)
        noted = self.sightings.note(
            sighting_mac,
            ip=ip if node is None or node.ip is None else None,
            serial=serial if learns_serial else None,
        )
        if noted:
            logger.info(
                "tftp[peer=%s mac=%s]: seen%s", ip, sighting_mac,
                f", serial {serial}" if learns_serial else "",
            )  # fmt: skip
        return node

    # -- trees --------------------------------------------------------------------------------

    def choice(self, node: NodeRecord) -> str | None:
        """``installer``, ``local`` or None (no deployment: the node's usual tree)."""
        if self.installer is not None:
            return "installer" if self.installer(node) else None
        return self.deploy.boot_choice(node.name) if self.deploy is not None else None

    def installer_tree(self, node: NodeRecord) -> Path:
        per_arch = self.installer_root / installer_arch(node.model)
        return per_arch if per_arch.is_dir() else self.installer_root

    def tree_for(self, node: NodeRecord | None) -> Path:
        """The directory this node boots from now."""
        if node is None:
            return self.default_root
        if self.choice(node) == "installer":
            return self.installer_tree(node)
        own = self.nodes_root / node.name / "boot"
        return own.resolve() if own.is_dir() else self.default_root

    def _bootable(self, tree: Path, node: NodeRecord | None) -> bool:
        if any((tree / name).is_file() for name in _START_FILES):
            return True
        has_config = node is not None or (tree / "config.txt").is_file()
        return has_config and any(tree.glob("*.dtb"))

    def render(self, name: str, node: NodeRecord, tree: Path) -> str | None:
        """A generated boot file, or None to serve the tree's own file."""
        installing = self.choice(node) == "installer"
        if not installing:
            if name == "cmdline.txt" and self.deploy is not None:
                first = self.deploy.boot_cmdline(node.name)
                if first is not None:
                    return first
            if (tree / name).is_file() or name == "boot.ipxe":
                return None
        args = self.deploy.installer_args(node.name) if installing and self.deploy else None
        template = self._template(f"installer-{name}" if installing else name)
        host, port = parse_host_port(self.config.manager.http)
        if host in ("0.0.0.0", "::", ""):
            host = str(self.config.manager.address)
        model = node.model or "pi"
        kernel = "kernel8.img" if not model.startswith("pi5") else "kernel_2712.img"
        if installing:  # the installer's own kernel: Debian's arm64 Image boots every Pi
            kernel = "vmlinuz" if installer_arch(node.model) == "amd64" else "kernel8.img"
        return template.safe_substitute(
            node=node.name,
            serial=node.serial or "unknown",
            mac=node.mac or "",
            ip=node.ip or "",
            model=model,
            hostname=node.hostname or node.name,
            manager=str(self.config.manager.address),
            http_url=f"http://{host}:{port}/boot/v1",
            kernel=kernel,
            initramfs="initrd.img",
            piman_args=" ".join(f"{k}={v}" for k, v in (args or {}).items()),
        )

    def _template(self, name: str) -> Template:
        override = self.template_dir / name
        if override.is_file():
            return Template(override.read_text())
        return Template(resources.files("piman.netboot").joinpath("templates", name).read_text())


def max_tftp_size(blksize: int) -> int:
    """The largest file the Pi firmware fetches at this block size (65535 blocks)."""
    return MAX_BLOCKS * blksize - 1


def _node_blksize(model: str | None, cap: int) -> int:
    from piman.fleet.models import PiModel

    try:
        family = PiModel(model).family if model else 0
    except ValueError:
        family = 0
    return min(_FAMILY_BLKSIZE.get(family, _DEFAULT_BLKSIZE), cap)


def check_boot_trees(config: Config) -> list[str]:
    """Warnings about boot files too large for the Pi firmware's TFTP; each is also logged."""
    cap = (config.tftp.mtu if config.tftp else 1500) - 32
    models = [n.model for n in config.nodes]
    shared = min((_node_blksize(m, cap) for m in models), default=min(_DEFAULT_BLKSIZE, cap))
    data_dir = config.manager.data_dir
    trees: list[tuple[Path, int, str]] = [
        (config.tftp_root, shared, "default tree"),
        # the installers the boot tree serves (not installer/cache: the builder's downloads)
        (data_dir / "installer" / "arm64", shared, "installer tree"),
        (data_dir / "installer" / "amd64", min(_DEFAULT_BLKSIZE, cap), "amd64 installer tree"),
    ]
    for node in config.nodes:
        trees.append(
            (data_dir / "nodes" / node.name / "boot", _node_blksize(node.model, cap),
             f"node {node.name}")
        )  # fmt: skip
    warnings: list[str] = []
    for root, blksize, what in trees:
        if not root.is_dir():
            continue
        limit = max_tftp_size(blksize)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            size = path.stat().st_size
            if size > limit:
                warning = (
                    f"{path} ({what}) is {size} bytes: over TFTP at blksize {blksize} the Pi "
                    f"firmware fetches at most {limit} bytes (65535 blocks); keep boot files "
                    "small and move large data over HTTP"
                )
                logger.warning("tftp: %s", warning)
                warnings.append(warning)
    return warnings
