"""Raspberry Pi specifics: ``vcgencmd`` readings and the board's model and revision.

``vcgencmd`` is optional: missing on other machines, and slow or hung on a Pi whose firmware
mailbox is busy. The reader runs its commands in parallel under one deadline; anything that fails
or times out makes the ``vcgencmd`` collector report failure (``node_scrape_collector_success
{collector="vcgencmd"} 0``) and the scrape carries on without ``rpi_*`` readings.

``get_throttled`` bits (Raspberry Pi firmware documentation): 0 under-voltage, 1 ARM frequency
capped, 2 currently throttled, 3 soft temperature limit active; bits 16–19 are the same
conditions "has occurred since boot".
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.files import LocalFiles, NodeFiles

__all__ = [
    "CLOCKS",
    "THROTTLE_BITS",
    "VOLTAGES",
    "BoardInfo",
    "PiReadings",
    "Vcgencmd",
    "commands",
    "decode_throttled",
    "find_program",
    "parse_reply",
    "pi_families",
    "read_board_info",
    "readings_from",
]

logger = logging.getLogger(__name__)

# bit → (condition, scope)
THROTTLE_BITS: dict[int, tuple[str, str]] = {
    0: ("under_voltage", "now"),
    1: ("arm_freq_capped", "now"),
    2: ("throttled", "now"),
    3: ("soft_temp_limit", "now"),
    16: ("under_voltage", "since_boot"),
    17: ("arm_freq_capped", "since_boot"),
    18: ("throttled", "since_boot"),
    19: ("soft_temp_limit", "since_boot"),
}
CLOCKS = ("arm", "core")
VOLTAGES = ("core",)


def decode_throttled(mask: int) -> dict[tuple[str, str], bool]:
    """(condition, scope) → whether its bit is set in a ``get_throttled`` mask."""
    return {cond: bool(mask >> bit & 1) for bit, cond in THROTTLE_BITS.items()}


_NUMBER = re.compile(r"[-+]?(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?)")


def parse_reply(text: str) -> float:
    """The number in a vcgencmd reply: ``throttled=0x50005``, ``temp=47.2'C``,
    ``frequency(48)=1500398464``, ``volt=0.8500V``. Raises ValueError when there is none."""
    key, sep, value = text.strip().partition("=")
    if not sep:
        raise ValueError(f"no '=' in vcgencmd reply {text!r}")
    if key == "error":
        raise ValueError(f"error in vcgencmd reply {text.strip()!r}")
    m = _NUMBER.match(value.strip())
    if m is None:
        raise ValueError(f"no number in vcgencmd reply {text!r}")
    token = m.group(0)
    return float(int(token, 16)) if token.lower().startswith("0x") else float(token)


@dataclass(slots=True)
class PiReadings:
    """What one round of vcgencmd calls returned; ``ok`` is False if any call failed."""

    ok: bool = False
    throttled: int | None = None
    soc_temperature: float | None = None
    clocks: dict[str, float] = field(default_factory=dict)
    voltages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BoardInfo:
    model: str
    revision: str


def find_program(name: str, path: str | None = None) -> str | None:
    """The executable ``name`` on ``path`` (default: $PATH), like ``shutil.which``."""
    for directory in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class Vcgencmd:
    """Runs the vcgencmd queries in parallel with a deadline."""

    def __init__(self, program: str, timeout: float = 2.0) -> None:
        self.program = program
        self.timeout = timeout

    def commands(self) -> list[tuple[str, ...]]:
        return commands()

    def read(self) -> PiReadings:
        import subprocess  # only machines that have vcgencmd pay for the import

        out = PiReadings()
        procs: list[tuple[tuple[str, ...], subprocess.Popen[str]]] = []
        try:
            for cmd in self.commands():
                proc = subprocess.Popen(
                    [self.program, *cmd],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    text=True,
                )
                procs.append((cmd, proc))
        except OSError as err:
            logger.warning("[vcgencmd] cannot run %s: %s", self.program, err)
            for _, proc in procs:
                proc.kill()
                proc.wait()
            return out
        deadline = time.monotonic() + self.timeout
        replies: list[tuple[tuple[str, ...], str | None]] = []
        for cmd, proc in procs:
            try:
                stdout, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                logger.warning("[vcgencmd] %s timed out after %.1fs", " ".join(cmd), self.timeout)
                replies.append((cmd, None))
                continue
            replies.append((cmd, stdout if proc.returncode == 0 else None))
        return readings_from(replies)


def commands() -> list[tuple[str, ...]]:
    """The vcgencmd queries of one round, as argument lists."""
    return [
        ("get_throttled",),
        ("measure_temp",),
        *(("measure_clock", c) for c in CLOCKS),
        *(("measure_volts", v) for v in VOLTAGES),
    ]


def readings_from(replies: Iterable[tuple[tuple[str, ...], str | None]]) -> PiReadings:
    """One round's ``(command, reply)`` pairs as readings; a reply of None is a command that
    failed (non-zero exit, timeout) and, like a reply that does not parse, makes ``ok`` False."""
    out = PiReadings()
    ok = True
    for cmd, reply in replies:
        if reply is None:
            ok = False
            continue
        try:
            value = parse_reply(reply)
        except ValueError as err:
            logger.warning("[vcgencmd] %s", err)
            ok = False
            continue
        if cmd[0] == "get_throttled":
            out.throttled = int(value)
        elif cmd[0] == "measure_temp":
            out.soc_temperature = value
        elif cmd[0] == "measure_clock":
            out.clocks[cmd[1]] = value
        else:
            out.voltages[cmd[1]] = value
    out.ok = ok
    return out


def _read_text(files: NodeFiles, path: str) -> str | None:
    try:
        return files.read(path).strip("\x00\n ")
    except OSError:
        return None


def read_board_info(
    proc_root: str = "/proc", sys_root: str = "/sys", files: NodeFiles | None = None
) -> BoardInfo | None:
    """The device-tree model and /proc/cpuinfo revision; None when this is not a Pi.
    Read through ``files`` (default: this machine's)."""
    files = files if files is not None else LocalFiles()
    model = _read_text(files, os.path.join(sys_root, "firmware", "devicetree", "base", "model"))
    if model is None:
        model = _read_text(files, os.path.join(proc_root, "device-tree", "model"))
    if not model or "Raspberry Pi" not in model:
        return None
    revision = ""
    cpuinfo = _read_text(files, os.path.join(proc_root, "cpuinfo")) or ""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Revision":
            revision = value.strip()
    return BoardInfo(model, revision)


def pi_families(readings: PiReadings | None, board: BoardInfo | None) -> list[MetricFamily]:
    """The ``rpi_*`` families for what is known."""
    out: list[MetricFamily] = []
    if board is not None:
        info = MetricFamily("rpi_board_info", "gauge", "Raspberry Pi board model and revision")
        info.add(1, {"model": board.model, "revision": board.revision})
        out.append(info)
    if readings is None:
        return out
    if readings.throttled is not None:
        mask = MetricFamily(
            "rpi_throttled_mask", "gauge", "Raw bit mask from vcgencmd get_throttled"
        )
        mask.add(readings.throttled)
        cond = MetricFamily(
            "rpi_throttle_condition",
            "gauge",
            "1 if the throttling condition is active now, or has occurred since boot",
        )
        for (condition, scope), active in decode_throttled(readings.throttled).items():
            cond.add(1 if active else 0, {"condition": condition, "scope": scope})
        out += [mask, cond]
    if readings.soc_temperature is not None:
        temp = MetricFamily(
            "rpi_soc_temperature_celsius", "gauge", "SoC temperature from vcgencmd measure_temp"
        )
        temp.add(readings.soc_temperature)
        out.append(temp)
    if readings.clocks:
        clocks = MetricFamily(
            "rpi_clock_frequency_hertz", "gauge", "Clock frequency from vcgencmd measure_clock"
        )
        for component, hz in sorted(readings.clocks.items()):
            clocks.add(hz, {"component": component})
        out.append(clocks)
    if readings.voltages:
        volts = MetricFamily("rpi_voltage_volts", "gauge", "Voltage from vcgencmd measure_volts")
        for component, v in sorted(readings.voltages.items()):
            volts.add(v, {"component": component})
        out.append(volts)
    return out
