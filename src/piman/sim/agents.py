"""Demo: virtual Pis' agents: real agent apps on 127.0.0.1 with a simulated machine behind them.

Theory of operation. :class:`SimulatedPi` is an agent *source* (the same interface as the real
:class:`~piman.monitor.agent.collectors.LinuxNode`): it integrates a load model over time into
node_exporter's counters (CPU seconds per mode, network and disk bytes), and derives the SoC
temperature from the load, an ambient level and, on a few "hot" Pis (every fifth, from the
third), a slow upward drift as from a failing fan. Its ``get_throttled`` mask follows the
temperature as on a real Pi: at 80 °C the ARM is capped and throttled (bits 1 and 2, and their
"since boot" bits 17 and 18, which stay set until the next power cycle). All randomness comes from
a generator seeded with the Pi's name, and time is passed in, so a scenario replays identically.

:class:`SimulatedAgents` gives every virtual Pi an :class:`AgentStreamServer` on its
``agent_port`` while the Pi is powered (after ``boot_seconds``), and closes it, dropping open
connections, when the power goes; a Pi that comes back has rebooted (counters restart, boot time
moves). The demo and tests steer Pis with :func:`heat` (pin a temperature), :func:`set_load` and
:func:`undervolt` while :func:`run_agents` runs; from another process, the same through the
virtual Pi's own agent port (simulator only, never in ``piman agent``)::

    curl -X POST 'http://127.0.0.1:<agent_port>/sim/heat?celsius=85'    # empty value: unpin
    curl -X POST 'http://127.0.0.1:<agent_port>/sim/load?percent=97'
    curl -X POST 'http://127.0.0.1:<agent_port>/sim/undervolt?on=1'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from piman.errors import NotFoundError
from piman.monitor.agent.aio import AgentStreamServer
from piman.monitor.agent.app import AgentApp
from piman.monitor.agent.exposition import MetricFamily
from piman.monitor.agent.http import Request, Response
from piman.monitor.agent.pi import BoardInfo, PiReadings, pi_families
from piman.monitor.agent.procfs import CPU_MODES

if TYPE_CHECKING:
    from piman.sim.pi import VirtualPi

__all__ = [
    "SimulatedAgentApp",
    "SimulatedAgents",
    "SimulatedPi",
    "heat",
    "run_agents",
    "set_load",
    "simulated",
    "undervolt",
]

logger = logging.getLogger(__name__)

GIB = 1024**3
THROTTLE_AT = 80.0
_MODELS = {  # model family → (device-tree model, cores, RAM bytes, ARM Hz, machine)
    3: ("Raspberry Pi 3 Model B Plus Rev 1.3", 4, 1 * GIB, 1.4e9, "armv7l"),
    4: ("Raspberry Pi 4 Model B Rev 1.4", 4, 4 * GIB, 1.8e9, "aarch64"),
    5: ("Raspberry Pi 5 Model B Rev 1.0", 4, 8 * GIB, 2.4e9, "aarch64"),
}
_RUNNING: dict[str, SimulatedPi] = {}


def _gauge(
    name: str, help_: str, value: float, labels: dict[str, str] | None = None
) -> MetricFamily:
    fam = MetricFamily(name, "gauge", help_)
    fam.add(value, labels)
    return fam


def _counter(
    name: str, help_: str, value: float, labels: dict[str, str] | None = None
) -> MetricFamily:
    fam = MetricFamily(name, "counter", help_)
    fam.add(value, labels)
    return fam


class SimulatedPi:
    """A virtual Pi's machine state, advanced on every read; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        family: int = 4,
        revision: int = 0xC03114,
        hot: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.clock = clock
        self.hot = hot
        model, self.cores, self.mem_total, self.arm_hz, self.machine = _MODELS.get(
            family, _MODELS[4]
        )
        self.board = BoardInfo(model, f"{revision:x}")
        self._rng = random.Random(name)
        self.base_load = self._rng.uniform(0.05, 0.35)
        self.ambient = self._rng.uniform(34.0, 40.0)
        self.pinned_temperature: float | None = None
        self.pinned_load: float | None = None
        self.under_voltage = False
        self.boot()

    def boot(self) -> None:
        """Power-on: counters restart, the boot time is now, the sticky throttle bits clear."""
        now = self.clock()
        self.boot_time = float(int(now))
        self._last = now
        self.load = self.base_load
        self.temperature = self.ambient + 30 * self.load
        self.drift = 0.0
        self.cpu_seconds = [[0.0] * len(CPU_MODES) for _ in range(self.cores)]
        self.net = [0.0, 0.0]  # receive, transmit bytes
        self.disk = [0.0, 0.0]  # read, written bytes
        self.sticky = 0
        self.mem_used = self.mem_total * self._rng.uniform(0.15, 0.35)
        self.disk_size = 29.0 * GIB
        self.disk_used = self.disk_size * self._rng.uniform(0.2, 0.6)

    # -- the model -------------------------------------------------------------------------

    def advance(self) -> None:
        """Integrate the model up to the clock's now."""
        now = self.clock()
        dt = max(0.0, now - self._last)
        self._last = now
        if dt == 0:
            return
        rng = self._rng
        if self.pinned_load is not None:
            self.load = self.pinned_load
        else:
            target = self.base_load + rng.gauss(0, 0.08)
            self.load = min(1.0, max(0.01, self.load + (target - self.load) * min(1.0, dt / 10)))
        for cpu in self.cpu_seconds:
            busy = min(1.0, max(0.0, self.load + rng.gauss(0, 0.03)))
            cpu[0] += busy * dt * 0.70  # user
            cpu[2] += busy * dt * 0.25  # system
            cpu[6] += busy * dt * 0.05  # softirq
            cpu[3] += (1 - busy) * dt * 0.99  # idle
            cpu[4] += (1 - busy) * dt * 0.01  # iowait
        self.net[0] += dt * rng.uniform(2e3, 2e4) * (1 + 10 * self.load)
        self.net[1] += dt * rng.uniform(1e3, 1e4) * (1 + 10 * self.load)
        self.disk[0] += dt * rng.uniform(0, 2e4)
        self.disk[1] += dt * rng.uniform(1e3, 5e4) * (1 + self.load)
        self.mem_used = min(
            self.mem_total * 0.9,
            max(self.mem_total * 0.1, self.mem_used * (1 + rng.gauss(0, 0.002))),
        )
        if self.hot:
            self.drift = min(30.0, self.drift + 0.02 * dt)
        target_temp = self.ambient + 30 * self.load + self.drift
        self.temperature += (target_temp - self.temperature) * min(1.0, dt / 20)

    @property
    def soc_temperature(self) -> float:
        t = self.pinned_temperature if self.pinned_temperature is not None else self.temperature
        return round(t, 1)

    def throttle_mask(self) -> int:
        """The ``get_throttled`` mask now; "since boot" bits accumulate until :meth:`boot`."""
        now = 0
        if self.under_voltage:
            now |= 0x1
        if self.soc_temperature >= THROTTLE_AT:
            now |= 0x2 | 0x4
        self.sticky |= now << 16
        return now | self.sticky

    # -- the source interface ----------------------------------------------------------------

    def events(self) -> dict[str, Any]:
        self.advance()
        return {
            "time": self.clock(),
            "cpu_percent": round(100 * self.load, 1),
            "memory_percent": round(100 * self.mem_used / self.mem_total, 1),
            "disk_percent": round(100 * self.disk_used / self.disk_size, 1),
            "num_pids": 120 + int(40 * self.load),
            "temperature_celsius": self.soc_temperature,
            "throttled": self.throttle_mask(),
        }

    def collect(self) -> list[MetricFamily]:
        self.advance()
        now = self.clock()
        mask = self.throttle_mask()
        fams = [
            _gauge(
                "node_uname_info",
                "Labeled system information as provided by the uname system call.",
                1,
                {
                    "domainname": "(none)",
                    "machine": self.machine,
                    "nodename": self.name,
                    "release": "6.6.51+rpt-rpi-v8",
                    "sysname": "Linux",
                    "version": "#1 SMP PREEMPT Debian 1:6.6.51-1+rpt3 (2024-10-08)",
                },
            ),
            _gauge("node_boot_time_seconds", "Node boot time, in unixtime.", self.boot_time),
            _gauge("node_time_seconds", "System time in seconds since epoch (1970).", now),
            _gauge("node_load1", "1m load average.", round(self.load * self.cores, 2)),
            _gauge("node_load5", "5m load average.", round(self.base_load * self.cores, 2)),
            _gauge("node_load15", "15m load average.", round(self.base_load * self.cores, 2)),
        ]
        cpu = MetricFamily(
            "node_cpu_seconds_total", "counter", "Seconds the CPUs spent in each mode."
        )
        for i, modes in enumerate(self.cpu_seconds):
            for mode, value in zip(CPU_MODES, modes, strict=True):
                cpu.add(round(value, 2), {"cpu": str(i), "mode": mode})
        fams.append(cpu)
        free = self.mem_total - self.mem_used
        for key, value in (
            ("MemTotal", self.mem_total),
            ("MemFree", free * 0.6),
            ("MemAvailable", free),
            ("Buffers", free * 0.05),
            ("Cached", free * 0.3),
            ("SReclaimable", free * 0.04),
            ("Slab", free * 0.06),
            ("PageTables", 8e6),
            ("SwapCached", 0),
            ("SwapTotal", 512 * 1024**2),
            ("SwapFree", 512 * 1024**2),
        ):
            fams.append(
                _gauge(
                    f"node_memory_{key}_bytes", f"Memory information field {key}_bytes.", int(value)
                )
            )
        fs = {"device": "/dev/mmcblk0p2", "fstype": "ext4", "mountpoint": "/"}
        boot = {"device": "/dev/mmcblk0p1", "fstype": "vfat", "mountpoint": "/boot/firmware"}
        avail = self.disk_size - self.disk_used
        for suffix, root_v, boot_v in (
            ("size_bytes", self.disk_size, 512 * 1024**2),
            ("free_bytes", avail + 0.05 * self.disk_size, 440 * 1024**2),
            ("avail_bytes", avail, 440 * 1024**2),
        ):
            fam = MetricFamily(f"node_filesystem_{suffix}", "gauge", f"Filesystem {suffix}.")
            fam.add(int(root_v), fs)
            fam.add(int(boot_v), boot)
            fams.append(fam)
        for direction, value in (("receive", self.net[0]), ("transmit", self.net[1])):
            fams.append(
                _counter(
                    f"node_network_{direction}_bytes_total",
                    f"Network device statistic {direction}_bytes.",
                    int(value),
                    {"device": "eth0"},
                )
            )
        for name, value in (
            ("read_bytes_total", self.disk[0]),
            ("written_bytes_total", self.disk[1]),
        ):
            fams.append(
                _counter(f"node_disk_{name}", f"Disk {name}.", int(value), {"device": "mmcblk0"})
            )
        chip = {"chip": "thermal_thermal_zone0", "sensor": "temp1"}
        fams += [
            _gauge(
                "node_hwmon_temp_celsius",
                "Hardware monitor for temperature (input)",
                self.soc_temperature,
                chip,
            ),
            _gauge(
                "node_hwmon_chip_names",
                "Annotation metric for human-readable chip names",
                1,
                {"chip": "thermal_thermal_zone0", "chip_name": "cpu_thermal"},
            ),
            _gauge(
                "node_thermal_zone_temp",
                "Zone temperature in Celsius",
                self.soc_temperature,
                {"type": "cpu_thermal", "zone": "0"},
            ),
        ]
        readings = PiReadings(
            True,
            mask,
            self.soc_temperature,
            {"arm": self.arm_hz * (0.6 if mask & 0x2 else 1.0), "core": 5e8},
            {"core": 0.85},
        )
        fams += pi_families(readings, self.board)
        success = MetricFamily(
            "node_scrape_collector_success",
            "gauge",
            "node_exporter: Whether a collector succeeded.",
        )
        for collector in (
            "cpu",
            "meminfo",
            "filesystem",
            "netdev",
            "diskstats",
            "hwmon",
            "vcgencmd",
        ):
            success.add(1, {"collector": collector})
        fams.append(success)
        return fams


def _lookup(name: str) -> SimulatedPi:
    try:
        return _RUNNING[name]
    except KeyError:
        raise NotFoundError(f"no simulated agent named {name!r} is running") from None


def simulated(name: str) -> SimulatedPi:
    """The running simulated Pi called ``name`` (NotFoundError if none)."""
    return _lookup(name)


def heat(name: str, celsius: float | None) -> None:
    """Pin Pi ``name``'s SoC temperature to ``celsius`` (None: back to the model)."""
    _lookup(name).pinned_temperature = celsius


def set_load(name: str, percent: float | None) -> None:
    """Pin Pi ``name``'s CPU load, 0–100 % (None: back to the model)."""
    _lookup(name).pinned_load = None if percent is None else max(0.0, min(1.0, percent / 100))


def undervolt(name: str, on: bool = True) -> None:
    """Report (or stop reporting) under-voltage on Pi ``name``, as a weak PSU would."""
    _lookup(name).under_voltage = on


class SimulatedAgentApp(AgentApp):
    """The agent app plus the simulator's ``POST /sim/{heat,load,undervolt}`` controls."""

    def __init__(self, source: SimulatedPi) -> None:
        super().__init__(source)
        self.pi = source

    def handle(self, request: Request) -> Response:
        if not request.path.startswith("/sim/"):
            return super().handle(request)
        if request.method != "POST":
            return Response(405, b"POST only\n", headers=(("Allow", "POST"),))
        query = {k: v[-1] for k, v in parse_qs(urlsplit(request.target).query).items()}
        try:
            self._control(request.path, query)
        except (KeyError, ValueError) as err:
            return Response(400, f"bad control: {err}\n".encode())
        logger.info("[pi=%s] simulator control %s", self.pi.name, request.target)
        return Response(200, json.dumps(self.pi.events()).encode(), "application/json")

    def _control(self, path: str, query: dict[str, str]) -> None:
        if path == "/sim/heat":
            value = query.get("celsius", "")
            self.pi.pinned_temperature = float(value) if value else None
        elif path == "/sim/load":
            value = query.get("percent", "")
            self.pi.pinned_load = max(0.0, min(1.0, float(value) / 100)) if value else None
        elif path == "/sim/undervolt":
            self.pi.under_voltage = query.get("on", "1") not in ("0", "false", "")
        else:
            raise KeyError(path)


class SimulatedAgents:
    """An agent per virtual Pi on 127.0.0.1:``agent_port``, up while the Pi is powered."""

    def __init__(
        self, pis: Iterable[VirtualPi], *, boot_seconds: float = 3.0, poll: float = 0.2
    ) -> None:
        self.pis = list(pis)
        self.boot_seconds = boot_seconds
        self.poll = poll
        self.sources: dict[str, SimulatedPi] = {}
        self.servers: dict[str, AgentStreamServer] = {}
        self._powered_since: dict[str, float] = {}
        self._boots: dict[str, int] = {}
        for index, pi in enumerate(self.pis):
            source = SimulatedPi(
                pi.name, family=pi.model.family, revision=pi.revision, hot=index % 5 == 2
            )
            self.sources[pi.name] = source
            self.servers[pi.name] = AgentStreamServer(
                SimulatedAgentApp(source), "127.0.0.1", pi.agent_port
            )

    async def step(self, now: float) -> None:
        """Start or stop agents to match the Pis' power (one pass)."""
        for pi in self.pis:
            server = self.servers[pi.name]
            if self._boots.get(pi.name, pi.boots) != pi.boots and server.serving:
                await server.close()  # power-cycled between two passes: it boots again
                self._powered_since.pop(pi.name, None)
                logger.info("[pi=%s] agent down (power cycle)", pi.name)
            self._boots[pi.name] = pi.boots
            if pi.powered.is_set() and not pi.installing:
                since = self._powered_since.setdefault(pi.name, now)
                if not server.serving and now - since >= self.boot_seconds:
                    self.sources[pi.name].boot()
                    try:
                        await server.start()
                    except OSError as err:
                        logger.warning(
                            "[pi=%s] agent cannot listen on %d: %s", pi.name, pi.agent_port, err
                        )
                        continue
                    logger.info("[pi=%s] agent up on 127.0.0.1:%d", pi.name, pi.agent_port)
            else:
                self._powered_since.pop(pi.name, None)
                if server.serving:
                    await server.close()
                    logger.info(
                        "[pi=%s] agent down (%s)",
                        pi.name, "installing" if pi.installing else "no power",
                    )  # fmt: skip

    async def run(self) -> None:
        """Follow the Pis' power until cancelled; registers the Pis for :func:`heat` & co."""
        _RUNNING.update(self.sources)
        try:
            while True:
                await self.step(time.monotonic())
                await asyncio.sleep(self.poll)
        finally:
            for name in self.sources:
                _RUNNING.pop(name, None)
            for server in self.servers.values():
                with contextlib.suppress(Exception):
                    await server.close()


async def run_agents(pis: Sequence[VirtualPi]) -> None:
    """Run the virtual Pis' agents until cancelled."""
    await SimulatedAgents(pis).run()
