"""Part 2, the scan: walk every running task with `KPSClient.walk_running_tasks` against its floor.

The walks run in a fresh worker process each (`python -m bench.scan worker ...`), pinned apart
from the simulator, so that peak RSS belongs to one walk and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.procs import PYTHON, Placement, start, tail
from bench.stack import KPS_TOKEN, PROJECT_ID, set_latency, start_environment
from bench.variant import fake_sniffio, patch_parse

PAGE = 1000  # the largest page KPS documents, and the bot's


@dataclass(frozen=True)
class ScanSettings:
    """Sizes, concurrencies and repeats of part 2."""

    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    concurrencies: tuple[int, ...] = (1, 4, 8)
    latency: float = 0.020
    repeat: int = 3


@dataclass
class ScanRow:
    """One walk size at one concurrency."""

    tasks: int
    concurrency: int
    wall_s: float  # median over the repeats
    requests: int
    complete: bool
    peak_rss_mib: float
    base_rss_mib: float
    cpu_s: float  # the walking process's CPU time for one walk (median)
    fixed_s: float  # the same walk with the proposed client fixes (sniffio, parse)
    fixed_cpu_s: float
    bare_s: float  # the same pages fetched with plain httpx, no parsing
    get_ms: float  # one bare GET of a full page with no simulated latency
    latency: float

    @property
    def pages(self) -> int:
        """ceil(N / 1000): the fewest requests a walk can make."""
        return math.ceil(self.tasks / PAGE)

    @property
    def floor_s(self) -> float:
        """ceil(pages / c) rounds of (latency + one bare GET)."""
        rounds = math.ceil(self.pages / self.concurrency)
        return rounds * (self.latency + self.get_ms / 1000)

    @property
    def ratio(self) -> float:
        """Wall time over the floor."""
        return self.wall_s / self.floor_s


def run_scan(
    settings: ScanSettings,
    placement: Placement,
    log_dir: Path,
    *,
    progress: Callable[[str], None] = print,
) -> list[ScanRow]:
    """Every size at every concurrency, plus the bare-GET cost each floor is built from."""
    rows: list[ScanRow] = []
    for size in settings.sizes:
        stack = start_environment(placement, log_dir, tasks=size, latency=0.0, tag=f"scan-{size}")
        try:
            get_ms = _worker(stack.sim_url, ["get", "--repeat", "30"], placement, log_dir, size)[
                "median_ms"
            ]
            set_latency(stack, settings.latency)
            for concurrency in settings.concurrencies:
                common = ["--concurrency", str(concurrency), "--repeat", str(settings.repeat)]
                walk = _worker(stack.sim_url, ["walk", *common], placement, log_dir, size)
                fixed = _worker(
                    stack.sim_url,
                    ["walk", *common, "--fixes", "parse"],
                    placement,
                    log_dir,
                    size,
                )
                bare = _worker(stack.sim_url, ["bare", *common], placement, log_dir, size)
                row = ScanRow(
                    tasks=size,
                    concurrency=concurrency,
                    wall_s=walk["median_s"],
                    requests=walk["requests"],
                    complete=walk["complete"],
                    cpu_s=walk["cpu_s"],
                    fixed_s=fixed["median_s"],
                    fixed_cpu_s=fixed["cpu_s"],
                    peak_rss_mib=walk["peak_rss_kib"] / 1024,
                    base_rss_mib=walk["base_rss_kib"] / 1024,
                    bare_s=bare["median_s"],
                    get_ms=get_ms,
                    latency=settings.latency,
                )
                progress(format_progress(row))
                rows.append(row)
        finally:
            stack.stop()
    return rows


def _worker(
    sim_url: str, args: list[str], placement: Placement, log_dir: Path, size: int
) -> dict[str, Any]:
    argv = [PYTHON, "-m", "bench.scan", "worker", "--endpoint", sim_url, *args]
    name = f"scan-{size}-{args[0]}-{'-'.join(args[1:3])}{'-fixed' if '--fixes' in args else ''}"
    proc = start(name, argv, cpus=placement.server, log_dir=log_dir, capture=True)
    assert proc.popen.stdout is not None
    out = proc.popen.stdout.read().decode()
    if proc.popen.wait() != 0:
        raise RuntimeError(f"scan worker failed:\n{tail(proc)}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def format_progress(row: ScanRow) -> str:
    """One line per finished row, for the console while the run goes on."""
    return (
        f"  scan {row.tasks:>7,} tasks c={row.concurrency}  {row.wall_s * 1000:8.1f} ms  "
        f"floor {row.floor_s * 1000:7.1f} ms ({row.ratio:.2f}x)  bare httpx "
        f"{row.bare_s * 1000:7.1f} ms  fixed {row.fixed_s * 1000:7.1f} ms  "
        f"{row.requests} requests  client CPU {row.cpu_s * 1000:.0f} ms  "
        f"peak RSS {row.peak_rss_mib:.0f} MiB"
    )


# --- the worker process ---------------------------------------------------------------------


def _status_kib(field: str) -> int:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _client() -> httpx.AsyncClient:
    from bot.auth import StaticTokenAuth
    from bot.secret import Secret

    # The bot's own pool settings (bot/app.py) and its auth class.
    return httpx.AsyncClient(
        auth=StaticTokenAuth(Secret(KPS_TOKEN)),
        timeout=httpx.Timeout(30.0, connect=5.0),
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
    )


async def _walks(endpoint: str, concurrency: int, repeat: int) -> dict[str, Any]:
    from bot.kps import KPSClient

    async with _client() as http:
        kps = KPSClient(http, endpoint=endpoint, project_id=PROJECT_ID)
        await kps.list_running_tasks(1, 0)  # connect and import everything before measuring
        base = _status_kib("VmRSS")
        times, cpu, snapshot = [], [], None
        for _ in range(repeat):
            snapshot = None  # let the previous walk's tasks go before the next one
            began, used = time.perf_counter(), time.process_time()
            snapshot = await kps.walk_running_tasks(page_size=PAGE, concurrency=concurrency)
            times.append(time.perf_counter() - began)
            cpu.append(time.process_time() - used)
        assert snapshot is not None
        return {
            "median_s": statistics.median(times),
            "times": times,
            "cpu_s": statistics.median(cpu),
            "requests": snapshot.requests,
            "tasks": len(snapshot.tasks),
            "complete": snapshot.complete,
            "base_rss_kib": base,
            "peak_rss_kib": _status_kib("VmHWM"),
        }


async def _bare(endpoint: str, concurrency: int, repeat: int) -> dict[str, Any]:
    url = f"{endpoint}/v3/{PROJECT_ID}/running-tasks"
    async with _client() as http:

        async def page(offset: int) -> bytes:
            response = await http.get(url, params={"limit": PAGE, "offset": offset})
            return await response.aread()

        first = json.loads(await page(0))  # the total, once; not timed
        total = int(first["total"])
        gate = asyncio.Semaphore(concurrency)

        async def gated(offset: int) -> bytes:
            async with gate:
                return await page(offset)

        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            await page(0)
            await asyncio.gather(*(gated(o) for o in range(PAGE, total, PAGE)))
            times.append(time.perf_counter() - began)
        return {"median_s": statistics.median(times), "times": times}


async def _gets(endpoint: str, repeat: int) -> dict[str, Any]:
    url = f"{endpoint}/v3/{PROJECT_ID}/running-tasks"
    async with _client() as http:
        times = []
        for _ in range(repeat + 3):
            began = time.perf_counter()
            response = await http.get(url, params={"limit": PAGE, "offset": 0})
            await response.aread()
            times.append(time.perf_counter() - began)
        return {"median_ms": statistics.median(times[3:]) * 1000}


def worker(argv: list[str]) -> int:
    """`python -m bench.scan worker {walk|bare|get} --endpoint URL ...`: one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scan worker")
    parser.add_argument("mode", choices=("walk", "bare", "get"))
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fixes", default="", help="sniffio,parse: see bench/variant.py")
    args = parser.parse_args(argv)
    fixes = set(filter(None, args.fixes.split(",")))
    if "sniffio" in fixes:
        fake_sniffio()
    if "parse" in fixes:
        patch_parse()
    if args.mode == "walk":
        result = asyncio.run(_walks(args.endpoint, args.concurrency, args.repeat))
    elif args.mode == "bare":
        result = asyncio.run(_bare(args.endpoint, args.concurrency, args.repeat))
    else:
        result = asyncio.run(_gets(args.endpoint, args.repeat))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m bench.scan worker {walk|bare|get} --endpoint URL ...")
    sys.exit(worker(sys.argv[2:]))
