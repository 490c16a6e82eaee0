"""Sampling profiles with py-spy, summarised as the functions that hold the most samples."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

_SPY_NEXT_TO_PYTHON = Path(sys.executable).parent / "py-spy"


def spy_path() -> str | None:
    """The py-spy executable (the `bench` extra installs it next to this interpreter), or None."""
    if _SPY_NEXT_TO_PYTHON.exists():
        return str(_SPY_NEXT_TO_PYTHON)
    return shutil.which("py-spy")


def record(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen[bytes]:
    """Start sampling `pid` for `seconds` into `out` (collapsed stacks); returns the sampler."""
    spy = spy_path()
    if spy is None:
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    return subprocess.Popen(  # noqa: S603 - a fixed tool with our own arguments
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            str(rate),
            "--nonblocking",  # do not pause the process being measured
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# Frames every sample of an asyncio program sits under; listing them tells nothing.
_WRAPPERS = (
    "_run_module_as_main ",
    "_run_code ",
    "<module> ",
    "main (",
    "run (asyncio/runners.py",
    "Runner.run ",
    "BaseEventLoop.run_forever ",
    "BaseEventLoop.run_until_complete ",
    "BaseEventLoop._run_once ",
    "Handle._run ",
)


def summarise(raw: Path, *, top: int = 25) -> str:
    """Inclusive and own share of samples per function, from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        groups[_group(frames[-1])] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "own time by package:"]
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in groups.most_common(12)]
    lines += ["", f"top {top} functions by inclusive time:"]
    shown = [(name, n) for name, n in inclusive.most_common() if not name.startswith(_WRAPPERS)]
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in shown[:top]]
    lines += ["", f"top {top} functions by own time:"]
    lines += [f"  {n * 100 / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def _group(frame: str) -> str:
    """The package a frame belongs to: slack_bolt, aiohttp, httpx, bot, asyncio..."""
    _, _, where = frame.partition(" (")
    head = where.split("/", 1)[0].rstrip(")")
    if head.endswith(".py"):
        return head.split(":")[0].removesuffix(".py") + " (stdlib)"
    return head or "other"
