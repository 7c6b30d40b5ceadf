"""One async SNMP client (pysnmp 7): GET, SET and WALK over v1, v2c and v3.

:class:`SnmpTarget` is everything needed to reach one agent, secrets resolved (from the
configuration inline, a file or an environment variable) and never shown in ``repr`` or logs.
:class:`SnmpClient` owns one pysnmp engine; :meth:`SnmpClient.close` closes its dispatcher.

Errors are translated at this boundary: no answer → :class:`~piman.errors.PowerConnError`;
authentication failures, error-status replies (read-only, no access) and missing OIDs →
:class:`~piman.errors.PowerFatalError`, each naming the switch and what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from piman.config.power import SecretRef, SnmpSettings
from piman.errors import PowerConnError, PowerFatalError

__all__ = ["AUTH_PROTOCOLS", "PRIV_PROTOCOLS", "SnmpClient", "SnmpTarget", "SnmpValue"]

logger = logging.getLogger(__name__)

SnmpValue = int | bytes | str
"""A decoded value: integers as int, octet strings as bytes, anything else as its text."""

AUTH_PROTOCOLS: dict[str, str] = {
    "md5": "usmHMACMD5AuthProtocol",
    "sha": "usmHMACSHAAuthProtocol",
    "sha1": "usmHMACSHAAuthProtocol",
    "sha224": "usmHMAC128SHA224AuthProtocol",
    "sha256": "usmHMAC192SHA256AuthProtocol",
    "sha384": "usmHMAC256SHA384AuthProtocol",
    "sha512": "usmHMAC384SHA512AuthProtocol",
}
PRIV_PROTOCOLS: dict[str, str] = {
    "des": "usmDESPrivProtocol",
    "aes": "usmAesCfb128Protocol",
    "aes128": "usmAesCfb128Protocol",
    "aes192": "usmAesCfb192Protocol",
    "aes256": "usmAesCfb256Protocol",  # Reeder key extension (net-snmp "AES-256", Cisco)
    "aes192b": "usmAesBlumenthalCfb192Protocol",
    "aes256b": "usmAesBlumenthalCfb256Protocol",  # draft-blumenthal key extension
}

# Reports and indications that mean "your credentials are wrong": retrying will not help.
_AUTH_INDICATIONS = {
    "WrongDigest": "wrong authentication key or protocol",
    "AuthenticationFailure": "wrong authentication key or protocol",
    "AuthenticationError": "authentication failed",
    "UnknownUserName": "the switch does not know this user",
    "UnknownSecurityName": "the switch does not know this user",
    "DecryptionError": "wrong privacy key or protocol",
    "UnsupportedSecurityLevel": "the switch refuses this security level",
    "UnsupportedAuthProtocol": "unsupported authentication protocol",
    "UnsupportedPrivProtocol": "unsupported privacy protocol",
    "UnknownCommunityName": "wrong community",
    "NoSuchContext": "the switch has no such context (snmp.context)",
    "EncryptionError": "AES/DES is not available here (install the `cryptography` package)",
}
# RFC 3416 error-status values.
_ERROR_STATUS = {
    1: "tooBig",
    2: "noSuchName",
    3: "badValue",
    4: "readOnly",
    5: "genErr",
    6: "noAccess",
    7: "wrongType",
    8: "wrongLength",
    9: "wrongEncoding",
    10: "wrongValue",
    11: "noCreation",
    12: "inconsistentValue",
    13: "resourceUnavailable",
    14: "commitFailed",
    15: "undoFailed",
    16: "authorizationError",
    17: "notWritable",
    18: "inconsistentName",
}
_MISSING = {"NoSuchObject", "NoSuchInstance", "EndOfMibView"}


def _read_secret(ref: SecretRef, what: str, switch: str) -> str:
    if ref.key is not None:
        return ref.key.get_secret_value()
    if ref.key_file is not None:
        try:
            return ref.key_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise PowerFatalError(
                f"switch {switch!r}: cannot read snmp.{what}.key_file {ref.key_file}: "
                f"{err.strerror}"
            ) from err
    if ref.key_env is not None:
        value = os.environ.get(ref.key_env)
        if value is None:
            raise PowerFatalError(
                f"switch {switch!r}: environment variable {ref.key_env} "
                f"(snmp.{what}.key_env) is not set"
            )
        return value
    raise PowerFatalError(f"switch {switch!r}: snmp.{what} needs key, key_file or key_env")


@dataclass(frozen=True, slots=True)
class SnmpTarget:
    """One SNMP agent and how to talk to it. Secrets stay out of ``repr``."""

    switch: str
    host: str
    port: int = 161
    version: str = "2c"
    community: str = field(default="private", repr=False)
    user: str | None = None
    auth_protocol: str | None = None
    auth_key: str | None = field(default=None, repr=False)
    priv_protocol: str | None = None
    priv_key: str | None = field(default=None, repr=False)
    context: str = ""
    timeout: float = 1.0
    retries: int = 2

    @property
    def where(self) -> str:
        return f"switch {self.switch!r} ({self.host}:{self.port}, SNMP v{self.version})"

    @classmethod
    def from_settings(
        cls, switch: str, address: str | None, settings: SnmpSettings, *, vlan: int | None = None
    ) -> SnmpTarget:
        """Resolve a switch's ``snmp:`` settings; raises PowerFatalError on bad settings."""
        host = settings.host or address
        if host is None:
            raise PowerFatalError(f"switch {switch!r} has no address and no snmp.host")
        community = settings.community.get_secret_value()
        if vlan is not None and "@" not in community:
            community = f"{community}@{vlan}"  # Cisco: one community per VLAN's bridge MIB
        auth_proto = auth_key = priv_proto = priv_key = None
        if settings.version == "3":
            if not settings.user:
                raise PowerFatalError(f"switch {switch!r}: SNMP v3 needs snmp.user")
            if settings.auth is not None:
                auth_proto = (settings.auth.protocol or "sha").lower().replace("-", "")
                if auth_proto not in AUTH_PROTOCOLS:
                    raise PowerFatalError(
                        f"switch {switch!r}: snmp.auth.protocol {settings.auth.protocol!r} is "
                        f"not one of {', '.join(AUTH_PROTOCOLS)}"
                    )
                auth_key = _read_secret(settings.auth, "auth", switch)
            if settings.priv is not None:
                if settings.auth is None:
                    raise PowerFatalError(f"switch {switch!r}: snmp.priv needs snmp.auth too")
                priv_proto = (settings.priv.protocol or "aes128").lower().replace("-", "")
                if priv_proto not in PRIV_PROTOCOLS:
                    raise PowerFatalError(
                        f"switch {switch!r}: snmp.priv.protocol {settings.priv.protocol!r} is "
                        f"not one of {', '.join(PRIV_PROTOCOLS)}"
                    )
                priv_key = _read_secret(settings.priv, "priv", switch)
            for key, what in ((auth_key, "auth"), (priv_key, "priv")):
                if key is not None and len(key) < 8:
                    raise PowerFatalError(
                        f"switch {switch!r}: snmp.{what} key is shorter than 8 characters "
                        "(SNMPv3 requires at least 8)"
                    )
        return cls(
            switch=switch,
            host=host,
            port=settings.port,
            version=settings.version,
            community=community,
            user=settings.user,
            auth_protocol=auth_proto,
            auth_key=auth_key,
            priv_protocol=priv_proto,
            priv_key=priv_key,
            context=settings.context,
            timeout=settings.timeout,
            retries=settings.retries,
        )


def _decode(value: Any) -> SnmpValue | None:
    kind = type(value).__name__
    if kind in _MISSING:
        return None
    if hasattr(value, "asOctets") and kind not in {"IpAddress"}:
        octets: bytes = value.asOctets()
        return octets
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value.prettyPrint() if hasattr(value, "prettyPrint") else value)


class SnmpClient:
    """GET/SET/WALK against one agent. Build with a :class:`SnmpTarget`; ``await close()``."""

    def __init__(self, target: SnmpTarget) -> None:
        self.target = target
        self._hl: Any = None
        self._engine: Any = None
        self._auth: Any = None
        self._transport: Any = None
        self._context: Any = None
        self._auth_failure: str | None = None
        self._setup_lock = asyncio.Lock()
        self.messages = 0  # requests handed to the engine (each may be resent on timeout)

    async def _setup(self) -> Any:
        if self._engine is not None:
            return self._hl
        async with self._setup_lock:
            if self._engine is None:
                await self._build()
        return self._hl

    async def _build(self) -> None:
        from pysnmp.error import PySnmpError
        from pysnmp.hlapi.v3arch import asyncio as hl

        t = self.target
        if t.version == "3":
            kwargs: dict[str, Any] = {}
            if t.auth_protocol is not None:
                kwargs["authKey"] = t.auth_key
                kwargs["authProtocol"] = getattr(hl, AUTH_PROTOCOLS[t.auth_protocol])
            if t.priv_protocol is not None:
                kwargs["privKey"] = t.priv_key
                kwargs["privProtocol"] = getattr(hl, PRIV_PROTOCOLS[t.priv_protocol])
            self._auth = hl.UsmUserData(t.user, **kwargs)
        else:
            self._auth = hl.CommunityData(t.community, mpModel=0 if t.version == "1" else 1)
        try:
            self._transport = await hl.UdpTransportTarget.create(
                (t.host, t.port), timeout=t.timeout, retries=t.retries
            )
        except PySnmpError as err:
            raise PowerFatalError(f"{t.where}: cannot resolve {t.host!r}: {err}") from err
        self._context = hl.ContextData(contextName=t.context.encode())
        self._engine = hl.SnmpEngine()
        # A reply that fails authentication is dropped by pysnmp (the request then times out);
        # watch for it so a wrong key is reported as such, and not retried.
        self._engine.observer.register_observer(
            self._on_sm_failure, "rfc3412.prepareDataElements:sm-failure"
        )
        self._hl = hl

    def _on_sm_failure(self, _engine: Any, _point: str, variables: Any, _ctx: Any) -> None:
        info = variables.get("statusInformation") or {}
        indication = info.get("errorIndication") if hasattr(info, "get") else None
        if indication is not None:
            self._auth_failure = type(indication).__name__

    @property
    def _deadline(self) -> float:
        return self.target.timeout * (self.target.retries + 1) + 2.0

    @contextlib.asynccontextmanager
    async def _bounded(self, op: str, seconds: float | None = None) -> AsyncIterator[None]:
        """A hard deadline over pysnmp's own timeout and retries, as a PowerConnError."""
        limit = self._deadline if seconds is None else seconds
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError:
            raise PowerConnError(
                f"{self.target.where}: {op} got no answer within {limit:g} s"
            ) from None

    def _check(
        self,
        error_indication: Any,
        error_status: Any,
        error_index: Any,
        op: str,
        oids: Sequence[str],
    ) -> None:
        t = self.target
        if not error_indication:
            self._auth_failure = None  # the switch answered: forget older failures
        if error_indication:
            kind = type(error_indication).__name__
            if kind in _AUTH_INDICATIONS:
                raise PowerFatalError(
                    f"{t.where}: {op} refused: {_AUTH_INDICATIONS[kind]} "
                    f"({error_indication}); check snmp.user, snmp.auth, snmp.priv, snmp.context"
                )
            if kind == "RequestTimedOut" and self._auth_failure in _AUTH_INDICATIONS:
                raise PowerFatalError(
                    f"{t.where}: {op} refused: {_AUTH_INDICATIONS[self._auth_failure]} "
                    "(the switch's replies do not authenticate with our keys); check snmp.user, "
                    "snmp.auth and snmp.priv"
                )
            if kind == "RequestTimedOut":
                raise PowerConnError(
                    f"{t.where}: no answer to {op} after {t.retries + 1} tries of "
                    f"{t.timeout:g} s; check that it is reachable, that SNMP is on, and the "
                    + ("user and keys" if t.version == "3" else "community")
                )
            raise PowerConnError(f"{t.where}: {op} failed: {error_indication}")
        status = int(error_status or 0)
        if status:
            index = int(error_index or 0)
            oid = oids[index - 1] if 0 < index <= len(oids) else ", ".join(oids)
            name = _ERROR_STATUS.get(status, f"error {status}")
            hint = ""
            if name in {"readOnly", "notWritable", "noAccess", "authorizationError"}:
                hint = ": the OID is read-only or the community/user has no write access"
            elif name in {"noSuchName", "noCreation", "inconsistentName"}:
                hint = ": the switch has no such OID; check profile, group and port_offset"
            elif name in {"wrongValue", "badValue", "wrongType", "inconsistentValue"}:
                hint = ": the switch refuses this value; check the profile"
            raise PowerFatalError(f"{t.where}: {op} {oid} answered {name}{hint}")

    async def get(self, oids: Sequence[str]) -> dict[str, SnmpValue]:
        """Read OIDs; raises PowerFatalError if any does not exist."""
        values = await self.get_optional(oids)
        for oid in oids:
            if values.get(oid) is None:
                raise PowerFatalError(
                    f"{self.target.where}: has no OID {oid}; check profile, group and port_offset"
                )
        return {k: v for k, v in values.items() if v is not None}

    async def get_optional(self, oids: Sequence[str]) -> dict[str, SnmpValue | None]:
        """Read OIDs; a missing OID maps to None."""
        hl = await self._setup()
        binds = [hl.ObjectType(hl.ObjectIdentity(oid)) for oid in oids]
        self.messages += 1
        logger.debug("[switch=%s] GET %s", self.target.switch, " ".join(oids))
        async with self._bounded("GET"):
            err_ind, err_st, err_idx, var_binds = await hl.get_cmd(
                self._engine, self._auth, self._transport, self._context, *binds, lookupMib=False
            )
        self._check(err_ind, err_st, err_idx, "GET", oids)
        return {oid: _decode(vb[1]) for oid, vb in zip(oids, var_binds, strict=False)}

    async def set(self, values: Sequence[tuple[str, int]]) -> dict[str, SnmpValue | None]:
        """Write Integer32 values; raises PowerFatalError on an error status or missing OID."""
        hl = await self._setup()
        from pysnmp.proto.rfc1902 import Integer32

        oids = [oid for oid, _ in values]
        binds = [hl.ObjectType(hl.ObjectIdentity(oid), Integer32(v)) for oid, v in values]
        self.messages += 1
        logger.debug("[switch=%s] SET %s", self.target.switch, values)
        async with self._bounded("SET"):
            err_ind, err_st, err_idx, var_binds = await hl.set_cmd(
                self._engine, self._auth, self._transport, self._context, *binds, lookupMib=False
            )
        self._check(err_ind, err_st, err_idx, "SET", oids)
        out = {oid: _decode(vb[1]) for oid, vb in zip(oids, var_binds, strict=False)}
        for oid, value in out.items():
            if value is None:
                raise PowerFatalError(
                    f"{self.target.where}: SET {oid} answered that the OID does not exist or "
                    "is not writable; check profile, group, port_offset and write access"
                )
        return out

    async def walk(self, prefix: str, *, max_rows: int = 10000) -> list[tuple[str, SnmpValue]]:
        """Every (OID, value) under ``prefix``, in order."""
        hl = await self._setup()
        rows: list[tuple[str, SnmpValue]] = []
        start = hl.ObjectType(hl.ObjectIdentity(prefix))
        gen = hl.walk_cmd(
            self._engine,
            self._auth,
            self._transport,
            self._context,
            start,
            lookupMib=False,
            lexicographicMode=False,
        )
        try:
            async with self._bounded("WALK", self._deadline * (max_rows + 1)):
                async for err_ind, err_st, err_idx, var_binds in gen:
                    self.messages += 1
                    self._check(err_ind, err_st, err_idx, "WALK", [prefix])
                    for vb in var_binds:
                        value = _decode(vb[1])
                        if value is not None:
                            rows.append((str(vb[0]), value))
                    if len(rows) >= max_rows:
                        break
        finally:
            await gen.aclose()
        return rows

    async def close(self) -> None:
        """Close the engine's dispatcher (its UDP socket and timer)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close_dispatcher()
            # The datagram transport closes its socket on the next loop iterations.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
