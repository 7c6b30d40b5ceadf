"""``piman installer build``: the netboot installer that reinstalls nodes, from Debian packages.

The kernel, the installer's initramfs and (arm64) the Raspberry Pi firmware and device trees go
under the manager's ``data_dir/installer/<arch>/``, where the boot tree serves them to nodes
being deployed. Packages come through a private apt configuration; the host's apt is untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piman.cli.common import ConfigOption, console, err_console, fail, load
from piman.deploy.installer import Arch, InstallerBuild, InstallerBuildError, build_installer

__all__ = ["register"]

installer_app = typer.Typer(
    help="The netboot installer (kernel, initramfs, Pi firmware) that reinstalls nodes.",
    no_args_is_help=True,
)


@installer_app.command("build")
def build(
    arch: Annotated[
        Arch, typer.Option("--arch", help="arm64 for Raspberry Pis, amd64 for x86 nodes.")
    ] = "arm64",
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Debian mirror URL (default: the host's own Debian mirror, else "
            "http://deb.debian.org/debian).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch the package lists again and rebuild everything.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Build the installer from Debian packages into data_dir/installer/<arch>/.

    The packages (linux-image, busybox-static, openssl with its libssl and libc6, and
    raspi-firmware for arm64) are downloaded once and cached under data_dir/installer/cache: a
    second build with nothing changed is quick.

    Example: piman installer build --arch arm64 -c /etc/piman/piman.yaml
    """
    data_dir = load(config).manager.data_dir
    live = err_console.is_terminal

    with err_console.status(f"building the {arch} installer", spinner="dots") as status:

        def show(message: str) -> None:
            if live:
                status.update(message)
            else:
                err_console.print(message, markup=False, highlight=False, soft_wrap=True)

        try:
            result = build_installer(data_dir, arch, mirror=mirror, force=force, on_progress=show)
        except InstallerBuildError as err:
            fail(str(err))
        except OSError as err:
            fail(f"cannot write under {data_dir}: {err.strerror or err}")
    _report(result)


def _report(result: InstallerBuild) -> None:
    paths = result.paths
    state = "up to date" if result.reused else "built"
    console.print(f"installer {paths.arch} {state}: {paths.root}", markup=False)
    for package, version in result.packages.items():
        console.print(f"  {package} {version}", markup=False)
    console.print(
        f"  {paths.kernel.name} {_size(paths.kernel)}, {paths.initrd.name} "
        f"{_size(paths.initrd)} ({len(result.modules)} drivers)",
        markup=False,
    )
    if paths.firmware:
        console.print(
            f"  {len(paths.firmware)} firmware files, {len(paths.dtbs())} device trees",
            markup=False,
        )


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def register(app: typer.Typer) -> None:
    app.add_typer(installer_app, name="installer")
