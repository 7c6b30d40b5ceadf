"""The netboot installer: a busybox initramfs that writes a deployment's image on a node's disk.

``installer.sh`` is the node's half of docs/boot-protocol.md (POSIX sh, busybox applets only),
``init`` the initramfs's ``/init``, ``udhcpc.script`` its DHCP event script. ``build`` makes the
kernel, initramfs and (arm64) Raspberry Pi firmware from Debian packages, under
``data_dir/installer/<arch>/``, for the boot tree to serve.
"""

from __future__ import annotations

from piman.deploy.installer.build import (
    SOURCES_DIR,
    Arch,
    InstallerBuild,
    InstallerBuildError,
    InstallerPaths,
    build_installer,
    host_mirror,
    installer_paths,
)

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
