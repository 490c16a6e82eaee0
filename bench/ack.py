"""Part 1, the ack path: signed `/kps` commands against the bot, its floor and its peer."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import profile
from bench.procs import PYTHON, Placement, Proc, start, tail
from bench.stack import (
    SERVERS,
    SIGNING_SECRET,
    Stack,
    first_page_ids,
    in_flight,
    kps_requests,
    start_stack,
)

TASKS = 37  # the demo's task count: four pages of ten


@dataclass(frozen=True)
class AckSettings:
    """The matrix and the timings of part 1."""

    latencies: tuple[float, ...] = (0.0, 2.0)
    concurrencies: tuple[int, ...] = (1, 10, 50, 200)
    servers: tuple[str, ...] = SERVERS
    duration: float = 10.0
    warmup: float = 2.0
    page_timeout: float = 30.0  # a page later than this counts as lost
    repeat: int = 3


@dataclass
class AckCell:
    """One server at one concurrency and one KPS latency."""

    server: str
    latency: float
    concurrency: int
    load: dict[str, Any]
    pages_recorded: int  # measured pages the stand-in holds at the end, late ones included
    kps_gets: int
    cpu: dict[str, float]  # share of one CPU each process used in the measured window
    log_problems: int  # lines with ERROR or Traceback in the server's log
    rounds: list[dict[str, Any]] = field(default_factory=list)  # every round's main figures

    @property
    def acked(self) -> int:
        """Commands answered 200 in the measured window."""
        return int(self.load["ok"])

    @property
    def pages(self) -> int:
        """Task pages that reached the user in time (response_url, or the ack for the peer)."""
        return int(self.load["pages"])

    @property
    def lost(self) -> int:
        """Commands sent whose page did not arrive in time: an error reply, a late or no page."""
        return int(self.load["sent"]) - self.pages

    @property
    def cpu_ms_per_page(self) -> float | None:
        """Server CPU time per page delivered, in ms: the framework's cost, whatever the load."""
        if not self.pages:
            return None
        return self.cpu.get("server", 0.0) * float(self.load["window_s"]) * 1000 / self.pages


def run_ack(
    settings: AckSettings,
    placement: Placement,
    log_dir: Path,
    *,
    points: list[tuple[float, int]] | None = None,
    servers: tuple[str, ...] | None = None,
    progress: Callable[[str], None] = print,
) -> list[AckCell]:
    """Every (KPS latency, N) point for every server, `repeat` rounds, the median round kept.

    The servers take turns within a round, so a burst of load from another tenant of this
    shared machine hits one round of each rather than all rounds of one.
    """
    if points is None:
        points = [(lat, n) for lat in settings.latencies for n in settings.concurrencies]
    servers = servers or settings.servers
    kept: list[AckCell] = []
    for latency, concurrency in points:
        runs: dict[str, list[AckCell]] = {server: [] for server in servers}
        for _ in range(settings.repeat):
            for server in servers:
                cell = run_cell(server, latency, concurrency, settings, placement, log_dir)
                progress(format_progress(cell))
                runs[server].append(cell)
        kept.extend(median_round(runs[server]) for server in servers)
    return kept


def median_round(cells: list[AckCell]) -> AckCell:
    """The median round by page rate, ties (latency-bound points) broken by ack p99.

    The kept cell lists every round's figures, so a reader can see the spread.
    """

    def key(cell: AckCell) -> tuple[float, float]:
        return float(cell.load["pages_per_s"]), float(cell.load["p99_ms"] or 0.0)

    ordered = sorted(cells, key=key)
    chosen = ordered[(len(ordered) - 1) // 2]
    chosen.rounds = [
        {
            "pages_per_s": float(c.load["pages_per_s"]),
            "p99_ms": c.load["p99_ms"],
            "page_p99_ms": c.load["page_p99_ms"],
            "lost": c.lost,
        }
        for c in cells
    ]
    return chosen


def run_cell(
    server: str,
    latency: float,
    concurrency: int,
    settings: AckSettings,
    placement: Placement,
    log_dir: Path,
    *,
    profile_to: Path | None = None,
) -> AckCell:
    """Fresh simulator, stand-in and server; load; count; everything stopped afterwards."""
    tag = f"ack-{server.replace('+', '-')}-{concurrency}c-{int(latency * 1000)}ms"
    stack = start_stack(server, placement, log_dir, tasks=TASKS, latency=latency, tag=tag)
    try:
        page_ids = first_page_ids(stack)
        before_gets = kps_requests(stack)
        load, cpu = _drive(
            stack, server, concurrency, settings, placement, log_dir, tag, page_ids, profile_to
        )
        if server == "peer":
            recorded = int(load["pages"])
        else:
            _settle(stack)
            recorded = sum(1 for args in _replies(stack, "m-") if page_ids[0] in json.dumps(args))
        gets = kps_requests(stack) - before_gets
        assert stack.server is not None
        problems = _log_problems(stack.server)
        return AckCell(server, latency, concurrency, load, recorded, gets, cpu, problems)
    finally:
        stack.stop()


def _drive(
    stack: Stack,
    server: str,
    concurrency: int,
    settings: AckSettings,
    placement: Placement,
    log_dir: Path,
    tag: str,
    page_ids: list[str],
    profile_to: Path | None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the load generator; sample every process's CPU time over the measured window."""
    argv = [
        PYTHON,
        "-m",
        "bench.load",
        "--url",
        stack.server_url + "/slack/events",
        "--secret",
        SIGNING_SECRET,
        "--users",
        str(concurrency),
        "--duration",
        str(settings.duration),
        "--warmup",
        str(settings.warmup),
        "--response-base",
        stack.slack_url,
        "--tag",
        "m",
        "--page-marker",
        page_ids[0],
        "--page-timeout",
        str(settings.page_timeout),
    ]
    if server == "peer":
        argv.append("--page-in-ack")
    load = start(f"{tag}-load", argv, cpus=placement.rest, log_dir=log_dir, capture=True)
    assert stack.server is not None
    watched: dict[str, Proc] = {
        "server": stack.server,
        "load": load,
        "simulator": stack.sim,
        "stand-in": stack.slack,
    }
    started: dict[str, float] = {}
    cpu: dict[str, float] = {}
    opened = 0.0
    spy: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] | None = None
    assert load.popen.stdout is not None
    for raw in load.popen.stdout:
        line = raw.decode().strip()
        if line == "measuring":
            opened = time.monotonic()
            started = {name: proc.cpu_seconds() for name, proc in watched.items()}
            if profile_to is not None:
                spy = profile.record(stack.server.pid, settings.duration, profile_to)
        elif line == "stopped":
            elapsed = time.monotonic() - opened
            cpu = {
                name: (proc.cpu_seconds() - started[name]) / elapsed
                for name, proc in watched.items()
            }
        elif line.startswith("{"):
            result = json.loads(line)
    load.popen.wait()
    if spy is not None:
        spy.wait()
    if result is None:
        raise RuntimeError(f"the load generator gave no result:\n{tail(load)}")
    return result, cpu


def _settle(stack: Stack, limit: float = 5.0) -> None:
    """Give replies still on their way a moment, so the stand-in's count includes them."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and in_flight(stack) > 0:
        time.sleep(0.1)


def _replies(stack: Stack, prefix: str) -> list[dict[str, Any]]:
    """Bodies the stand-in accepted on measured response_urls."""
    answer = httpx.get(
        stack.slack_url + "/_fake/calls", params={"method": "response_url"}, timeout=120
    )
    return [
        call["args"]
        for call in answer.json()["calls"]
        if call["status"] == 200 and call["path"].startswith(f"/response/{prefix}")
    ]


def _log_problems(proc: Proc) -> int:
    try:
        text = proc.log.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if "ERROR" in line or "Traceback" in line)


def format_progress(cell: AckCell) -> str:
    """One line per finished cell, for the console while the run goes on."""
    load = cell.load
    return (
        f"  ack {cell.server:7} KPS {cell.latency:.0f} s N={cell.concurrency:<3} "
        f"{load['rps']:7.1f} cmd/s  ack p50 {_ms(load['p50_ms'])} p99 {_ms(load['p99_ms'])}  "
        f"page p99 {_ms(load['page_p99_ms'])}  pages {cell.pages}/{load['sent']}  "
        f"KPS GETs {cell.kps_gets}  server CPU {cell.cpu.get('server', 0) * 100:.0f}%"
    )


def _ms(value: float | None) -> str:
    return "      -" if value is None else f"{value:7.1f}"
