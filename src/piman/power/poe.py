"""The ``snmp-poe`` driver: PoE ports switched over SNMP, through a vendor profile.

The driver only translates: port number → OID (profile, ``group``, ``port_offset``), PowerState →
value, raw readings → :class:`~piman.power.base.PortReading`. The SNMP conversation is
:class:`~piman.power.snmp.SnmpClient`'s; retries and read-back are the controller's. Calls for
many ports made at the same moment share one PDU (:mod:`piman.power.batching`).

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
from piman.fleet.power import PortReading
from piman.power.batching import Coalescer
from piman.power.profiles import AUTO_ORDER, PROFILES, Profile
from piman.power.snmp import SnmpClient, SnmpTarget, SnmpValue

__all__ = ["SnmpPoeDriver"]

logger = logging.getLogger(__name__)

ClientFactory = Callable[[SnmpTarget], SnmpClient]

# Ports per SNMP request: a SET carries one varbind per port, a GET up to three; both stay
# well under the 1,472 bytes of one Ethernet frame, which every switch accepts.
SET_BATCH = 24
GET_BATCH = 16


class SnmpPoeDriver:
    """PoE ports of one switch over SNMP (v1, v2c or v3)."""

    name = "snmp-poe"
    has_readback = True
    concurrency = 256  # calls in flight; the coalescers turn them into a few PDUs

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
        self._set_on: Coalescer[int, None] = Coalescer(
            lambda ports: self._set_many(PowerState.ON, ports), SET_BATCH
        )
        self._set_off: Coalescer[int, None] = Coalescer(
            lambda ports: self._set_many(PowerState.OFF, ports), SET_BATCH
        )
        self._get: Coalescer[int, PortReading] = Coalescer(self._get_many, GET_BATCH)

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
        await self._resolve(port)
        coalescer = self._set_on if state is PowerState.ON else self._set_off
        await coalescer(port)

    async def get_port(self, port: int) -> PortReading:
        await self._resolve(port)
        return await self._get(port)

    async def _set_many(self, state: PowerState, ports: list[int]) -> dict[int, Exception | None]:
        """One SET for many ports. SNMP SETs are atomic: if the switch refuses one varbind it
        applies none, so on a refusal each port is set alone to find out which one failed."""
        profile = self._profile
        assert profile is not None
        value = profile.value_for(state)
        binds = [(profile.admin_oid(self.settings.group, self._index(p)), value) for p in ports]
        if len(ports) > 1:
            try:
                await self.client.set(binds)
            except PowerFatalError:
                logger.info("[switch=%s] bulk SET refused; setting ports one by one", self.switch)
            else:
                return dict.fromkeys(ports)
        out: dict[int, Exception | None] = {}
        for port, bind in zip(ports, binds, strict=True):
            try:
                await self.client.set([bind])
                out[port] = None
            except PowerFatalError as err:
                out[port] = err
        return out

    def _oids(self, port: int) -> tuple[str, str | None, str | None]:
        profile = self._profile
        assert profile is not None
        group, index = self.settings.group, self._index(port)
        return (
            profile.admin_oid(group, index),
            profile.detection_oid(group, index),
            profile.watts_oid(group, index),
        )

    async def _get_many(self, ports: list[int]) -> dict[int, PortReading | Exception]:
        """One GET for the admin, detection and power readings of many ports."""
        oids = [o for port in ports for o in self._oids(port) if o is not None]
        try:
            values = await self.client.get_optional(oids)
        except PowerFatalError:
            if len(ports) == 1:
                raise
            out: dict[int, PortReading | Exception] = {}
            for port in ports:  # e.g. tooBig: ask port by port
                try:
                    out.update(await self._get_many([port]))
                except PowerFatalError as err:
                    out[port] = err
            return out
        return {port: self._reading(port, values) for port in ports}

    def _reading(self, port: int, values: dict[str, SnmpValue | None]) -> PortReading | Exception:
        profile = self._profile
        assert profile is not None
        admin_oid, det_oid, watts_oid = self._oids(port)
        raw_admin = values.get(admin_oid)
        if raw_admin is None:
            return PowerFatalError(
                f"switch {self.switch!r} has no PoE port {port} at {admin_oid} "
                f"(profile {profile.name}, group {self.settings.group}, port_offset "
                f"{self.settings.port_offset}); check those settings"
            )
        detection = None
        if det_oid is not None and values.get(det_oid) is not None:
            detection = profile.detection_name(values[det_oid])
        watts = None
        raw_watts = values.get(watts_oid) if watts_oid is not None else None
        if isinstance(raw_watts, int):
            watts = round(raw_watts * profile.watts_scale, 3)
        return PortReading(admin=profile.admin_state(raw_admin), detection=detection, watts=watts)

    async def close(self) -> None:
        for coalescer in (self._set_on, self._set_off, self._get):
            await coalescer.close()
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except (PowerConnError, OSError):  # closing must not hide the real outcome
                logger.debug("[switch=%s] error closing SNMP client", self.switch)
