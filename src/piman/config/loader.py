"""Load a configuration file (piman's YAML or the seed's) and hosts.csv into a :class:`Config`.

Every failure becomes a :class:`~piman.errors.ConfigError` listing one :class:`ConfigProblem` per
problem — file, field path, what was wrong and what was expected — whatever the input: a missing,
empty, binary or non-YAML file, wrong types, or inventory that contradicts itself.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from piman.config.legacy import convert_legacy, is_legacy, parse_hosts_csv
from piman.config.models import Config, HostReservation, check_inventory
from piman.errors import ConfigError, ConfigProblem

__all__ = ["default_config_path", "load_config", "load_hosts", "parse_config"]

MAX_CONFIG_BYTES = 4 * 1024 * 1024


def default_config_path() -> Path:
    """``$PIMAN_CONFIG``, else ``./piman.yaml``."""
    return Path(os.environ.get("PIMAN_CONFIG", "piman.yaml"))


def _read_text(path: Path, what: str) -> str:
    source = str(path)
    try:
        if path.is_dir():
            raise ConfigError([ConfigProblem(source, "", f"is a directory, expected a {what}")])
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [ConfigProblem(source, "", f"is {size} bytes; a {what} is at most 4 MiB")]
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(source, "", "no such file")]) from None
    except PermissionError:
        raise ConfigError(
            [ConfigProblem(source, "", "cannot be read (permission denied)")]
        ) from None
    except OSError as err:
        raise ConfigError([ConfigProblem(source, "", f"cannot be read ({err.strerror})")]) from None
    if b"\x00" in raw:
        raise ConfigError([ConfigProblem(source, "", f"is a binary file, expected a {what}")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            [ConfigProblem(source, "", f"is not UTF-8 text (byte {err.start}); expected a {what}")]
        ) from None


def load_hosts(path: Path) -> list[HostReservation]:
    """Read a hosts.csv file of ``mac,ip[,hostname]`` reservations."""
    text = _read_text(path, "CSV file of mac,ip[,hostname]")
    rows, problems = parse_hosts_csv(text, str(path))
    if problems:
        raise ConfigError(problems)
    return [HostReservation.model_validate(row) for row in rows]


def load_config(path: Path, hosts: Path | None = None) -> Config:
    """Read, validate and cross-check a configuration file.

    ``hosts`` (a hosts.csv) overrides ``dhcp.hosts_file``; a relative ``hosts_file`` is taken
    relative to the configuration file.
    """
    text = _read_text(path, "YAML configuration file")
    return parse_config(text, str(path), hosts=hosts, base_dir=path.parent)


def parse_config(
    text: str, source: str, *, hosts: Path | None = None, base_dir: Path | None = None
) -> Config:
    """Validate configuration text; see :func:`load_config`."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [ConfigProblem(source, where, f"not valid YAML: {err.problem}")]
        ) from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow: one line
        what = f" #x{err.character:04x}" if isinstance(err.character, int) else ""
        where = f"character {err.position + 1}"
        raise ConfigError(
            [ConfigProblem(source, where, f"not valid YAML: character{what} is not allowed")]
        ) from None
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ConfigError([ConfigProblem(source, "", f"not valid YAML: {detail}")]) from None
    if data is None:
        raise ConfigError(
            [ConfigProblem(source, "", "is empty; expected a mapping with at least `manager:`")]
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            [
                ConfigProblem(
                    source,
                    "",
                    f"expected a mapping of sections (manager, dhcp, …), got {_kind(data)}",
                )
            ]
        )
    data = {str(k): v for k, v in data.items()}

    paths: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    if is_legacy(data):
        data, paths, problems = convert_legacy(data, source)
        _seed_files(data, hosts, base_dir)

    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        problems.extend(_translate(err, source, paths))
        raise ConfigError(_dedupe(problems)) from None
    if problems:
        raise ConfigError(problems)

    hosts_path = hosts
    hosts_source = "--hosts"
    if hosts_path is None and config.dhcp is not None and config.dhcp.hosts_file is not None:
        hosts_path = config.dhcp.hosts_file
        if not hosts_path.is_absolute() and base_dir is not None:
            hosts_path = base_dir / hosts_path
        hosts_source = "dhcp.hosts_file"
    if hosts_path is not None:
        try:
            reservations = load_hosts(hosts_path)
        except ConfigError as err:
            if err.problems and err.problems[0].message == "no such file":
                raise ConfigError(
                    [ConfigProblem(source, hosts_source, f"{hosts_path}: no such file")]
                ) from None
            raise
        config, merge_problems = _merge_hosts(config, reservations, str(hosts_path))
        problems.extend(merge_problems)

    for field_path, message in check_inventory(config):
        problems.append(ConfigProblem(source, _seed_path(field_path, paths), message))
    if problems:
        raise ConfigError(problems)
    return config


def _seed_files(data: dict[str, Any], hosts: Path | None, base_dir: Path | None) -> None:
    """Where the seed kept its files: ``hosts.csv`` and ``install/boot`` (the TFTP root, with
    ``rootfs.tgz`` in it), beside the configuration or in the working directory."""
    places = [p for p in (base_dir, Path.cwd()) if p is not None]
    if hosts is None:
        found = next((p / "hosts.csv" for p in places if (p / "hosts.csv").is_file()), None)
        if found is not None:
            data["dhcp"]["hosts_file"] = str(found.resolve())
    boot = next((p / "install" / "boot" for p in places if (p / "install" / "boot").is_dir()), None)
    if boot is not None:
        data["tftp"]["root"] = str(boot.resolve())
        data["deploy"]["seed_rootfs"] = str((boot / "rootfs.tgz").resolve())


def _merge_hosts(
    config: Config, reservations: list[HostReservation], source: str
) -> tuple[Config, list[ConfigProblem]]:
    """Give MAC-less nodes the MAC of the reservation with their IP; keep the rest as hosts."""
    problems: list[ConfigProblem] = []
    nodes = [n.model_copy() for n in config.nodes]
    by_ip = {n.ip: n for n in nodes if n.ip is not None}
    by_mac = {n.mac: n for n in nodes if n.mac is not None}
    for res in reservations:
        node = by_mac.get(res.mac)
        if node is not None:
            if node.ip is not None and node.ip != res.ip:
                problems.append(
                    ConfigProblem(
                        source,
                        res.mac,
                        f"reserves {res.ip} but node {node.name!r} with this MAC has {node.ip}",
                    )
                )
            continue
        node = by_ip.get(res.ip)
        if node is not None:
            if node.mac is None:
                node.mac = res.mac
                node.hostname = node.hostname or res.hostname
                by_mac[res.mac] = node
            else:
                problems.append(
                    ConfigProblem(
                        source,
                        res.mac,
                        f"reserves {res.ip}, already the address of node {node.name!r} "
                        f"({node.mac})",
                    )
                )
    hosts = [r for r in reservations if r.mac not in by_mac]
    return config.model_copy(update={"nodes": nodes, "hosts": hosts}), problems


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _loc_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in {"str", "int", "float", "function-after", "function-before"}:
            continue  # union member tags and validator wrappers: not a field
        else:
            out += f".{part}" if out else part
    return out


def _seed_path(path: str, paths: Mapping[str, str]) -> str:
    if path in paths:
        return paths[path]
    for new, old in paths.items():
        if path.startswith(new + "."):
            return old + path[len(new) :]
    return path


def _message(error: ErrorDetails, loc: str) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "ip_v4_address":
        return f"{value!r} is not an IPv4 address"
    if kind == "ip_v4_network":
        return f"{value!r} is not an IPv4 network (expected e.g. 198.18.0.0/24)"
    if kind == "missing":
        return "missing; this field is required"
    if kind == "extra_forbidden":
        return "unknown field" + _suggest(loc)
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx.get('expected', '')}"
    if kind in {"int_type", "int_parsing", "int_from_float"}:
        return f"{value!r} is not a whole number"
    if kind in {"float_type", "float_parsing"}:
        return f"{value!r} is not a number"
    if kind in {"bool_type", "bool_parsing"}:
        return f"{value!r} is not true or false"
    if kind in {"string_type"}:
        return f"{value!r} is not a string"
    if kind in {"model_type", "dict_type", "model_attributes_type"}:
        return f"expected a mapping, got {_kind(value)}"
    if kind == "list_type":
        return f"expected a list, got {_kind(value)}"
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
        bound = next(iter(ctx.values()), "")
        words = {
            "greater_than_equal": "at least",
            "less_than_equal": "at most",
            "greater_than": "more than",
            "less_than": "less than",
        }
        return f"{value!r} is out of range; expected {words[kind]} {bound}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return error["msg"]


def _suggest(loc: str) -> str:
    field = loc.rsplit(".", 1)[-1]
    names = _known_fields(loc)
    close = difflib.get_close_matches(field, names, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    if names:
        return f"; expected one of {', '.join(sorted(names))}"
    return ""


def _known_fields(loc: str) -> list[str]:
    model: type[BaseModel] | None = Config
    parts = [p.split("[")[0] for p in loc.split(".")[:-1]]
    for part in parts:
        if model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _translate(err: ValidationError, source: str, paths: Mapping[str, str]) -> list[ConfigProblem]:
    problems = []
    for error in err.errors():
        loc = _loc_path(tuple(error["loc"]))
        problems.append(ConfigProblem(source, _seed_path(loc, paths), _message(error, loc)))
    return problems


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out
