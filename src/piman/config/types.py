"""Small value types shared by the configuration sections: durations, MAC addresses, host:port."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

__all__ = [
    "Duration",
    "HostPort",
    "MacAddress",
    "Name",
    "parse_duration",
    "parse_host_port",
    "parse_mac",
]

_UNITS = r"(us|µs|ms|s|m|h|d|w)"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*" + _UNITS + r"?\s*$")
_UNIT_SECONDS = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"1m"``, ``"1h30m"``, ``"15d"``, ``"100us"``; raises
    ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (expected e.g. 30s, 5m, 1h, 15d)")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative; a duration must be 0 or more")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        parts = re.findall(r"(\d+(?:\.\d+)?)" + _UNITS, text)
        if parts and "".join(n + u for n, u in parts) == text.replace(" ", ""):
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
        match = _DURATION_RE.match(text)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    raise ValueError(f"{value!r} is not a duration (expected e.g. 30s, 5m, 1h, 15d)")


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: ``90.0 -> "90s"``, ``3600 -> "1h"``,
    ``0.0001 -> "100us"``."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if 0 < seconds < 1:
        micros = seconds * 1e6
        if abs(micros - round(micros)) < 1e-6:  # whole microseconds (floats: 1e-4 * 1e6 is inexact)
            whole = round(micros)
            return f"{whole // 1000}ms" if whole % 1000 == 0 else f"{whole}us"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A duration in seconds, written in YAML as ``30s``, ``5m``, ``1h``, ``15d``, ``250ms``, ``100us``
or a number."""

_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


def parse_mac(value: object) -> str:
    """Normalise a MAC address to ``dc:a6:32:01:02:03``; raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a MAC address (expected e.g. dc:a6:32:00:00:02)")
    text = value.strip().lower()
    if not _MAC_RE.match(text):
        raise ValueError(f"{value!r} is not a MAC address (expected e.g. dc:a6:32:00:00:02)")
    digits = re.sub(r"[:-]", "", text)
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


MacAddress = Annotated[str, BeforeValidator(parse_mac)]
"""A MAC address, normalised to lower case with colons."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(value: object) -> str:
    """A name for a node or a switch: letters, digits, '.', '_' and '-', up to 63."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '.', '_' and '-', up to 63)"
        )
    return value


Name = Annotated[str, BeforeValidator(check_name)]
"""The name of a node or a switch."""


def parse_host_port(value: object, default_port: int | None = None) -> tuple[str, int]:
    """``"0.0.0.0:8000"`` → ``("0.0.0.0", 8000)``; ``"8000"`` → ``("0.0.0.0", 8000)``."""
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if not port_text and default_port is not None:
        port_text = str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r} is not host:port (expected e.g. 127.0.0.1:8000)") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def _check_host_port(value: object) -> str:
    host, port = parse_host_port(value)
    return f"{host}:{port}"


HostPort = Annotated[str, BeforeValidator(_check_host_port)]
"""``host:port``, normalised (``"8000"`` becomes ``"0.0.0.0:8000"``)."""
