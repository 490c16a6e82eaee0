"""`python -m bench`: run every benchmark, print the tables, write bench/RESULTS.md.

Parts: 1 ack path, 2 scan, 4 render and memory, then py-spy profiles of the cells behind the
targets. Three more have their own commands: part 3, the notices (`python -m bench.notices`,
a real bot process; its figures are kept in bench/NOTICES.md, which RESULTS.md folds in), the
fault soak (`python -m bench.soak`; its 20 s form runs in `make test`) and the fuzzing
(tests/test_fuzz.py, in `make test`). docs/testing.md describes the soak and the fuzzing.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import machine, profile
from bench.ack import AckCell, AckSettings, run_ack, run_cell
from bench.procs import PYTHON, Placement, default_placement
from bench.render import Memory, run_memory, run_render
from bench.report import Run, ack_table, markdown, memory_table, render_table, scan_table
from bench.report import targets as targets_table
from bench.scan import ScanRow, ScanSettings, run_scan
from bench.stack import set_latency, start_environment

HERE = Path(__file__).resolve().parent
PARTS = ("ack", "scan", "render", "memory", "profile")


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--only", help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--duration", type=float, help="seconds measured per ack cell (10)")
    parser.add_argument("--warmup", type=float, help="seconds of load before measuring (2)")
    parser.add_argument("--repeat", type=int, help="rounds per ack cell, median kept (3)")
    parser.add_argument("--no-pin", action="store_true", help="let the OS place processes")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--logs", type=Path, help="where process logs go (a temp dir)")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="measure nothing: rebuild RESULTS.md from results.json (after editing ANALYSIS.md)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and write the results."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.rewrite:
        run = load(args.results.with_name("results.json"))
        write(run, args.results)
        print(f"rewrote {args.results} from results.json", flush=True)
        return 0
    parts = set(PARTS) if not args.only else set(args.only.split(","))
    unknown = parts - set(PARTS)
    if unknown:
        print(f"unknown parts: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if profile.spy_path() is None and "profile" in parts:
        print("py-spy missing (pip install -e '.[bench]'): no profiles", file=sys.stderr)
        parts.discard("profile")
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="kps-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    placement = default_placement(pin=not args.no_pin)

    ack = AckSettings()
    scan = ScanSettings()
    points = None
    skipped = []
    if args.quick:
        ack = replace(ack, duration=2.0, warmup=0.5, repeat=1, page_timeout=10.0)
        points = [(0.0, 50), (2.0, 50)]
        scan = replace(scan, sizes=(1_000, 10_000), concurrencies=(1, 4), repeat=1)
        if "profile" in parts:
            parts.discard("profile")
            skipped.append("profile (--quick)")
    ack = replace(
        ack,
        duration=args.duration or ack.duration,
        warmup=args.warmup if args.warmup is not None else ack.warmup,
        repeat=args.repeat or ack.repeat,
    )
    skipped += [p for p in PARTS if p not in parts and not any(s.startswith(p) for s in skipped)]

    run = Run(
        command=" ".join(["python -m bench", *map(shlex.quote, argv or sys.argv[1:])]),
        started=_now(),
        machine=machine.describe(),
        versions=machine.versions(),
        placement=placement.describe(),
        settings={
            "duration_s": ack.duration,
            "warmup_s": ack.warmup,
            "rounds": ack.repeat,
            "page_timeout_s": ack.page_timeout,
            "scan_latency_ms": round(scan.latency * 1000),
            "scan_repeats": scan.repeat,
        },
        skipped=skipped,
    )
    print(f"kps-bot benchmarks; logs in {log_dir}", flush=True)
    print(f"placement: {run.placement}", flush=True)
    if "ack" in parts:
        print("part 1: ack path", flush=True)
        run.ack = run_ack(ack, placement, log_dir, points=points)
    if "scan" in parts:
        print("part 2: scan", flush=True)
        run.scan = run_scan(scan, placement, log_dir)
    if "render" in parts:
        print("part 4: render", flush=True)
        run.render = run_render(placement, log_dir)
    if "memory" in parts:
        print("part 4: memory", flush=True)
        run.memory = run_memory(placement, log_dir, tasks=10_000 if args.quick else 100_000)
    if "profile" in parts:
        print("profiles", flush=True)
        run.profiles = profiles(ack, placement, log_dir)
    run.finished = _now()
    if machine.code() != run.machine["code"]:
        # Another session committed or edited bot/ while this ran: say so rather than mix quietly.
        run.warnings.append(f"bot/ changed during the run; at its end: {machine.code()}")
    write(run, args.results)
    print_tables(run)
    print(f"\nwrote {args.results}", flush=True)
    return 0


def profiles(settings: AckSettings, placement: Placement, log_dir: Path) -> dict[str, str]:
    """py-spy summaries of the cells behind the targets, saved under bench/profiles/."""
    out_dir = HERE / "profiles"
    out_dir.mkdir(exist_ok=True)
    found: dict[str, str] = {}
    # The worst throughput point and the ack-latency target, for today's bot and the one before.
    for server, latency, n in (("before", 0.0, 200), ("bot", 0.0, 200), ("bot", 2.0, 50)):
        title = f"{server}, KPS {latency:g} s, N={n}"
        raw = log_dir / f"profile-{server}-{int(latency * 1000)}ms-{n}.raw"
        run_cell(server, latency, n, settings, placement, log_dir, profile_to=raw)
        found[title] = _save(title, raw, out_dir / f"{server}-kps{latency:g}s-n{n}.txt")
    title = "scan client, 100,000 tasks, c=8"
    raw = log_dir / "profile-scan.raw"
    stack = start_environment(placement, log_dir, tasks=100_000, latency=0.0, tag="profile-scan")
    try:
        set_latency(stack, 0.020)
        spy = profile.spy_path()
        assert spy is not None
        walk = ["walk", "--endpoint", stack.sim_url, "--concurrency", "8", "--repeat", "5"]
        record = [spy, "record", "--rate", "250", "--format", "raw", "--output", str(raw)]
        subprocess.run(  # noqa: S603 - py-spy running our own worker
            [*record, "--", PYTHON, "-m", "bench.scan", "worker", *walk],
            check=True,
            capture_output=True,
        )
    finally:
        stack.stop()
    found[title] = _save(title, raw, out_dir / "scan-100k-c8.txt")
    return found


def _save(title: str, raw: Path, to: Path) -> str:
    """Write the long summary to `to`; return a short one for RESULTS.md."""
    if not raw.exists():
        return "no profile recorded\n"
    to.write_text(f"{title}\n\n{profile.summarise(raw, top=40)}")
    return profile.summarise(raw, top=15)


def part3(run: Run) -> None:
    """Section 3 and its target row from bench/NOTICES.md, kept by hand from bench.notices."""
    notices = HERE / "NOTICES.md"
    if not notices.exists():
        return
    text = notices.read_text()
    fields = dict(re.findall(r"<!-- target-(measured|verdict): (.*?) -->", text))
    run.sections["3"] = re.sub(r"<!--.*?-->\n?", "", text, flags=re.DOTALL).strip()
    if fields:
        label = "1,000 stale tasks in ≤ 5 messages, none lost"
        run.extra_targets = [[label, fields.get("measured", "–"), fields.get("verdict", "–")]]


def write(run: Run, path: Path) -> None:
    """RESULTS.md (with NOTICES.md and ANALYSIS.md folded in) and results.json beside it."""
    part3(run)
    analysis_file = HERE / "ANALYSIS.md"
    analysis = analysis_file.read_text() if analysis_file.exists() else ""
    path.write_text(markdown(run, analysis))
    data = asdict(run)
    path.with_name("results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def load(path: Path) -> Run:
    """A Run back from results.json."""
    data = json.loads(path.read_text())
    data["ack"] = [AckCell(**cell) for cell in data["ack"]]
    data["scan"] = [ScanRow(**row) for row in data["scan"]]
    data["memory"] = Memory(**data["memory"]) if data.get("memory") else None
    return Run(**data)


def print_tables(run: Run) -> None:
    """The same tables on the console."""
    print("\nTargets\n" + targets_table(run))
    if run.ack:
        print("\n1. Ack path\n" + ack_table(run.ack))
    if run.scan:
        print("\n2. Scan\n" + scan_table(run.scan))
    if run.render:
        print("\n4. Render\n" + render_table(run.render))
    if run.memory:
        print("\n4. Memory\n" + memory_table(run.memory))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"took {time.monotonic() - started:.0f} s", flush=True)
    sys.exit(code)
