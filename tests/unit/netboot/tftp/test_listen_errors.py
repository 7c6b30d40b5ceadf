"""A TFTP server that cannot listen says so in one line (as DHCP does), not a traceback."""

from __future__ import annotations

import socket

import pytest

from piman.config.netboot import TftpSettings
from piman.errors import PimanError
from piman.netboot.tftp.server import TftpServer


async def _nothing(name: str, client: tuple[str, int]) -> None:
    return None


async def test_an_unknown_interface_is_one_line() -> None:
    server = TftpServer(_nothing, TftpSettings(), listen=("127.0.0.1", 0), interface="nosuch0")  # type: ignore[arg-type]
    with pytest.raises(
        PimanError, match=r"^TFTP cannot listen on 127\.0\.0\.1:0 on interface nosuch0: "
    ):
        await server.serve()


async def test_a_taken_port_is_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = TftpServer(_nothing, TftpSettings(), listen=("127.0.0.1", port))  # type: ignore[arg-type]
        with pytest.raises(PimanError, match=rf"^TFTP cannot listen on 127\.0\.0\.1:{port}: "):
            await server.serve()
