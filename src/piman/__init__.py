"""piman — a Raspberry Pi fleet manager.

Netboot (DHCP and TFTP), PoE power over SNMP, reinstall, fleet inventory and monitoring, from one
process. See DESIGN.md for the map; ``piman --help`` for the commands.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
