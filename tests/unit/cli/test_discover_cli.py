"""``piman discover``'s refusals: bad input is one line and exit 2, before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from piman.cli.app import app

runner = CliRunner()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "piman.yaml"
    path.write_text(f"manager: {{address: 198.18.0.1, data_dir: {tmp_path}}}\n")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--subnet", "10.0.0.0/8", "--sweep"],
            "10.0.0.0/8 has 16777214 addresses; a sweep covers a /20 (4094) at most without "
            "--force",
        ),
        (["--subnet", "10.0.0.300/24"], "--subnet '10.0.0.300/24' is not an IPv4 network"),
        (["--accept", "dc:a6:32:00:00"], "--accept dc:a6:32:00:00: 'dc:a6:32:00:00' is not a MAC"),
        (["--accept", "dc:a6:32:00:00:01=no good"], "'no good' is not a valid name"),
        (["--rate", "5000", "--sweep"], "Invalid value for '--rate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(config: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["discover", "-c", str(config), *args], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_help_has_examples() -> None:
    result = runner.invoke(app, ["discover", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "piman discover --url http://127.0.0.1:8000 --sweep --mdns 3" in result.stdout
