"""Power: switch nodes on and off through PoE switches (SNMP v1/v2c/v3) and other drivers.

``base`` (driver contract) · ``snmp`` (the one SNMP client) · ``profiles`` and ``poe`` (the
``snmp-poe`` driver) · ``command``, ``webhook``, ``manual`` (other drivers) · ``registry`` ·
``targets`` and ``controller`` (retries, cycle, staggering, records) · ``service`` (what the
manager builds: the :class:`~piman.context.PowerHandle` and the status service).
"""

from piman.power.base import ManualActionRequired, PowerDriver

__all__ = ["ManualActionRequired", "PowerDriver"]
