"""Turns one run's figures into the Markdown tables of bench/RESULTS.md (and the console)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.ack import AckCell
from bench.render import Memory
from bench.scan import ScanRow

ACK_TARGET_MS = 50.0
THROUGHPUT_TARGET = 0.5
SCAN_TARGET = 1.5


@dataclass
class Run:
    """Everything one `python -m bench` measured, and how."""

    command: str
    started: str
    finished: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    placement: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    ack: list[AckCell] = field(default_factory=list)
    scan: list[ScanRow] = field(default_factory=list)
    render: list[dict[str, Any]] = field(default_factory=list)
    memory: Memory | None = None
    profiles: dict[str, str] = field(default_factory=dict)  # title -> summary text
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # For parts that arrive later (3: notices): Markdown that replaces the section's placeholder,
    # keyed by part number, and rows [target, measured, verdict] for the targets table.
    sections: dict[str, str] = field(default_factory=dict)
    extra_targets: list[list[str]] = field(default_factory=list)


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}×"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table; numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _floor_of(cells: Sequence[AckCell], cell: AckCell) -> AckCell | None:
    for other in cells:
        if (other.server, other.latency, other.concurrency) == (
            "floor",
            cell.latency,
            cell.concurrency,
        ):
            return other
    return None


def ack_table(cells: Sequence[AckCell], reference: Sequence[AckCell] = ()) -> str:
    """Part 1: one row per (KPS latency, N, server), ratios against the floor of that point."""
    header = [
        "KPS",
        "N",
        "server",
        "pages/s",
        "× floor",
        "ack p50 ms",
        "ack p99 ms",
        "page p50 ms",
        "page p99 ms",
        "pages / sent",
        "KPS GETs",
        "CPU ms/page",
        "CPU × floor",
    ]
    rows = []
    for cell in cells:
        floor = _floor_of([*cells, *reference], cell)
        load = cell.load
        pages_s = float(load["pages_per_s"])
        spread = ""
        rates = [float(r["pages_per_s"]) for r in cell.rounds]
        if len(rates) > 1 and max(rates) - min(rates) >= 0.05:
            digits = 0 if max(rates) >= 10 else 1
            spread = f" ({min(rates):.{digits}f}–{max(rates):.{digits}f})"
        rows.append(
            [
                f"{cell.latency:g} s",
                str(cell.concurrency),
                cell.server,
                f"{pages_s:.1f}{spread}",
                _ratio(pages_s, float(floor.load["pages_per_s"]) if floor else None),
                _ms(load["p50_ms"]),
                _ms(load["p99_ms"]),
                _ms(load["page_p50_ms"]),
                _ms(load["page_p99_ms"]),
                f"{cell.pages} / {load['sent']}",
                str(cell.kps_gets),
                _ms(_cpu(cell)),
                _ratio(_cpu(cell), _cpu(floor) if floor else None),
            ]
        )
    return table(header, rows)


MIN_PAGES_FOR_CPU = 100


def _cpu(cell: AckCell) -> float | None:
    # With a handful of pages, idle housekeeping dominates the CPU time; the ratio means nothing.
    return cell.cpu_ms_per_page if cell.pages >= MIN_PAGES_FOR_CPU else None


def scan_table(rows: Sequence[ScanRow]) -> str:
    """Part 2: one row per (N, c)."""
    header = [
        "tasks",
        "c",
        "requests",
        "walk ms",
        "floor ms",
        "× floor",
        "bare httpx ms",
        "CPU ms",
        "fixed: walk ms",
        "fixed × floor",
        "fixed CPU ms",
        "peak RSS MiB",
        "complete",
    ]
    return table(
        header,
        (
            [
                f"{row.tasks:,}",
                str(row.concurrency),
                f"{row.requests} (min {row.pages})",
                f"{row.wall_s * 1000:.0f}",
                f"{row.floor_s * 1000:.0f}",
                f"{row.ratio:.2f}×",
                f"{row.bare_s * 1000:.0f}",
                f"{row.cpu_s * 1000:.0f}",
                f"{row.fixed_s * 1000:.0f}",
                f"{row.fixed_s / row.floor_s:.2f}×",
                f"{row.fixed_cpu_s * 1000:.0f}",
                f"{row.peak_rss_mib:.0f} (idle {row.base_rss_mib:.0f})",
                "yes" if row.complete else "no",
            ]
            for row in rows
        ),
    )


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """Part 4, timings: each function beside its floor and peer."""
    out = []
    for row in rows:
        line = [row["name"], f"{row['us']:.1f}", "–", "–"]
        if "floor" in row:
            floor = row["floor"]
            line[2] = f"{floor['name']}: {floor['us']:.1f} µs ({row['us'] / floor['us']:.1f}×)"
        if "peer" in row:
            peer = row["peer"]
            line[3] = f"{peer['name']}: {peer['us']:.1f} µs ({row['us'] / peer['us']:.1f}×)"
        out.append(line)
    return table(["function", "µs per call", "floor", "peer"], out)


def memory_table(memory: Memory) -> str:
    """Part 4, memory: idle RSS of the three servers, the bot after a full walk."""
    floor = memory.idle_mib.get("floor", 0.0)
    bot = memory.idle_mib.get("bot", 0.0)
    rows = [
        [f"{name}, idle", f"{mib:.0f}", _ratio(mib, floor) + " the floor" if floor else "–"]
        for name, mib in memory.idle_mib.items()
    ]
    rows.append(
        [
            f"bot after `/kps tasks web` walked {memory.scan_tasks:,} tasks "
            f"(page in {memory.page_s:.1f} s)",
            f"{memory.after_scan_mib:.0f} (peak {memory.peak_mib:.0f})",
            f"{memory.after_scan_mib / bot:.2f}× the bot idle" if bot else "–",
        ]
    )
    return table(["process", "RSS MiB", "compared"], rows)


def _environment_note(cells: Sequence[AckCell]) -> str:
    """How busy the shared CPU was: if it was saturated, the servers' figures are capped."""
    busiest = max(
        cells, key=lambda c: sum(v for k, v in c.cpu.items() if k != "server"), default=None
    )
    if busiest is None:
        return ""
    share = sum(v for k, v in busiest.cpu.items() if k != "server")
    detail = ", ".join(f"{k} {v * 100:.0f}%" for k, v in busiest.cpu.items() if k != "server")
    return (
        f"The CPU shared by the load generator, the simulator and the stand-in was busiest in "
        f"the {busiest.server} cell at KPS {busiest.latency:g} s, N={busiest.concurrency}: "
        f"{share * 100:.0f}% of one core ({detail}); the process under test had its own core."
    )


def _cell(cells: Sequence[AckCell], server: str, latency: float, n: int) -> AckCell | None:
    for cell in cells:
        if (cell.server, cell.latency, cell.concurrency) == (server, latency, n):
            return cell
    return None


def targets(run: Run) -> str:
    """The issue's targets with what this run measured, reached or missed."""
    rows: list[list[str]] = []

    def verdict(ok: bool | None) -> str:
        return "–" if ok is None else ("reached" if ok else "**missed**")

    for server in ("before", "bot", "bot+fix"):
        cell = _cell(run.ack, server, 2.0, 50)
        if cell is None:
            continue
        p99 = cell.load["p99_ms"]
        each = ", ".join(_ms(r["p99_ms"]) for r in cell.rounds)
        rows.append(
            [
                f"ack p99 < {ACK_TARGET_MS:.0f} ms at N=50, KPS 2 s ({server})",
                f"{_ms(p99)} ms (rounds: {each})" if len(cell.rounds) > 1 else f"{_ms(p99)} ms",
                verdict(p99 is not None and p99 < ACK_TARGET_MS),
            ]
        )
        lost = [int(r["lost"]) for r in cell.rounds] or [cell.lost]
        rows.append(
            [
                f"no page lost at N=50, KPS 2 s ({server})",
                f"{sum(lost)} lost of {cell.load['sent']} × {len(lost)} rounds",
                verdict(sum(lost) == 0),
            ]
        )
    for server in ("before", "bot", "bot+fix"):
        ratios = []
        for cell in run.ack:
            if cell.server != server or cell.latency != 0.0:
                continue
            floor = _floor_of(run.ack, cell)
            if floor and float(floor.load["pages_per_s"]):
                share = float(cell.load["pages_per_s"]) / float(floor.load["pages_per_s"])
                ratios.append((cell.concurrency, share))
        if ratios:
            shown = ", ".join(f"N={n}: {share:.2f}×" for n, share in ratios)
            rows.append(
                [
                    f"throughput ≥ {THROUGHPUT_TARGET}× floor, KPS 0 s ({server})",
                    shown,
                    verdict(all(share >= THROUGHPUT_TARGET for _, share in ratios)),
                ]
            )
    for row in run.scan:
        if row.tasks == 100_000:
            rows.append(
                [
                    f"scan of 100k ≤ {SCAN_TARGET}× floor (c={row.concurrency})",
                    f"{row.wall_s * 1000:.0f} ms vs {row.floor_s * 1000:.0f} ms: {row.ratio:.2f}×",
                    verdict(row.ratio <= SCAN_TARGET),
                ]
            )
    rows += run.extra_targets or [
        [
            "1,000 stale tasks in ≤ 5 messages, none lost",
            "not measured yet (part 3, after the watcher)",
            "–",
        ]
    ]
    return table(["target", "measured", "verdict"], rows)


def markdown(run: Run, analysis: str = "") -> str:
    """The whole RESULTS.md."""
    machine = run.machine
    versions = ", ".join(f"{name} {version}" for name, version in run.versions.items())
    parts = [
        "# Benchmark results",
        "",
        "Generated by `python -m bench`; every figure stands beside its floor or peer measured "
        "in the same run, as a ratio, because this machine is shared and absolute times drift.",
        "",
        f"- **Run**: {run.started} to {run.finished} (UTC)",
        f"- **Command**: `{run.command}`",
        f"- **Code**: {machine.get('code')}",
        f"- **Machine**: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('memory')} RAM; Linux {machine.get('kernel')}; "
        f"load average before the run {machine.get('load_before')} (other work shares it)",
        f"- **Python** {machine.get('python')}; {versions}",
        f"- **Placement**: {run.placement}",
        f"- **Settings**: {', '.join(f'{k}={v}' for k, v in run.settings.items())}",
    ]
    if run.skipped:
        parts.append(f"- **Skipped in this run**: {', '.join(run.skipped)}")
    parts += [f"- **Warning**: {warning}" for warning in run.warnings]
    parts += ["", "## Targets", "", targets(run), ""]
    if run.ack:
        parts += [
            "## 1. Ack path",
            "",
            "N simulated users, each on its own connection, send a Slack-signed `/kps` "
            "(first page of 37 running tasks), read the ack, wait until their page has reached "
            "the Slack stand-in's `response_url` (counted from the stand-in's own record, "
            "`GET /_fake/calls?method=response_url`), then send the next. A page later than the "
            f"page timeout ({run.settings.get('page_timeout_s')} s), an error message instead "
            "of a page, or no reply counts as lost. The peer answers in the ack, so for it a page "
            "is an ack within Slack's 3 s that carries the page. `pages/s` is the median of the "
            "rounds, with the range over rounds in brackets; `CPU ms/page` is the server "
            "process's CPU time over the measured window divided by the pages it delivered, "
            "which drifts less than rates on a shared machine.",
            "",
            "- **floor**: `bench/floor.py`, a bare aiohttp app that checks the signature, answers "
            "200, then does the one KPS GET (httpx, the bot's pool: 50 connections, 20 kept "
            "alive, behind a semaphore of 50) and the one `response_url` POST (one aiohttp "
            "session), rendering the same page with `bot.blocks.build_page`.",
            "- **before**: the bot at 7967bc7, the last commit before e63543e (shared in-flight "
            "KPS GETs, a gate in front of httpcore's pool, sniffio installed), with sniffio "
            "hidden as it was then (`bench/before.py`).",
            "- **bot**: `python -m bot` in HTTP mode, at the commit named above.",
            "- **bot+fix**: the bot with the proposals not yet in it patched in "
            "(`bench/variant.py`: acknowledge without Bolt's 10 ms ack polling); not shipped.",
            "- **peer**: `bench/peer.py`, the tutorial shape: a synchronous `slack_bolt.App` with "
            "its defaults that fetches from KPS before it acks and puts the page in the ack, on "
            "Bolt's own request handler with a `ThreadingHTTPServer`.",
            "",
            ack_table(run.ack),
            "",
            _environment_note(run.ack),
            "",
        ]
    if run.scan:
        parts += [
            "## 2. Scan",
            "",
            "`KPSClient.walk_running_tasks(page_size=1000, concurrency=c)` in a fresh process per "
            "row, against the simulator answering every request after "
            f"{run.settings.get('scan_latency_ms')} ms. Floor: ceil(ceil(N/1000)/c) rounds of "
            "(latency + one bare httpx GET of a full page, measured with no latency). "
            "`bare httpx` fetches the same pages with the same concurrency and no parsing: what "
            "the simulator and the network allow. `CPU` is the walking process's CPU "
            "time for one walk; peak RSS is that process's high-water mark (idle: before the "
            "first walk). `fixed`: the same walk with a proposed fast path for turning KPS items "
            "into tasks patched in (`bench/variant.py`, `patch_parse`); not shipped.",
            "",
            scan_table(run.scan),
            "",
        ]
    parts += [
        run.sections.get("3")
        or "## 3. Notices\n\nNot measured yet: 1,000 tasks going stale in one scan against the "
        "stand-in enforcing about one `chat.postMessage` per second per channel comes with the "
        "watcher (issue 5, part 3), as do the fault soak and the fuzzing.",
        "",
    ]
    if run.render or run.memory:
        parts += ["## 4. Render and memory", ""]
    if run.render:
        parts += [render_table(run.render), ""]
    if run.memory:
        parts += [
            "Resident memory from /proc (VmRSS, VmHWM) of each server process one second after "
            "it answered `/healthz`; then the bot's after it walked every task for a filtered "
            "`/kps tasks web` against the simulator at 20 ms per request.",
            "",
            memory_table(run.memory),
            "",
        ]
    if run.profiles:
        parts += [
            "## Profiles",
            "",
            "py-spy (`--nonblocking`, collapsed stacks) of the process named, during a separate "
            "measured window of the same load; full summaries in `bench/profiles/`.",
            "",
        ]
        for title, text in run.profiles.items():
            parts += [f"### {title}", "", "```", text.rstrip(), "```", ""]
    if analysis:
        parts += [analysis.strip(), ""]
    return "\n".join(parts)
