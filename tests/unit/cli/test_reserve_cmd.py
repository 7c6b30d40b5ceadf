"""`piman reserve` and friends before any manager is asked: when a start is, bad input as one
line with exit 2, and what `piman config check` says of the reservations section."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from piman.cli.app import app
from piman.cli.reserve_cmd import parse_start

runner = CliRunner()
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("+30m", NOW + timedelta(minutes=30)),
        ("in 2h", NOW + timedelta(hours=2)),
        ("2026-12-06T15:00:00+01:00", datetime(2026, 12, 6, 14, 0, tzinfo=UTC)),
        ("2026-12-07T08:00Z", datetime(2026, 12, 7, 8, 0, tzinfo=UTC)),
    ],
)
def test_start_times(text: str, expected: datetime) -> None:
    assert parse_start(text, NOW) == expected


def test_a_time_of_day_is_the_next_one_in_local_time() -> None:
    local = NOW.astimezone()
    later = (local + timedelta(hours=1)).strftime("%H:%M")
    earlier = (local - timedelta(hours=1)).strftime("%H:%M")
    assert parse_start(later, NOW) == NOW + timedelta(hours=1)
    assert parse_start(earlier, NOW) == NOW + timedelta(hours=23)


@pytest.mark.parametrize("text", ["soon", "25:00", "+forever", "2026-13-01"])
def test_bad_starts_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_start(text, NOW)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["reserve", "pi1"], "say how long with --for"),
        (["reserve", "pi1", "--for", "soon"], "--for: 'soon' is not a duration"),
        (["reserve", "pi1", "--for", "0s"], "--for: give more than 0 s"),
        (["reserve", "--for", "1h"], "name nodes, or give --count N"),
        (["reserve", "pi1", "--count", "2", "--for", "1h"], "not both"),
        (["reserve", "pi1", "--for", "1h", "--start", "later"], "--start: 'later' is not a start"),
        (["reserve", "pi1", "--for", "1h", "--ssh-key", "/nonexistent.pub"], "--ssh-key"),
        (["extend", "3"], "say how much longer with --by"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = runner.invoke(app, [*args, "--url", "http://127.0.0.1:1"], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_config_check_shows_the_reservations_section(tmp_path: Path) -> None:
    config = tmp_path / "piman.yaml"
    config.write_text(
        "manager: {address: 198.18.0.1}\n"
        "monitoring: {notify: ['mailtos://u:secret@smtp.lab?from=p@lab']}\n"
        "reservations: {buffer: 5m, warnings: [30m], unused_after: null,\n"
        "  limits: {max_nodes: 4, max_extensions: null}, users: {prof: {max_nodes: 40}}}\n"
    )
    result = runner.invoke(app, ["config", "check", str(config)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("reservations "))
    assert line == (
        "reservations on (release power_off; buffer 5m; warnings 30m; never unused; "
        "limits 4 nodes, 1w each, 30d ahead; mail mailtos://…; own limits for prof)"
    )
    assert "secret" not in result.output
    config.write_text("manager: {address: 198.18.0.1}\nreservations: {enabled: false}\n")
    result = runner.invoke(app, ["config", "check", str(config)], env={"COLUMNS": "400"})
    assert "reservations off" in result.output
    config.write_text("manager: {address: 198.18.0.1}\nreservations: {warnings: [0]}\n")
    result = runner.invoke(app, ["config", "check", str(config)], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "reservations.warnings" in result.output


def test_user_email_sets_and_clears_the_address_warnings_go_to(tmp_path: Path) -> None:
    config = tmp_path / "piman.yaml"
    config.write_text(f"manager: {{address: 198.18.0.1, data_dir: {tmp_path / 'data'}}}\n")
    c = ["-c", str(config)]
    assert (
        runner.invoke(app, ["user", "add", "ann", "--role", "user", "--generate", *c]).exit_code
        == 0
    )
    done = runner.invoke(app, ["user", "email", "ann", "ann@lab.org", *c])
    assert done.exit_code == 0, done.output
    assert done.output == "ann: ann@lab.org\n"
    listed = runner.invoke(app, ["user", "list", "-o", "json", *c])
    assert '"email": "ann@lab.org"' in listed.output
    bad = runner.invoke(app, ["user", "email", "ann", "ann at lab", *c], env={"COLUMNS": "200"})
    assert bad.exit_code == 2
    assert "'ann at lab' is not an e-mail address" in bad.output
    cleared = runner.invoke(app, ["user", "email", "ann", *c])
    assert cleared.output == "ann: no e-mail address\n"
    assert '"email": null' in runner.invoke(app, ["user", "list", "-o", "json", *c]).output
