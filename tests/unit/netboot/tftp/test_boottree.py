"""The per-node virtual TFTP tree, against a real SQLite store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from piman.config import Config, parse_config
from piman.inventory.sightings import Sightings
from piman.netboot.boottree import BootTree, check_boot_trees, read_neighbours, split_prefix
from piman.netboot.tftp.files import AccessViolation, ByteSource
from piman.store import Store, reconcile

CONFIG = """\
manager: {{address: 198.18.0.1, network: 198.18.0.0/24, data_dir: {data_dir}, http: "0.0.0.0:8080"}}
tftp: {{enabled: true}}
nodes:
  - {{name: a, mac: "dc:a6:32:00:00:01", ip: 198.18.0.11, model: pi4}}
  - {{name: b, mac: "dc:a6:32:00:00:02", ip: 198.18.0.12, serial: 1234abcd, model: pi4}}
  - {{name: c, mac: "b8:27:eb:00:00:03", ip: 198.18.0.13, model: pi3b+}}
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    data = tmp_path / "data"
    for tree, marker in [("boot", "default"), ("nodes/a/boot", "a"), ("nodes/b/boot", "b"),
                         ("installer", "installer")]:  # fmt: skip
        (data / tree).mkdir(parents=True)
        (data / tree / "start4.elf").write_text(f"start4 {marker}")
        (data / tree / "kernel8.img").write_text(f"kernel {marker}")
    (data / "nodes" / "b" / "boot" / "cmdline.txt").write_text("root=PARTUUID=b-own")
    (data / "nodes" / "c" / "boot").mkdir(parents=True)
    (data / "nodes" / "c" / "boot" / "bootcode.bin").write_text("pi3")
    return parse_config(CONFIG.format(data_dir=data), "piman.yaml")


@pytest.fixture
async def store(config: Config, tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'piman.db'}")
    await s.open()
    await reconcile(s, config)
    try:
        yield s
    finally:
        await s.close()


def boot_tree(config: Config, store: Store, **kw: Any) -> tuple[BootTree, Sightings]:
    """The tree as the manager builds it: store lookups, and sightings written in the background."""
    sightings = Sightings(store.nodes)
    return BootTree(config, store.nodes, sightings=sightings, **kw), sightings


async def text(source: ByteSource | None) -> str | None:
    return None if source is None else source.read(0, source.size).decode()


CLIENT_A = ("198.18.0.11", 1024)
STRANGER = ("198.18.0.99", 1024)


def test_split_prefix() -> None:
    assert split_prefix("1234abcd/start4.elf") == ("serial", "1234abcd", "start4.elf")
    assert split_prefix("/DC-A6-32-00-00-01/overlays/x.dtbo") == (
        "mac", "dc:a6:32:00:00:01", "overlays/x.dtbo")  # fmt: skip
    assert split_prefix("start4.elf") == (None, None, "start4.elf")
    assert split_prefix("1234abcd") == (None, None, "1234abcd")


async def test_unknown_clients_get_the_default_tree(config: Config, store: Store) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    assert await text(await tree("start4.elf", STRANGER)) == "start4 default"
    assert await text(await tree("/kernel8.img", STRANGER)) == "kernel default"


async def test_known_node_by_ip_gets_its_own_tree(config: Config, store: Store) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    assert await text(await tree("start4.elf", CLIENT_A)) == "start4 a"


async def test_serial_and_mac_prefixes_select_the_node(config: Config, store: Store) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    assert await text(await tree("1234abcd/kernel8.img", STRANGER)) == "kernel b"
    assert await text(await tree("dc-a6-32-00-00-01/kernel8.img", STRANGER)) == "kernel a"


async def test_serial_prefix_teaches_the_store_the_serial(config: Config, store: Store) -> None:
    tree, sightings = boot_tree(config, store, neighbours=dict)
    await sightings.load()  # the manager does it before any service starts
    assert await text(await tree("0badcafe/start4.elf", CLIENT_A)) == "start4 a"
    await sightings.drain()
    node = await store.nodes.get("a")
    assert node.serial == "0badcafe"
    assert node.last_seen is not None


async def test_prefix_without_start_files_is_not_found_so_the_pi_drops_it(
    config: Config, store: Store
) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    pi3 = ("198.18.0.13", 1024)
    assert await tree("000000c3/bootcode.bin", pi3) is None
    assert await text(await tree("bootcode.bin", pi3)) == "pi3"


class Deploying:
    """What the deploy engine tells the boot tree (DeployHandle's boot-tree half)."""

    def __init__(self, choices: dict[str, str], firstboot: str | None = None) -> None:
        self.choices = choices
        self.firstboot = firstboot
        self.seen: list[tuple[str, str]] = []

    def boot_choice(self, node: str) -> str | None:
        return self.choices.get(node)

    def installer_args(self, node: str) -> dict[str, str] | None:
        if self.choices.get(node) != "installer":
            return None
        return {"piman.url": "http://198.18.0.1:8080", "piman.token": "t0k3n", "piman.node": node}

    def boot_cmdline(self, node: str) -> str | None:
        return self.firstboot if self.choices.get(node) == "local" else None

    def local_boot_seen(self, node: str, name: str) -> None:
        self.seen.append((node, name))


async def test_installer_flag_switches_the_tree_and_generates_boot_config(
    config: Config, store: Store
) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict, installer=lambda n: n.name == "a")
    assert await text(await tree("1234abcd/start4.elf", STRANGER)) == "start4 b"
    assert await text(await tree("start4.elf", CLIENT_A)) == "start4 installer"
    cmdline = await text(await tree("cmdline.txt", CLIENT_A))
    assert cmdline is not None
    assert "rdinit=/init" in cmdline
    config_txt = await text(await tree("config.txt", CLIENT_A))
    assert config_txt is not None
    assert "initramfs initrd.img followkernel" in config_txt


async def test_a_deployment_serves_the_installer_with_its_token_then_the_own_files(
    config: Config, store: Store
) -> None:
    deploying = Deploying({"a": "installer"})
    tree, _sightings = boot_tree(config, store, neighbours=dict, deploy=deploying)
    assert await text(await tree("start4.elf", CLIENT_A)) == "start4 installer"
    cmdline = await text(await tree("cmdline.txt", CLIENT_A))
    assert cmdline is not None
    assert "piman.url=http://198.18.0.1:8080 piman.token=t0k3n piman.node=a" in cmdline
    assert deploying.seen == []
    # The image is written: the node's own tree, with the first-boot words on its command line.
    deploying.choices["a"] = "local"
    deploying.firstboot = "root=PARTUUID=a-02 systemd.run=/boot/firstrun.sh\n"
    assert await text(await tree("start4.elf", CLIENT_A)) == "start4 a"
    assert await text(await tree("cmdline.txt", CLIENT_A)) == deploying.firstboot
    assert deploying.seen == [("a", "start4.elf"), ("a", "cmdline.txt")]
    # No deployment: the node's usual tree, and nothing told to the engine.
    del deploying.choices["a"]
    assert await text(await tree("start4.elf", CLIENT_A)) == "start4 a"
    assert len(deploying.seen) == 2


async def test_own_tree_files_win_over_generated_ones(config: Config, store: Store) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    assert await text(await tree("1234abcd/cmdline.txt", STRANGER)) == "root=PARTUUID=b-own"
    generated = await text(await tree("cmdline.txt", CLIENT_A))
    assert generated is not None
    assert "root=/dev/mmcblk0p2" in generated


async def test_templates_can_be_overridden_in_data_dir(config: Config, store: Store) -> None:
    templates = config.manager.data_dir / "templates"
    templates.mkdir()
    (templates / "config.txt").write_text("# custom for ${node} ${serial}\n")
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    assert await text(await tree("config.txt", CLIENT_A)) == "# custom for a unknown\n"


async def test_proxy_mode_learns_the_mac_from_the_neighbour_table(
    config: Config, store: Store
) -> None:
    tree, _sightings = boot_tree(
        config, store, neighbours=lambda: {"10.9.8.7": "dc:a6:32:00:00:01"}
    )
    assert await text(await tree("start4.elf", ("10.9.8.7", 1024))) == "start4 a"


async def test_unknown_pi_with_a_serial_is_discovered_and_a_node_once_accepted(
    config: Config, store: Store
) -> None:
    tree, sightings = boot_tree(config, store, neighbours=lambda: {"10.9.8.6": "dc:a6:32:00:00:99"})
    await sightings.load()
    assert await text(await tree("feedf00d/start4.elf", ("10.9.8.6", 1024))) == "start4 default"
    await sightings.drain()
    assert await store.nodes.find(mac="dc:a6:32:00:00:99") is None
    assert [(d.mac, d.serial) for d in sightings.discovered()] == [
        ("dc:a6:32:00:00:99", "feedf00d")
    ]
    node = await sightings.accept("dc:a6:32:00:00:99")
    assert node.serial == "feedf00d"
    assert node.state == "new"


async def test_traversal_through_a_prefix_is_refused(config: Config, store: Store) -> None:
    tree, _sightings = boot_tree(config, store, neighbours=dict)
    with pytest.raises(AccessViolation):
        await tree("1234abcd/../../../etc/passwd", STRANGER)
    with pytest.raises(AccessViolation):
        await tree("../nodes/a/boot/start4.elf", STRANGER)


async def test_without_a_store_everyone_gets_the_default_tree(config: Config) -> None:
    tree = BootTree(config, None)
    assert await text(await tree("1234abcd/start4.elf", CLIENT_A)) == "start4 default"


def test_files_too_large_for_the_firmware_are_warned_about(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    assert check_boot_trees(config) == []
    big = config.manager.data_dir / "nodes" / "c" / "boot" / "kernel7.img"
    with big.open("wb") as f:
        f.truncate(65535 * 512)  # Pi 3: 512-byte blocks, one block too many
    ok = config.manager.data_dir / "nodes" / "a" / "boot" / "initrd.img"
    with ok.open("wb") as f:
        f.truncate(65535 * 1024 - 1)  # Pi 4 at 1024: just fits
    caplog.set_level(logging.WARNING)
    warnings = check_boot_trees(config)
    assert len(warnings) == 1
    assert "kernel7.img" in warnings[0]
    assert "blksize 512" in warnings[0]
    assert "kernel7.img" in caplog.text


def test_read_neighbours_parses_proc_net_arp(tmp_path: Path) -> None:
    arp = tmp_path / "arp"
    arp.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "198.18.0.11      0x1         0x2         DC:A6:32:00:00:01     *        eth1\n"
        "198.18.0.12      0x1         0x0         00:00:00:00:00:00     *        eth1\n"
    )
    assert read_neighbours(arp) == {"198.18.0.11": "dc:a6:32:00:00:01"}
