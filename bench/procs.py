"""Starting, pinning, watching and stopping the separate processes a benchmark runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Placement:
    """Which CPUs the process under test gets, and which the load and the stand-ins share."""

    server: frozenset[int]
    rest: frozenset[int]

    def describe(self) -> str:
        """One line for RESULTS.md."""
        if self.server == self.rest:
            return f"no pinning: every process may run on CPUs {_cpus(self.server)}"
        return (
            f"process under test (bot, floor, peer or scan client) pinned to CPU "
            f"{_cpus(self.server)}; load generator, KPS simulator and Slack stand-in pinned to CPU "
            f"{_cpus(self.rest)}"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def default_placement(pin: bool = True) -> Placement:
    """Half the CPUs for the process under test, half for everything else (one CPU: no pinning)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        every = frozenset(cpus)
        return Placement(every, every)
    half = len(cpus) // 2
    return Placement(frozenset(cpus[:half]), frozenset(cpus[half:]))


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        return cpu_seconds(self.pid)

    def rss_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in KiB: resident now and the peak so far."""
        return rss_kib(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def start(
    name: str,
    argv: Sequence[str],
    *,
    cpus: frozenset[int],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
) -> Proc:
    """Start `argv` pinned to `cpus`, stderr (and stdout unless `capture`) into its log file."""
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    # Children may run in a scratch directory; `bench` must still import from the checkout.
    paths = [str(ROOT), *filter(None, full_env.get("PYTHONPATH", "").split(os.pathsep))]
    full_env["PYTHONPATH"] = os.pathsep.join(paths)

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    popen = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
        list(argv),
        stdout=subprocess.PIPE if capture else handle,
        stderr=handle if capture else subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
        preexec_fn=pin,
    )
    handle.close()
    return Proc(name, popen, log)


def wait_ready(proc: Proc, url: str, timeout: float = 30.0) -> None:
    """Poll `url` until it answers 200; raise with the log's tail if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail(proc)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout}s:\n{tail(proc)}")


def tail(proc: Proc, lines: int = 20) -> str:
    """The last lines of a process's log."""
    try:
        text = proc.log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name in field 2 may hold spaces; everything after its ")" is fixed fields.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)
