"""The demo's virtual Pis serve real agents on 127.0.0.1 that follow their power."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable

import httpx
import pytest

from piman.errors import NotFoundError
from piman.sim import agents
from piman.sim.agents import SimulatedAgents
from piman.sim.pi import make_pi
from tests.integration.monitor import free_tcp_port
from tests.support import needs_tool


async def wait_until(check: Callable[[], Awaitable[bool]], attempts: int = 200) -> None:
    for _ in range(attempts):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true after {attempts * 0.05:.0f} s")


async def test_agents_follow_power_and_heat_reaches_metrics() -> None:
    pis = [make_pi(i, "rack1", i + 1, f"198.18.0.{i + 10}") for i in range(3)]
    for pi in pis:
        pi.agent_port = free_tcp_port()
    pis[0].powered.set()
    pis[1].powered.set()
    sim = SimulatedAgents(pis, boot_seconds=0.0, poll=0.05)
    task = asyncio.create_task(sim.run())
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def up(port: int) -> bool:
                try:
                    return (await client.get(f"http://127.0.0.1:{port}/events")).status_code == 200
                except httpx.TransportError:
                    return False

            async def down(port: int) -> bool:
                return not await up(port)

            await wait_until(lambda: up(pis[0].agent_port))
            await wait_until(lambda: up(pis[1].agent_port))
            assert not await up(pis[2].agent_port)  # not powered: nothing listens

            metrics = await client.get(f"http://127.0.0.1:{pis[0].agent_port}/metrics")
            assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert f'nodename="{pis[0].name}"' in metrics.text

            agents.heat(pis[1].name, 85.0)
            events = (await client.get(f"http://127.0.0.1:{pis[1].agent_port}/events")).json()
            assert events["temperature_celsius"] == 85.0
            assert events["throttled"] & 0x4
            text = (await client.get(f"http://127.0.0.1:{pis[1].agent_port}/metrics")).text
            assert 'rpi_throttle_condition{condition="throttled",scope="now"} 1' in text
            assert "rpi_soc_temperature_celsius 85" in text

            boot_before = agents.simulated(pis[0].name).boot_time
            pis[0].powered.clear()
            await wait_until(lambda: down(pis[0].agent_port))
            await asyncio.sleep(1.1)
            pis[0].powered.set()
            await wait_until(lambda: up(pis[0].agent_port))
            assert agents.simulated(pis[0].name).boot_time > boot_before  # it rebooted
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(NotFoundError):
        agents.heat(pis[1].name, 90.0)  # unregistered once the demo stops


async def test_simulated_metrics_pass_promtool_like_the_real_agent() -> None:
    needs_tool("promtool")
    pi = make_pi(4, "rack2", 5, "198.18.0.50")
    pi.agent_port = free_tcp_port()
    pi.powered.set()
    sim = SimulatedAgents([pi], boot_seconds=0.0, poll=0.05)
    task = asyncio.create_task(sim.run())
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(100):
                try:
                    body = (await client.get(f"http://127.0.0.1:{pi.agent_port}/metrics")).text
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            events = (await client.get(f"http://127.0.0.1:{pi.agent_port}/events")).json()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    lint = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=body, capture_output=True, text=True
    )
    problems = [ln for ln in (lint.stdout + lint.stderr).splitlines() if ln.strip()]
    assert [p for p in problems if not p.startswith("node_memory_")] == []
    assert set(events) == {
        "time", "cpu_percent", "memory_percent", "disk_percent", "num_pids",
        "temperature_celsius", "throttled",
    }  # fmt: skip
    assert json.dumps(events)


async def test_another_process_steers_a_virtual_pi_through_its_port() -> None:
    needs_tool("curl")
    pi = make_pi(7, "rack2", 8, "198.18.0.60")
    pi.agent_port = free_tcp_port()
    pi.powered.set()
    task = asyncio.create_task(SimulatedAgents([pi], boot_seconds=0.0, poll=0.05).run())
    base = f"http://127.0.0.1:{pi.agent_port}"

    async def curl(*args: str) -> str:
        out = await asyncio.create_subprocess_exec(
            "curl", "-s", "--max-time", "5", *args, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await out.communicate()
        return stdout.decode()

    try:
        for _ in range(100):
            if await curl(f"{base}/events"):
                break
            await asyncio.sleep(0.05)
        heated = json.loads(await curl("-X", "POST", f"{base}/sim/heat?celsius=86.5"))
        assert heated["temperature_celsius"] == 86.5
        assert heated["throttled"] & 0x4
        assert (
            json.loads(await curl("-X", "POST", f"{base}/sim/load?percent=97"))["cpu_percent"]
            == 97.0
        )
        assert json.loads(await curl("-X", "POST", f"{base}/sim/undervolt?on=1"))["throttled"] & 0x1
        cooled = json.loads(await curl("-X", "POST", f"{base}/sim/heat?celsius="))
        assert cooled["temperature_celsius"] < 80
        assert "405" in await curl("-o", "/dev/null", "-w", "%{http_code}", f"{base}/sim/heat")
        bad = await curl(
            "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", f"{base}/sim/heat?celsius=hot"
        )
        assert bad == "400"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
