"""Part 3, the notices: 1,000 tasks go stale in one scan; Slack calls, time, none lost or doubled.

The real bot (`python -m bot`, HTTP mode, its own runtime Slack client with the stock retry
handlers) runs as a child process with POLL_INTERVAL_SECONDS=1. The KPS simulator and the
Slack stand-in run in this process on loopback; the stand-in enforces about one
`chat.postMessage` per second per channel (a token bucket, burst 2) and answers the rest with
429 and `Retry-After`. Once the bot watches, 1,000 tasks that started 45 minutes ago are added
to the simulator at once, so its next scan finds them all stale. Every figure is read from the
stand-in's own record of the calls it received.

The helpers for running the bot as a child process and for reading notices back are shared
with the fault soak (bench/soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.blockkit import MESSAGE_MAX_BLOCKS
from bot.notices import NOTICE_SHOWN
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Simulator

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[1]
PROJECT_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CHANNEL = "C0ALERTS"  # the stand-in's alerts channel
SIGNING_SECRET = "bench-signing-secret"  # noqa: S105 - signs nothing real
STALE_MINUTES = 30
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The floor's packing: one task per section block, as the bot draws them, and one title block,
# within Slack's 50 blocks per message (docs.slack.dev/reference/block-kit/blocks).
FLOOR_PER_REPLY = MESSAGE_MAX_BLOCKS - 1
TARGET_TOP_LEVEL = 5


# --- the bot as a child process (the soak uses these too) ----------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bot_environment(
    *, sim_url: str, slack_api_url: str, port: int, state_url: str, kps_token: str, **extra: str
) -> dict[str, str]:
    """A clean environment for `python -m bot` in HTTP mode, watching CHANNEL every second.

    Built from nothing but PATH/HOME/LANG, so no SLACK_* or HUAWEICLOUD_* variable of the
    caller's shell changes what is measured.
    """
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env = {
        **keep,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack_api_url,
        "PORT": str(port),
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT_ID,
        "HUAWEICLOUD_REGION": "cn-north-4",
        "KPS_ENDPOINT": sim_url,
        "IAM_ENDPOINT": sim_url,
        "KPS_AUTH_TOKEN": kps_token,
        "STALE_CHANNEL_ID": CHANNEL,
        "STALE_AFTER_MINUTES": str(STALE_MINUTES),
        "POLL_INTERVAL_SECONDS": "1",
        "STATE_URL": state_url,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


@dataclass
class BotProcess:
    """One `python -m bot` child: its port, its log file (stdout and stderr) and its Popen."""

    name: str
    port: int
    log: Path
    popen: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        """Where it serves /healthz."""
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        """True until it exits."""
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean stop, its lease is left to expire."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)

    async def exited(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109 - a plain deadline
        """Wait without blocking the loop (the simulator and stand-in live in it)."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                self.popen.kill()
                self.popen.wait(5)
                raise TimeoutError(f"{self.name} did not exit within {timeout:g} s")
            await asyncio.sleep(0.05)
        return int(self.popen.returncode)

    async def terminate(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """SIGTERM, then wait for the exit status (SIGKILL after `timeout`)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        return await self.exited(timeout)

    def log_text(self) -> str:
        """Everything it wrote so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        """The last lines of its log."""
        return "\n".join(self.log_text().splitlines()[-lines:])


def start_bot(name: str, env: Mapping[str, str], log_dir: Path) -> BotProcess:
    """Start `python -m bot` with `env`, in `log_dir` (which has no .env), logging to a file."""
    log = log_dir / f"{name}.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter; polled, not waited
            [PYTHON, "-m", "bot"],
            env=dict(env),
            cwd=log_dir,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return BotProcess(name, int(env["PORT"]), log, popen)


async def health(client: httpx.AsyncClient, bot: BotProcess) -> dict[str, Any] | None:
    """The bot's /healthz body while it answers 200, else None."""
    try:
        response = await client.get(bot.url + "/healthz")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


async def wait_role(
    client: httpx.AsyncClient,
    bot: BotProcess,
    roles: Iterable[str],
    timeout: float = 30.0,  # noqa: ASYNC109
) -> str:
    """Wait until /healthz reports one of `roles` for the watcher; raise with the log if not."""
    wanted = set(roles)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not bot.alive():
            raise RuntimeError(f"{bot.name} exited with {bot.popen.returncode}:\n{bot.tail()}")
        body = await health(client, bot)
        role = str(body.get("watcher")) if body else None
        if role in wanted:
            return role
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{bot.name} did not report {sorted(wanted)} in {timeout:g} s\n{bot.tail()}")


# --- reading notices back from the stand-in's record -------------------------------------------


def ids_in(message: Mapping[str, Any]) -> set[str]:
    """The task ids a posted message names (its blocks; the fallback text names servers)."""
    return set(UUID.findall(json.dumps(message.get("blocks") or [], ensure_ascii=False)))


def channel_posts(calls: Iterable[Call], channel: str = CHANNEL) -> list[Call]:
    """chat.postMessage calls the stand-in accepted for `channel`, in the order they arrived."""
    return [
        c
        for c in calls
        if c.method == "chat.postMessage" and c.ok and c.args.get("channel") == channel
    ]


def call_counts(calls: Iterable[Call]) -> dict[str, dict[str, int]]:
    """Per Web API method: how many calls were accepted, and how many refused with what."""
    counts: dict[str, Counter[str]] = {}
    for call in calls:
        outcome = "ok" if call.ok else (str(call.status) if call.status != 200 else call.error)
        counts.setdefault(call.method, Counter())[str(outcome)] += 1
    return {method: dict(sorted(seen.items())) for method, seen in sorted(counts.items())}


# --- the benchmark -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoticeRun:
    """What one run measured (see `figures`)."""

    tasks: int
    added_at: float
    scan_at: float | None
    calls: tuple[Call, ...]
    log_errors: int


def floor_posts(tasks: int) -> int:
    """The fewest chat.postMessage calls that name `tasks` stale tasks: a notice and replies."""
    rest = max(0, tasks - NOTICE_SHOWN)
    return 1 + math.ceil(rest / FLOOR_PER_REPLY)


def floor_seconds(posts: int, rate: float, burst: float) -> float:
    """How long `posts` calls take at best against the stand-in's bucket (full at the start)."""
    return max(0.0, posts - burst) / rate


def figures(run: NoticeRun, *, rate: float, burst: float) -> dict[str, Any]:
    """The figures of one run, beside the floor."""
    posts = channel_posts(run.calls)
    top = [c for c in posts if not c.args.get("thread_ts")]
    replies = [c for c in posts if c.args.get("thread_ts")]
    named: Counter[str] = Counter()
    done_at: float | None = None
    for call in posts:
        named.update(ids_in(call.args))
        if done_at is None and len(named) >= run.tasks:
            done_at = call.time
    lost = max(0, run.tasks - len(named))
    doubled = sum(1 for n in named.values() if n > 1)
    floor_n = floor_posts(run.tasks)
    floor_s = floor_seconds(floor_n, rate, burst)
    scan_at = run.scan_at
    first_at = top[0].time if top else None
    took = (done_at - scan_at) if (done_at is not None and scan_at is not None) else None
    rate_limited = sum(1 for c in run.calls if c.status == 429)
    per_reply = max((len(ids_in(c.args)) for c in replies), default=0)
    return {
        "tasks": run.tasks,
        "how": "python -m bot (HTTP mode, runtime Slack client) against the simulator and the "
        f"stand-in at {rate:g} chat.postMessage/s per channel (burst {burst:g}), "
        "POLL_INTERVAL_SECONDS=1",
        "calls": call_counts(run.calls),
        "slack_calls": len(run.calls),
        "rate_limited": rate_limited,
        "top_level": len(top),
        "thread_replies": len(replies),
        "announced": len(named),
        "lost": lost,
        "doubled": doubled,
        "scan_after_s": _rounded(scan_at - run.added_at if scan_at is not None else None),
        "first_notice_s": _rounded(
            first_at - scan_at if first_at is not None and scan_at is not None else None
        ),
        "all_announced_s": _rounded(took),
        "per_reply_max": per_reply,
        "floor_posts": floor_n,
        "floor_per_reply": FLOOR_PER_REPLY,
        "floor_s": round(floor_s, 1),
        "posts_ratio": round(len(posts) / floor_n, 2) if floor_n else None,
        "time_ratio": round(took / floor_s, 2) if took is not None and floor_s else None,
        # The same bucket's best time for as many posts as the bot made: what pacing costs,
        # apart from how many tasks each reply carries.
        "own_posts_floor_s": round(floor_seconds(len(posts), rate, burst), 1),
        "one_per_task_s": round(floor_seconds(run.tasks, rate, burst)),
        "log_errors": run.log_errors,
        "target_met": len(top) <= TARGET_TOP_LEVEL and lost == 0 and doubled == 0,
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _log_errors(text: str) -> int:
    """Lines of the bot's JSON log at ERROR or above, or with a traceback, or not JSON at all."""
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if (
            not isinstance(record, dict)
            or record.get("level") in ("ERROR", "CRITICAL")
            or "exc" in record
        ):
            bad += 1
    return bad


async def measure(
    tasks: int,
    *,
    rate: float = 1.0,
    burst: float = 2.0,
    settle: float = 3.0,
    timeout: float = 180.0,  # noqa: ASYNC109
    log_dir: Path | None = None,
) -> NoticeRun:
    """One run: start everything, make `tasks` tasks stale at once, wait until all are named."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="kps-notices-"))
    token = "bench-notices-token"  # noqa: S105 - the simulator's throwaway token
    sim = Simulator(project_id=PROJECT_ID, static_tokens=[token])
    slack = FakeSlack(per_channel_rate=rate, per_channel_burst=burst)
    async with sim, slack, httpx.AsyncClient(timeout=2) as client:
        env = bot_environment(
            sim_url=sim.url,
            slack_api_url=slack.api_url,
            port=free_port(),
            state_url=f"sqlite+aiosqlite:///{log_dir / 'notices-state.db'}",
            kps_token=token,
        )
        bot = start_bot("notices-bot", env, log_dir)
        try:
            await wait_role(client, bot, ["leader"])
            # Oldest first, 1 ms apart, all 45 minutes old: stale on the very next scan.
            started_ms = int((time.time() - 45 * 60) * 1000)
            added_at = time.time()
            for i in range(tasks):
                sim.add_task(task_time_ms=started_ms - i, server_name=f"web-{i:04d}")
            wanted = {t.task_id for t in sim.tasks}
            deadline = time.monotonic() + timeout
            while True:
                named: set[str] = set()
                for call in channel_posts(slack.calls):
                    named |= ids_in(call.args)
                if wanted <= named:
                    break
                if time.monotonic() > deadline or not bot.alive():
                    break
                await asyncio.sleep(0.1)
            # Anything posted after every task was named would be a doubled or stray message.
            await asyncio.sleep(settle)
        finally:
            await bot.terminate()
        scans = [
            r.time for r in sim.requests if r.path.endswith("/running-tasks") and r.time >= added_at
        ]
        return NoticeRun(
            tasks=tasks,
            added_at=added_at,
            scan_at=min(scans) if scans else None,
            calls=tuple(slack.calls),
            log_errors=_log_errors(bot.log_text()),
        )


async def run_notices(quick: bool) -> dict[str, Any]:
    """Part 3: 1,000 (quick: 200) tasks stale in one scan; figures beside the floor."""
    tasks = 200 if quick else 1000
    rate, burst = 1.0, 2.0
    run = await measure(tasks, rate=rate, burst=burst)
    return figures(run, rate=rate, burst=burst)


def describe(found: Mapping[str, Any]) -> str:
    """The figures as a few lines for the console."""
    calls = ", ".join(
        f"{method} {' '.join(f'{k}:{v}' for k, v in seen.items())}"
        for method, seen in found["calls"].items()
    )
    verdict = "reached" if found["target_met"] else "MISSED"
    return "\n".join(
        [
            f"3. Notices: {found['tasks']} tasks stale in one scan ({found['how']})",
            f"  Slack calls: {found['slack_calls']} ({calls}); 429s: {found['rate_limited']}",
            f"  messages: {found['top_level']} top-level notice(s) + {found['thread_replies']}"
            f" thread replies (up to {found['per_reply_max']} tasks each); floor"
            f" {found['floor_posts']} posts (1 notice + replies of {found['floor_per_reply']}"
            f" tasks): {found['posts_ratio']}x",
            f"  named: {found['announced']} of {found['tasks']}; lost {found['lost']},"
            f" named twice {found['doubled']}",
            f"  scan {found['scan_after_s']} s after the tasks appeared; first notice"
            f" {found['first_notice_s']} s after the scan; all named {found['all_announced_s']} s"
            f" after it; floor {found['floor_s']} s ({found['time_ratio']}x), or"
            f" {found['own_posts_floor_s']} s for the bot's own {found['top_level']}"
            f" + {found['thread_replies']} posts; one message per task would need"
            f" {found['one_per_task_s']} s",
            f"  bot log lines at ERROR or with a traceback: {found['log_errors']}",
            f"  target (<= {TARGET_TOP_LEVEL} messages plus thread detail, none lost): {verdict}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.notices [--quick] [--tasks N]`: print the figures (and JSON)."""
    parser = argparse.ArgumentParser(prog="python -m bench.notices", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 tasks instead of 1,000")
    parser.add_argument("--tasks", type=int, help="how many tasks go stale at once")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.tasks:
        rate, burst = 1.0, 2.0
        run = asyncio.run(measure(args.tasks, rate=rate, burst=burst))
        found = figures(run, rate=rate, burst=burst)
    else:
        found = asyncio.run(run_notices(args.quick))
    print(describe(found))
    if args.json:
        print(json.dumps(found, indent=1))
    return 0 if found["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
