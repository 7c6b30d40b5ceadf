"""Configuration: typed models, YAML loading, the seed's legacy format and hosts.csv."""

from piman.config.loader import default_config_path, load_config, load_hosts, parse_config
from piman.config.models import (
    Config,
    DatabaseSettings,
    HostReservation,
    ManagerSettings,
    NodeSettings,
    check_inventory,
)
from piman.config.monitoring import MonitoringSettings, RuleSettings
from piman.config.netboot import DhcpSettings, TftpSettings
from piman.config.power import SnmpSettings, SwitchSettings

__all__ = [
    "Config",
    "DatabaseSettings",
    "DhcpSettings",
    "HostReservation",
    "ManagerSettings",
    "MonitoringSettings",
    "NodeSettings",
    "RuleSettings",
    "SnmpSettings",
    "SwitchSettings",
    "TftpSettings",
    "check_inventory",
    "default_config_path",
    "load_config",
    "load_hosts",
    "parse_config",
]
