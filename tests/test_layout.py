"""The pure modules load no database, HTTP or Slack library: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_LIBRARIES = ("sqlalchemy", "httpx", "aiohttp", "slack_sdk", "slack_bolt")
# The decisions, the alert types, the error family and every Block Kit builder.
PURE_MODULES = (
    "bot.alerts",
    "bot.tasks",
    "bot.errors",
    "bot.stale",
    "bot.blockkit",
    "bot.blocks",
    "bot.notices",
)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_library(module: str) -> None:
    # A fresh interpreter: this test process has every library loaded already.
    probe = f"import sys, {module}; print(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules))"
    done = subprocess.run(  # noqa: S603 - our own interpreter, a fixed probe
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
