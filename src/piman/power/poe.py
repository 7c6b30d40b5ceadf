"""The ``snmp-poe`` driver: PoE ports switched over SNMP, through a vendor profile.

The driver only translates: port number → OID (profile, ``group``, ``port_offset``), PowerState →
value, raw readings → :class:`~piman.power.base.PortReading`. The SNMP conversation is
:class:`~piman.power.snmp.SnmpClient`'s; retries and read-back are the controller's.

``profile: auto`` probes the profiles of :data:`~piman.power.profiles.AUTO_ORDER` on the first
port used (TP-Link first) and remembers the first that answers for the driver's lifetime.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from piman.config.models import NodeSettings
from piman.config.power import SwitchSettings
from piman.errors import PowerConnError, PowerFatalError
from piman.fleet.lifecycle import PowerState
from piman.power.base import PortReading
from piman.power.profiles import AUTO_ORDER, PROFILES, Profile
from piman.power.snmp import SnmpClient, SnmpTarget

__all__ = ["SnmpPoeDriver"]

logger = logging.getLogger(__name__)

ClientFactory = Callable[[SnmpTarget], SnmpClient]


class SnmpPoeDriver:
    """PoE ports of one switch over SNMP (v1, v2c or v3)."""

    name = "snmp-poe"
    has_readback = True

    def __init__(
        self,
        switch: SwitchSettings,
        nodes: dict[int, NodeSettings] | None = None,
        *,
        client_factory: ClientFactory = SnmpClient,
    ) -> None:
        self.settings = switch
        self.switch = switch.name
        self._client_factory = client_factory
        self._client: SnmpClient | None = None
        self._profile: Profile | None = (
            None if switch.profile == "auto" else PROFILES[switch.profile]
        )
        self._probe_lock = asyncio.Lock()

    @property
    def has_detection(self) -> bool:
        return self._profile is None or self._profile.detection is not None

    @property
    def profile(self) -> Profile | None:
        """The profile in use (None while ``auto`` has not probed yet)."""
        return self._profile

    @property
    def client(self) -> SnmpClient:
        if self._client is None:
            address = str(self.settings.address) if self.settings.address is not None else None
            vlan = self.settings.snmp.vlan if self.settings.profile in {"cisco", "auto"} else None
            target = SnmpTarget.from_settings(self.switch, address, self.settings.snmp, vlan=vlan)
            self._client = self._client_factory(target)
        return self._client

    def _index(self, port: int) -> int:
        return port + self.settings.port_offset

    async def _resolve(self, port: int) -> Profile:
        if self._profile is not None:
            return self._profile
        async with self._probe_lock:
            if self._profile is None:
                self._profile = await self._probe(port)
        return self._profile

    async def _probe(self, port: int) -> Profile:
        group, index = self.settings.group, self._index(port)
        tried = []
        for name in AUTO_ORDER:
            profile = PROFILES[name]
            assert profile.probe is not None
            oid = profile.oid(profile.probe, group, index)
            tried.append(f"{name} ({oid})")
            values = await self.client.get_optional([oid])
            if values.get(oid) is not None:
                logger.info("[switch=%s] profile auto: %s answered", self.switch, name)
                return profile
        raise PowerFatalError(
            f"switch {self.switch!r}: profile auto found no PoE table for port {port}; "
            f"tried {', '.join(tried)}. Set `profile:` (rfc3621, netgear, tplink, cisco), "
            "`group:` and `port_offset:`"
        )

    async def set_port(self, port: int, state: PowerState) -> None:
        profile = await self._resolve(port)
        oid = profile.admin_oid(self.settings.group, self._index(port))
        await self.client.set([(oid, profile.value_for(state))])

    async def get_port(self, port: int) -> PortReading:
        profile = await self._resolve(port)
        group, index = self.settings.group, self._index(port)
        admin_oid = profile.admin_oid(group, index)
        det_oid = profile.detection_oid(group, index)
        watts_oid = profile.watts_oid(group, index)
        oids = [o for o in (admin_oid, det_oid, watts_oid) if o is not None]
        values = await self.client.get_optional(oids)
        raw_admin = values.get(admin_oid)
        if raw_admin is None:
            raise PowerFatalError(
                f"switch {self.switch!r} has no PoE port {port} at {admin_oid} "
                f"(profile {profile.name}, group {group}, port_offset "
                f"{self.settings.port_offset}); check those settings"
            )
        admin = profile.admin_state(raw_admin)
        detection = None
        if det_oid is not None and values.get(det_oid) is not None:
            detection = profile.detection_name(values[det_oid])
        watts = None
        raw_watts = values.get(watts_oid) if watts_oid is not None else None
        if isinstance(raw_watts, int):
            watts = round(raw_watts * profile.watts_scale, 3)
        return PortReading(admin=admin, detection=detection, watts=watts)

    async def read_power_watts(self, port: int) -> float | None:
        return (await self.get_port(port)).watts

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except (PowerConnError, OSError):  # closing must not hide the real outcome
                logger.debug("[switch=%s] error closing SNMP client", self.switch)
