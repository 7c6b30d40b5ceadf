"""The node agent: this machine's metrics (node_exporter names, ``rpi_*``) and ``/events``.

Standard library only at run time, so that a Pi runs it in a few MB; nothing here imports the
manager's side. Entry points: ``piman agent`` (the CLI, which execs
``python -m piman.monitor.agent``) and :func:`piman.monitor.agent.run.main`.
"""

__all__ = [
    "aio",
    "app",
    "collectors",
    "devices",
    "exposition",
    "files",
    "http",
    "hwmon",
    "machine",
    "netstat",
    "pi",
    "process",
    "procfs",
    "run",
    "server",
]
