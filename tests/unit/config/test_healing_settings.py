"""The healing: section (config/healing.py) and whether the manager builds the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from piman.config.models import Config
from piman.context import AppContext
from piman.inventory import healing_service


def config(tmp_path: Path, healing: Any = None) -> Config:
    data: dict[str, Any] = {"manager": {"address": "198.18.0.1", "data_dir": str(tmp_path)}}
    if healing is not None:
        data["healing"] = healing
    return Config.model_validate(data)


def test_durations_and_defaults(tmp_path: Path) -> None:
    c = config(tmp_path, {"policies": [{"name": "racks", "down_for": "2m", "cycle_wait": 90}]})
    assert c.healing is not None
    assert (c.healing.max_concurrent, c.healing.max_fraction, c.healing.alerts) == (
        2,
        0.5,
        ["NodeDown"],
    )
    [p] = c.healing.policies
    assert (p.nodes, p.down_for, p.cycles, p.cycle_wait, p.reinstall, p.reinstall_reserved) == (
        ["all"],
        120.0,
        2,
        90.0,
        True,
        False,
    )
    assert p.reinstall_wait == 1800.0


@pytest.mark.parametrize(
    ("healing", "says"),
    [
        ({"policies": [{"name": "a"}, {"name": "a"}]}, "two healing policies are named 'a'"),
        ({"policies": [{"name": "a", "down_for": 0}]}, "down_for must be more than 0 s"),
        ({"max_fraction": 0}, "greater than 0"),
        ({"max_fraction": 1.5}, "less than or equal to 1"),
        ({"max_concurrent": 0}, "greater than or equal to 1"),
        ({"policies": [{"name": "a", "cycles": -1}]}, "greater than or equal to 0"),
        ({"policies": [{"name": "a", "nodes": []}]}, "at least 1 item"),
        ({"policies": [{"name": "a", "reboot": True}]}, "Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(
    tmp_path: Path, healing: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError, match=says):
        config(tmp_path, healing)


@pytest.mark.parametrize(
    ("healing", "built"),
    [
        (None, False),  # absent: off
        ({"policies": [{"name": "a"}]}, True),
        ({"enabled": False, "policies": [{"name": "a"}]}, False),
        ({"policies": []}, False),  # nothing to do
    ],
)
def test_the_service_runs_only_when_a_policy_is_on(
    tmp_path: Path, healing: dict[str, Any] | None, built: bool
) -> None:
    ctx = AppContext(config=config(tmp_path, healing), store=None, metrics=CollectorRegistry())  # type: ignore[arg-type]
    result = healing_service.build(ctx)
    assert (result is not None) is built
    if result is not None:
        assert [s.name for s in result.services] == ["healing"]
