"""What the run ran on: CPU, cores, memory, kernel, Python and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = (
    "slack-bolt",
    "slack-sdk",
    "aiohttp",
    "httpx",
    "httpcore",
    "anyio",
    "sniffio",
    "h11",
    "py-spy",
)


def cpu_model() -> str:
    """The first `model name` in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    """MemTotal from /proc/meminfo, in GiB."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    try:
        with open("/proc/loadavg") as loadavg:
            return " ".join(loadavg.read().split()[:3])
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the libraries on the hot paths; 'not installed' where absent."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def code() -> str:
    """The commit measured, and whether bot/ had uncommitted changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(  # noqa: S603 - git with fixed arguments
            ["git", "-C", str(root), *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    head = git("log", "-1", "--format=%h %s")
    if not head:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "bot")
    return f"commit {head}" + (" + uncommitted changes in bot/" if dirty else "")


def describe() -> dict[str, str]:
    """Everything RESULTS.md states about the machine."""
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "memory": f"{memory_gib():.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_before": load_average(),
        "code": code(),
    }
