"""An overlay: a partial configuration in piman's format laid over a loaded one.

The seed format has no place for SNMP settings (community, version, ``snmp.host``/``port``) or
a data directory; an overlay adds them without rewriting the seed file::

    manager: {data_dir: /tmp/piman}
    switches:
      - address: 172.30.4.254          # or name: switch0
        snmp: {host: 127.0.0.1, port: 16161, community: private}

Mappings merge key by key; a ``switches`` entry merges into the configured switch with the same
``name`` (or, failing that, ``address``); ``nodes`` entries likewise by ``name``. The CLI reads
an overlay from ``--overlay FILE`` or ``$PIMAN_OVERLAY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from piman.config.models import Config, check_inventory
from piman.errors import ConfigError, ConfigProblem

__all__ = ["apply_overlay", "load_overlay"]


def _merge(base: Any, extra: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(extra, Mapping):
        out = dict(base)
        for key, value in extra.items():
            out[key] = _merge(base.get(key), value) if key in base else value
        return out
    return extra


def _merge_list(
    base: list[Any], extra: list[Any], keys: tuple[str, ...], source: str, where: str
) -> list[Any]:
    out = list(base)
    for i, item in enumerate(extra):
        if not isinstance(item, Mapping):
            raise ConfigError([ConfigProblem(source, f"{where}[{i}]", "expected a mapping")])
        for key in keys:
            if key in item:
                match = [j for j, b in enumerate(out) if str(b.get(key)) == str(item[key])]
                if match:
                    out[match[0]] = _merge(out[match[0]], item)
                    break
        else:
            if not any(key in item for key in keys):
                raise ConfigError(
                    [ConfigProblem(source, f"{where}[{i}]", f"needs one of {', '.join(keys)}")]
                )
            out.append(dict(item))
    return out


def apply_overlay(config: Config, overlay: Mapping[str, Any], source: str) -> Config:
    """``config`` with ``overlay`` laid over it, validated again; raises ConfigError."""
    data = config.model_dump()
    for key, value in overlay.items():
        if key == "switches" and isinstance(value, list):
            data["switches"] = _merge_list(
                data["switches"], value, ("name", "address"), source, "switches"
            )
        elif key == "nodes" and isinstance(value, list):
            data["nodes"] = _merge_list(data["nodes"], value, ("name",), source, "nodes")
        else:
            data[key] = _merge(data.get(key), value)
    try:
        merged = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(
            [
                ConfigProblem(source, ".".join(str(p) for p in e["loc"]), e["msg"])
                for e in err.errors()
            ]
        ) from None
    merged = merged.model_copy(update={"hosts": config.hosts})
    problems = [ConfigProblem(source, p, m) for p, m in check_inventory(merged)]
    if problems:
        raise ConfigError(problems)
    return merged


def load_overlay(config: Config, path: Path) -> Config:
    """Read an overlay file and apply it; raises ConfigError."""
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError([ConfigProblem(source, "", f"cannot be read ({err.strerror})")]) from None
    except yaml.YAMLError as err:
        raise ConfigError([ConfigProblem(source, "", f"not valid YAML: {err}")]) from None
    if data is None:
        return config
    if not isinstance(data, Mapping):
        raise ConfigError([ConfigProblem(source, "", "expected a mapping of sections")])
    return apply_overlay(config, data, source)
