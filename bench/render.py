"""Part 4: the cost of building messages (pure functions) and the bot process's memory.

Render timings run in a worker process pinned like the server (`python -m bench.render worker`);
memory is read from /proc for a real `python -m bot` process before and after it walks 100k
tasks to answer a filtered `/kps tasks <words>`.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.load import Signer, command_body
from bench.procs import PYTHON, Placement, start, tail
from bench.stack import SIGNING_SECRET, start_environment, start_server


@dataclass(frozen=True)
class RenderCase:
    """One pure function timed beside its floor and its peer (both optional)."""

    name: str
    subject: Callable[[], Any]
    floor: tuple[str, Callable[[], Any]] | None = None
    peer: tuple[str, Callable[[], Any]] | None = None


def render_cases() -> list[RenderCase]:
    """What part 4 times. Part 3 adds 'one notice' here once the watcher's builder exists."""
    from bot.blockkit import ViewContext
    from bot.blocks import PageRef, build_page
    from bot.sandbox.simulator import seed_tasks
    from bot.tasks import Task

    now = datetime.now(UTC)
    tasks = [
        Task(
            task_id=t.task_id,
            operate_type=t.operate_type,
            started_at=datetime.fromtimestamp(t.task_time_ms / 1000, UTC)
            if t.task_time_ms
            else None,
            server_name=t.server_name,
            server_id=t.server_id,
            keypair_name=t.keypair_name,
        )
        for t in seed_tasks(10, now=now.timestamp(), rng=random.Random(3))
    ]
    ref = PageRef(offset=0, page_size=10)
    ctx = ViewContext(
        project_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        region="cn-north-4",
        now=now,
        stale_after=timedelta(minutes=30),
    )

    def page() -> Any:
        return build_page(tasks, total=37, ref=ref, ctx=ctx)

    payload = page().as_payload()

    def naive() -> dict[str, Any]:
        # What a tutorial writes: f-strings into blocks; no escaping, no limits, no paging.
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Running tasks* (37)"}}
        ]
        for task in tasks:
            started = task.started_at.strftime("%Y-%m-%d %H:%M") if task.started_at else "?"
            line = (
                f"*{task.server_name}* `{task.keypair_name}` {task.operate_type} "
                f"`{task.task_id}` started {started}"
            )
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line}})
        return {"text": "Running tasks", "blocks": blocks}

    message = page()

    def shallow() -> dict[str, Any]:
        return {"text": message.text, "blocks": list(message.blocks)}

    return [
        RenderCase(
            "one page of 10 tasks (build_page)",
            page,
            floor=("json.dumps of that page", lambda: json.dumps(payload)),
            peer=("tutorial-style f-string blocks", naive),
        ),
        RenderCase(
            # Message.__post_init__ calls it to measure the page, and every reply calls it again.
            "Message.as_payload() of that page (deep copy)",
            message.as_payload,
            floor=("a shallow copy", shallow),
        ),
    ]


def _time(function: Callable[[], Any]) -> float:
    """Median microseconds per call over 7 rounds sized to ~0.1 s each."""
    number, spent = 1, 0.0
    while spent < 0.1:
        number *= 2
        spent = timeit.timeit(function, number=number)
    rounds = timeit.repeat(function, number=number, repeat=7)
    return statistics.median(rounds) / number * 1e6


def worker() -> int:
    """Time every case; print one JSON line."""
    rows = []
    for case in render_cases():
        row: dict[str, Any] = {"name": case.name, "us": _time(case.subject)}
        for role, pair in (("floor", case.floor), ("peer", case.peer)):
            if pair is not None:
                row[role] = {"name": pair[0], "us": _time(pair[1])}
        rows.append(row)
    print(json.dumps(rows), flush=True)
    return 0


def run_render(placement: Placement, log_dir: Path) -> list[dict[str, Any]]:
    """The render timings, from a worker pinned where the servers run."""
    argv = [PYTHON, "-m", "bench.render", "worker"]
    proc = start("render", argv, cpus=placement.server, log_dir=log_dir, capture=True)
    assert proc.popen.stdout is not None
    out = proc.popen.stdout.read().decode()
    if proc.popen.wait() != 0:
        raise RuntimeError(f"render worker failed:\n{tail(proc)}")
    return list(json.loads(out.strip().splitlines()[-1]))


@dataclass(frozen=True)
class Memory:
    """Resident memory of the three servers, idle, and of the bot after a 100k-task walk."""

    idle_mib: dict[str, float]
    after_scan_mib: float
    peak_mib: float
    scan_tasks: int
    page_s: float  # from sending the filtered command to its page at response_url


def run_memory(
    placement: Placement, log_dir: Path, *, tasks: int = 100_000, latency: float = 0.020
) -> Memory:
    """Idle RSS of floor, peer and bot; then the bot's RSS after it walked `tasks` tasks."""
    stack = start_environment(placement, log_dir, tasks=tasks, latency=latency, tag="rss")
    idle: dict[str, float] = {}
    try:
        for kind in ("floor", "peer", "bot"):
            start_server(kind, stack, placement, log_dir, f"rss-{kind}")
            assert stack.server is not None
            time.sleep(1.0)  # let start-up garbage settle
            idle[kind] = stack.server.rss_kib()[0] / 1024
            if kind != "bot":
                stack.server.stop()
        assert stack.server is not None
        page_s = _filtered_command(stack.server_url, stack.slack_url)
        time.sleep(0.5)
        now, peak = stack.server.rss_kib()
        return Memory(idle, now / 1024, peak / 1024, tasks, page_s)
    finally:
        stack.stop()


def _filtered_command(server_url: str, slack_url: str, timeout: float = 120.0) -> float:
    """Send `/kps tasks web` (a filter: the bot walks every task); seconds until its reply."""
    body = command_body("tasks web", f"{slack_url}/response/rss-1")
    began = time.monotonic()
    answer = httpx.post(
        server_url + "/slack/events",
        content=body,
        headers=Signer(SIGNING_SECRET).headers(body),
        timeout=10,
    )
    answer.raise_for_status()
    while time.monotonic() - began < timeout:
        calls = httpx.get(
            slack_url + "/_fake/calls", params={"method": "response_url"}, timeout=30
        ).json()["calls"]
        if any(call["path"].endswith("/rss-1") for call in calls):
            return time.monotonic() - began
        time.sleep(0.1)
    raise RuntimeError("the filtered page never reached response_url")


if __name__ == "__main__":
    if sys.argv[1:] != ["worker"]:
        sys.exit("usage: python -m bench.render worker")
    sys.exit(worker())
