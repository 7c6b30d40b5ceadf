"""Power: switch nodes on and off through PoE switches (SNMP v1/v2c/v3) and other drivers.

``base`` (driver contract) · ``snmp`` (the one SNMP client) · ``profiles`` and ``poe`` (the
``snmp-poe`` driver) · ``command``, ``webhook``, ``manual`` (other drivers) · ``registry`` ·
``targets`` and ``controller`` (retries, cycle, staggering, records) · ``bridge`` (MAC → port) ·
``service`` (the manager's part).
"""

from piman.power.base import ManualActionRequired, PortReading, PowerDriver, PowerState

__all__ = ["ManualActionRequired", "PortReading", "PowerDriver", "PowerState"]
