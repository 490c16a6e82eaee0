"""The command lines a newcomer meets first: `python -m bot --help`, `--version`, `bench --help`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from bot.__main__ import main
from bot.sandbox import fakeslack
from bot.sandbox.simulator import cli as simulator_cli

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m …args` with only the basics of an environment (no settings at all)."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(  # noqa: S603 - our own interpreter and modules
        [sys.executable, "-m", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_explains_the_commands_the_settings_and_where_to_read_on(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag]) == 0
    shown = capsys.readouterr().out
    for command in ("python -m bot check", "python -m bot demo", "python -m bot --version"):
        assert command in shown
    assert ".env" in shown and ".env.example" in shown
    assert str(ROOT / "README.md") in shown
    assert "KPS_BOT_CONFIG" not in shown and "toml" not in shown  # not there yet
    assert len(shown.splitlines()) < 30


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_check_help_says_what_check_does(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", flag]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m bot check")
    assert "auth.test" in shown and "KPS" in shown and "Exit status 0" in shown


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    result = run("bot", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"kps-bot {metadata.version('kps-bot')}\n"


def test_help_from_a_terminal_less_shell_needs_no_settings(tmp_path: Path) -> None:
    result = run("bot", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "python -m bot demo" in result.stdout and result.stderr == ""


def test_an_unknown_command_is_a_usage_error_that_points_at_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["chek"]) == 2
    assert "python -m bot --help" in capsys.readouterr().err


@pytest.mark.parametrize(
    "parser",
    [simulator_cli.build_parser(), fakeslack.build_parser()],
    ids=["simulator", "fakeslack"],
)
def test_every_sandbox_option_says_what_it_is(parser: argparse.ArgumentParser) -> None:
    helps = {action.dest: action.help or "" for action in parser._actions if action.dest != "help"}
    assert all(helps.values()), helps
    assert "TCP port" in helps["port"] and "IP address" in helps["host"]


def test_simulator_durations_name_their_unit() -> None:
    actions = {action.dest: action for action in simulator_cli.build_parser()._actions}
    for name in ("token_lifetime", "latency"):
        assert actions[name].metavar == "SECONDS" and "seconds" in (actions[name].help or "")


def test_bench_help_says_where_notices_soak_and_fuzzing_run() -> None:
    result = run("bench", "--help")
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    assert "arrive with the watcher" not in shown
    assert "python -m bench.notices" in shown and "python -m bench.soak" in shown
    assert "tests/test_fuzz.py" in shown
