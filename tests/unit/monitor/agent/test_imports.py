"""The agent stays light: importing it loads nothing of the manager's side."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "sqlalchemy",
    "fastapi",
    "pydantic",
    "starlette",
    "uvicorn",
    "typer",
    "rich",
    "jinja2",
    "httpx",
)

PROBE = """
import json, sys
import piman.monitor.agent.app, piman.monitor.agent.collectors, piman.monitor.agent.server
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
"""


def test_agent_imports_no_manager_dependencies() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True)
    loaded = set(json.loads(out.stdout))
    assert "piman" in loaded
    assert loaded.isdisjoint(FORBIDDEN), loaded & set(FORBIDDEN)
    # nor the heavy parts of the standard library and its allowed extras
    assert loaded.isdisjoint({"asyncio", "ssl", "http", "email", "prometheus_client", "psutil"})
