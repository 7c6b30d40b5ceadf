"""The ``webhook`` driver: POST JSON to switch a port (UniFi controllers, home automation).

Body: ``{"switch": …, "address": …, "port": 3, "node": …, "state": "on"|"off"}``; with
``webhook_token`` an ``Authorization: Bearer …`` header. 2xx is success; 5xx, 429 and transport
errors are worth retrying; other statuses are fatal. The driver cannot read a port back.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.fleet.power import PortReading

__all__ = ["WebhookDriver"]

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT = 10.0


class WebhookDriver:
    """Switches ports by POSTing JSON to a URL."""

    name = "webhook"
    has_readback = False
    has_detection = False

    def __init__(
        self,
        switch: SwitchSettings,
        nodes: dict[int, NodeSettings] | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not switch.webhook_url or not switch.webhook_url.startswith(("http://", "https://")):
            raise PowerFatalError(
                f"switch {switch.name!r}: driver webhook needs `webhook_url:` (http:// or https://)"
            )
        self.switch = switch.name
        self._settings = switch
        self._nodes = nodes or {}
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._last: dict[int, PowerState] = {}

    def body(self, port: int, state: PowerState) -> dict[str, Any]:
        node = self._nodes.get(port)
        return {
            "switch": self.switch,
            "address": str(self._settings.address) if self._settings.address else None,
            "port": port,
            "node": node.name if node is not None else None,
            "state": state.value,
        }

    async def set_port(self, port: int, state: PowerState) -> None:
        if self._client is None:
            headers = {}
            if self._settings.webhook_token is not None:
                token = self._settings.webhook_token.get_secret_value()
                headers["Authorization"] = f"Bearer {token}"
            self._client = httpx.AsyncClient(
                transport=self._transport, timeout=WEBHOOK_TIMEOUT, headers=headers
            )
        url = self._settings.webhook_url
        assert url is not None
        try:
            response = await self._client.post(url, json=self.body(port, state))
        except httpx.HTTPError as err:
            raise PowerConnError(f"switch {self.switch!r}: webhook {url}: {err}") from err
        if response.is_success:
            self._last[port] = state
            return
        message = f"switch {self.switch!r}: webhook {url} answered {response.status_code}"
        if response.status_code >= 500 or response.status_code == 429:
            raise PowerConnError(message)
        raise PowerFatalError(message + "; check webhook_url and webhook_token")

    async def get_port(self, port: int) -> PortReading:
        return PortReading(admin=self._last.get(port, PowerState.UNKNOWN))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
