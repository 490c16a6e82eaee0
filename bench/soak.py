"""The fault soak: the real bot against a failing KPS and a failing Slack, killed three times.

`python -m bench.soak [--seconds 120] [--short] [--replicas] [--poison] [--seed N]` runs
`python -m bot` (LOG_FORMAT=json, POLL_INTERVAL_SECONDS=1, its stderr kept per process) against
the KPS simulator and the Slack stand-in, both in this process on loopback, for a bounded time:

- tasks appear (already stale, about to go stale, fresh), and finish at random, succeeding or
  failing;
- about 20 % of KPS requests fail (5xx in several body shapes, an HTML 502, timeouts, garbage
  and wrongly typed JSON, 429 with and without Retry-After, dropped connections), drawn per
  request through the simulator's `pick_fault` hook;
- about 10 % of Slack Web API calls are answered 429 (Retry-After: 1), 500 or 503;
- the bot is killed with SIGKILL and restarted three times (`--replicas`: two bot processes
  share a fresh PostgreSQL database and the leader is the one killed).

`--poison` adds hostile input (issue 10): 5 % of the tasks are poison records (ids with a
newline, `/`, `?`, `#` or `%2F`; a NUL, a lone surrogate or control characters in a name;
10,000-character names; wrongly typed fields; a task_time in seconds; ids no store can key),
Slack also answers with an HTML page, garbage JSON, a JSON array and a 500 with a text body,
and the store (a fresh PostgreSQL database) goes away for 20 s: connections are cut and
refused, then allowed again. The normal tasks are judged as before; a poison record the bot
cannot use must never be announced.

Then the churn and the faults stop, the bot is given time to catch up, and it is stopped with
SIGTERM. The checks read the stand-in's record of accepted calls and the simulator's record of
what it answered:

1. every task that was stale for a whole complete scan was announced exactly once (its id
   counted across the notices as posted and their thread detail);
2. every announced task that finished was resolved exactly once, by a thread reply line that
   names the status KPS reports for it (SUCCESS_x or FAILED_x);
3. no notice names a task that was never stale while running, and no reply resolves a task
   that is still running;
4. the bots' logs hold no unhandled exception: no traceback at any level and no ERROR line,
   except "watching is impaired" (the designed notice after three failed scans in a row);
   a last line cut short by SIGKILL is not counted;
5. no watcher step failed, except while the store was away (a scan a poison record stopped
   would fail its step); the store's own errors then are counted apart;
6. only when the store was sent away: an impaired notice was posted after it went away;
7. no configured secret (Slack bot token, signing secret, KPS tokens) appears in any Slack
   call the stand-in received or in any log line;
8. nothing was dropped: no outbox row was given up (every Slack failure in the soak is
   transient);
9. the final SIGTERM stops every bot with exit status 0.

A task counts as "stale for a whole complete scan" when a bot process got a successful
running-tasks answer listing it as running and stale (with 10 s to spare, so a scan that
began before the task crossed the threshold does not count), and that same process made a
later KPS request: a watcher's scan is sequential, so by then the scan had recorded its
decision. Each bot process gets its own KPS token, which tells the simulator who asked.

Delivery is at least once (bot/watcher.py): a SIGKILL after Slack accepted a post and before
the outbox marked it sent repeats that post. The soak kills at a quiet moment (no outbox row
pending, no Slack call in between), so that window is avoided; a repeat that still follows a
kill within a second of an accepted call is reported apart, with its reason, not hidden. The
store going away in that moment is the same window, and a repeat it explains is reported the
same way.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import random
import re
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bench.notices import (
    CHANNEL,
    PROJECT_ID,
    SIGNING_SECRET,
    STALE_MINUTES,
    UUID,
    BotProcess,
    bot_environment,
    free_port,
    health,
    start_bot,
    wait_role,
)
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Fault, RecordedRequest, Simulator
from bot.store import alerts, outbox

STALE_MS = STALE_MINUTES * 60_000
MARGIN_MS = 10_000  # a scan may retry for seconds after it took its `now`
KPS_TIMEOUT = 1.0  # the bot's KPS_TIMEOUT_SECONDS; an injected timeout waits longer
KILL_WINDOW = 1.0  # seconds after an accepted call in which a SIGKILL may repeat it
# Marks a task line starts with (bot/notices.py `_task_line`).
RUNNING_MARK = ":hourglass_flowing_sand:"
ENDED_MARKS = (":white_check_mark:", ":x:", ":black_square_for_stop:", ":grey_question:")
EXPECTED_ERRORS = ("watching is impaired",)

# What a failing KPS sends, and how often relative to each other (kps-api.md §3).
KPS_FAULTS: tuple[tuple[str, Fault], ...] = (
    ("5xx", Fault("status", status=500, error_code="KPS.0500", error_msg="Internal error")),
    ("5xx", Fault("status", status=503, shape="apig", error_code="APIG.0202")),
    ("5xx", Fault("status", status=500, shape="nested")),
    ("5xx", Fault("html", status=502)),
    ("timeout", Fault("latency", delay=KPS_TIMEOUT + 0.5)),
    ("garbage", Fault("garbage")),
    ("garbage", Fault("wrong_types")),
    ("429", Fault("retry_after", delay=0.5)),
    ("429", Fault("status", status=429, error_code="APIG.0308", error_msg="over ratelimit")),
    ("disconnect", Fault("disconnect")),
)
SLACK_FAULTS: tuple[tuple[int, str | None, str | None], ...] = (
    (429, "ratelimited", None),
    (500, "internal_error", None),
    (503, "service_unavailable", None),
)
# A proxy or a broken Slack (issue 10, item 6): none of these is a refusal, all are retried.
ODD_SLACK_FAULTS: tuple[tuple[int, str | None, str | None], ...] = (
    (200, None, "html"),
    (200, None, "garbage"),
    (200, None, "array"),
    (500, None, "text"),
)
POISON_KINDS = (
    "odd-id",
    "nul",
    "surrogate",
    "control",
    "long-name",
    "wrong-type",
    "seconds",
    "bad-id",
)
# What a log line may hold while the store is away: the store's own errors, nothing else.
STORE_TRACE = re.compile(r"sqlalchemy\.exc\.|asyncpg\.exceptions|ConnectionRefusedError")
IMPAIRED = "is impaired"  # words of the impaired notice (bot/notices.py)
STORE_SETTLE = 10.0  # seconds after the store is back in which its errors may still surface


@dataclass(frozen=True)
class SoakSettings:
    """How long, how hard, and where."""

    seconds: float = 120.0
    replicas: bool = False
    seed: int | None = None
    kps_fault_rate: float = 0.2
    slack_fault_rate: float = 0.1
    kills: int = 3
    drain: float = 40.0  # at most this long to catch up once the churn stops
    settle: float = 2.0  # then this long more, to see any late repeat
    log_dir: Path | None = None
    pg_admin_database: str = "test"
    poison: float = 0.0  # share of added tasks that are poison records
    odd_slack: bool = False  # Slack faults include HTML, garbage, array and text bodies
    store_outage: float = 0.0  # seconds the store is away, once (PostgreSQL)

    @classmethod
    def poisoned(cls, **changes: Any) -> SoakSettings:
        """The poison variant: 5 % poison records, odd Slack answers, the store away 20 s."""
        fields: dict[str, Any] = {"poison": 0.05, "odd_slack": True, "store_outage": 20.0}
        fields.update(changes)
        return cls(**fields)


# --- ground truth ----------------------------------------------------------------------------


@dataclass
class TaskLife:
    """One task as the soak made it: when it started, and how and when it finished."""

    task_id: str
    kind: str  # stale, burst, aging, fresh, or poison-<what>
    started_ms: int
    finished_at: float | None = None
    status: str | None = None  # what KPS reports once it finished
    usable: bool = True  # False: a record the bot must leave out, never announce

    @property
    def poison(self) -> bool:
        """A hostile record, not judged as a normal task."""
        return self.kind.startswith("poison")

    def stale_while_running(self, until: float) -> bool:
        """Was it ever running at least STALE_MINUTES (before it finished, or `until`)?"""
        end = self.finished_at if self.finished_at is not None else until
        return end * 1000 - self.started_ms >= STALE_MS


@dataclass(frozen=True)
class Listing:
    """A running-tasks answer the simulator gave without a fault."""

    time: float
    who: str  # the bot process whose token asked
    stale: frozenset[str]  # running and stale with MARGIN_MS to spare


@dataclass(frozen=True)
class Kill:
    """One SIGKILL."""

    at: float
    victim: str
    quiet: bool  # no outbox row claimed and no Slack call during the check
    pid: int


@dataclass
class Record:
    """Everything observed during the soak."""

    started: float = field(default_factory=time.time)
    tasks: dict[str, TaskLife] = field(default_factory=dict)
    listings: list[Listing] = field(default_factory=list)
    last_request: dict[str, float] = field(default_factory=dict)  # per process
    kps_requests: int = 0
    kps_faults: Counter[str] = field(default_factory=Counter)
    slack_faults: Counter[str] = field(default_factory=Counter)
    kills: list[Kill] = field(default_factory=list)
    churn_ended: float | None = None
    exits: dict[str, int] = field(default_factory=dict)  # final SIGTERM exit statuses
    store_away: tuple[float, float] | None = None  # when the store was cut off, and back
    dead_rows: int = 0  # outbox rows given up at the end


# --- reading the stand-in's record -----------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """A task id on one line of one accepted message."""

    task_id: str
    call: Call
    top_level: bool
    line: str


def mentions(calls: Iterable[Call]) -> list[Mention]:
    """Every task id named by a task line of an accepted chat.postMessage in the channel."""
    found: list[Mention] = []
    for call in calls:
        if call.method != "chat.postMessage" or not call.ok or call.args.get("channel") != CHANNEL:
            continue
        top = not call.args.get("thread_ts")
        for line in _lines(call.args.get("blocks")):
            for task_id in set(UUID.findall(line)):
                found.append(Mention(task_id, call, top, line))
    return found


def _lines(blocks: Any) -> list[str]:
    lines: list[str] = []
    if not isinstance(blocks, list):
        return lines
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "section":
            text = block.get("text")
            if isinstance(text, dict) and isinstance(text.get("text"), str):
                lines.append(text["text"])
    return lines


def is_announcement(m: Mention) -> bool:
    """A line of a notice as posted, or a running line of its thread detail."""
    return m.top_level or m.line.startswith(RUNNING_MARK)


def is_resolution(m: Mention) -> bool:
    """An ending line in a notice's thread."""
    return not m.top_level and m.line.startswith(ENDED_MARKS)


# --- the checks ------------------------------------------------------------------------------


@dataclass
class Check:
    """One check's verdict and the counts behind it."""

    name: str
    ok: bool
    detail: str


@dataclass
class SoakReport:
    """The counts and verdicts of one soak."""

    settings: SoakSettings
    seed: int
    lines: list[str]
    checks: list[Check]
    repeats: list[str]  # at-least-once repeats put down to a kill or the store lost, with why
    log_dir: Path

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return all(c.ok for c in self.checks)

    def text(self) -> str:
        """What the soak prints."""
        out = list(self.lines)
        out.append("checks:")
        out += [f"  [{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}" for c in self.checks]
        out.append(
            "at-least-once repeats (a SIGKILL, or the store lost, between Slack accepting a post"
            f" and the outbox marking it sent): {len(self.repeats)}"
        )
        out += [f"  {r}" for r in self.repeats]
        out.append(f"result: {'PASSED' if self.ok else 'FAILED'} (logs in {self.log_dir})")
        return "\n".join(out)


def must_announce(record: Record) -> set[str]:
    """Tasks stale for a whole complete scan (see the module docstring)."""
    wanted: set[str] = set()
    for listing in record.listings:
        if record.last_request.get(listing.who, 0.0) > listing.time:
            wanted |= listing.stale
    return wanted


def _kill_before(record: Record, call: Call, later: Call) -> Kill | None:
    """The kill that may have repeated `call`: within KILL_WINDOW after it, before `later`."""
    for kill in record.kills:
        if call.time <= kill.at <= call.time + KILL_WINDOW and kill.at < later.time:
            return kill
    return None


def _store_lost_after(record: Record, call: Call, later: Call) -> float | None:
    """When the store went away, if `call` was accepted while it was away (or within
    KILL_WINDOW before): the outbox could not mark it sent, so `later` repeats it."""
    if record.store_away is None:
        return None
    away, back = record.store_away
    return away if away - KILL_WINDOW <= call.time <= back and later.time > back else None


def judge(
    record: Record, calls: list[Call], until: float, held: set[str]
) -> tuple[list[Check], list[str]]:
    """Checks 1-3, and the repeats a kill (or the store's going away) explains.

    `held`: tasks whose notice still has a row claimed by a killed process; what they miss is
    reported as waiting for that claim to expire, not as lost.
    """
    seen = mentions(calls)
    announced: dict[str, list[Mention]] = {}
    resolved: dict[str, list[Mention]] = {}
    for m in seen:
        if is_announcement(m):
            announced.setdefault(m.task_id, []).append(m)
        elif is_resolution(m):
            resolved.setdefault(m.task_id, []).append(m)
    repeats: list[str] = []

    def split(found: dict[str, list[Mention]], what: str) -> tuple[list[str], list[str]]:
        twice, explained = [], []
        for task_id, ms in found.items():
            if len(ms) < 2:
                continue
            ms = sorted(ms, key=lambda m: m.call.time)
            kill = _kill_before(record, ms[0].call, ms[1].call)
            away = _store_lost_after(record, ms[0].call, ms[1].call)
            if kill is not None and len(ms) == 2:
                explained.append(task_id)
                repeats.append(
                    f"{task_id} {what} twice: Slack accepted the first"
                    f" {kill.at - ms[0].call.time:.3f} s before the SIGKILL of {kill.victim}"
                    f" ({'quiet' if kill.quiet else 'not quiet'} moment), repeated"
                    f" {ms[1].call.time - kill.at:.1f} s after it"
                )
            elif away is not None and len(ms) == 2:
                # The same window with the database lost instead of the process (bot/watcher.py).
                explained.append(task_id)
                repeats.append(
                    f"{task_id} {what} twice: Slack accepted the first"
                    f" {ms[0].call.time - away:+.3f} s from the store going away (it was away"
                    f" until {record.store_away[1] - away:.1f} s), so the outbox could not mark"
                    f" it sent; repeated {ms[1].call.time - away:.1f} s after it went away"
                    if record.store_away
                    else ""
                )
            else:
                twice.append(task_id)
        return twice, explained

    wanted = must_announce(record)
    missing = sorted(wanted - set(announced) - held)
    waiting = sorted((wanted - set(announced)) & held)
    twice, _ = split(announced, "announced")
    checks = [
        Check(
            "every task stale for a whole complete scan announced exactly once",
            not missing and not twice,
            f"{len(wanted)} such tasks; announced {len(wanted & set(announced))};"
            f" missing {len(missing)}{_some(missing)}; announced twice {len(twice)}{_some(twice)}"
            f" (all announced: {len(announced)}){_held(waiting)}",
        )
    ]

    finished = {
        t.task_id: t
        for t in record.tasks.values()
        if t.finished_at is not None and t.task_id in announced
    }
    unresolved = sorted(set(finished) - set(resolved) - held)
    waiting = sorted((set(finished) - set(resolved)) & held)
    resolved_twice, _ = split({k: v for k, v in resolved.items() if k in finished}, "resolved")
    wrong = sorted(
        task_id
        for task_id, ms in resolved.items()
        if task_id in finished and not any(f"`{finished[task_id].status}`" in m.line for m in ms)
    )
    checks.append(
        Check(
            "every announced task that finished resolved exactly once with its outcome",
            not unresolved and not resolved_twice and not wrong,
            f"{len(finished)} such tasks; resolved {len(set(finished) & set(resolved))};"
            f" missing {len(unresolved)}{_some(unresolved)};"
            f" resolved twice {len(resolved_twice)}{_some(resolved_twice)};"
            f" wrong outcome {len(wrong)}{_some(wrong, resolved)}{_held(waiting)}",
        )
    )

    never = sorted(
        task_id
        for task_id in announced
        if task_id not in record.tasks
        or not record.tasks[task_id].stale_while_running(until)
        or not record.tasks[task_id].usable
    )
    still_running = sorted(
        task_id
        for task_id in resolved
        if task_id not in record.tasks or record.tasks[task_id].finished_at is None
    )
    checks.append(
        Check(
            "no notice names a task never stale or unusable; no reply ends a running task",
            not never and not still_running,
            f"named but never stale {len(never)}{_some(never)};"
            f" resolved while running {len(still_running)}{_some(still_running)}",
        )
    )
    return checks, repeats


def _held(ids: list[str]) -> str:
    if not ids:
        return ""
    return (
        f"; waiting behind a row a killed process had claimed (sent once its claim expires,"
        f" README 'Delivery'): {len(ids)}{_some(ids)}"
    )


def _some(ids: list[str], lines: dict[str, list[Mention]] | None = None) -> str:
    if not ids:
        return ""
    if lines is not None:
        shown = "; ".join(f"{i}: {lines[i][0].line[:200]!r}" for i in ids[:2])
        return f" ({shown})"
    return f" (e.g. {', '.join(ids[:3])})"


@dataclass
class LogVerdict:
    """What the bots' logs hold."""

    lines: int = 0
    warnings: int = 0
    expected: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    cut: int = 0  # last lines cut short by SIGKILL
    store_away: int = 0  # store errors logged while the store was away (expected)
    steps_failed: list[str] = field(default_factory=list)  # outside the store's outage


def read_logs(
    bots: Iterable[BotProcess], killed: set[str], away: tuple[float, float] | None = None
) -> LogVerdict:
    """Classify every line of every bot's log (checks 4 and 5 in the module docstring).

    `away`: when the store was cut off and back; a line logged then (or within STORE_SETTLE
    after) whose traceback is the store's own is counted apart, as expected.
    """
    verdict = LogVerdict()
    for bot in bots:
        lines = bot.log_text().splitlines()
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            verdict.lines += 1
            try:
                entry = json.loads(line)
            except ValueError:
                if bot.name in killed and index == len(lines) - 1:
                    verdict.cut += 1
                else:
                    verdict.unexpected.append(f"{bot.name}: not JSON: {line[:300]}")
                continue
            if not isinstance(entry, dict):
                verdict.unexpected.append(f"{bot.name}: not an object: {line[:300]}")
                continue
            level = entry.get("level")
            message = str(entry.get("message", ""))
            if level == "WARNING":
                verdict.warnings += 1
            if _while_away(entry, away) and STORE_TRACE.search(str(entry.get("exc", ""))):
                verdict.store_away += 1
                continue
            if message.startswith("watcher step failed"):
                verdict.steps_failed.append(f"{bot.name}: {message[:200]}")
            if "exc" in entry:
                verdict.unexpected.append(
                    f"{bot.name}: {level} {message[:200]} | {str(entry['exc'])[-600:]}"
                )
            elif level in ("ERROR", "CRITICAL"):
                known = next((e for e in EXPECTED_ERRORS if message.startswith(e)), None)
                if known is not None:
                    verdict.expected[known] += 1
                else:
                    verdict.unexpected.append(f"{bot.name}: {level} {message[:300]}")
    return verdict


def _while_away(entry: dict[str, Any], away: tuple[float, float] | None) -> bool:
    if away is None:
        return False
    try:
        at = datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return away[0] - 1.0 <= at <= away[1] + STORE_SETTLE


def find_secrets(
    secrets: Iterable[str], calls: Iterable[Call], logs: Iterable[tuple[str, str]]
) -> list[str]:
    """Where a secret value appears: in a Slack call's arguments or a line of a (name, log)."""
    values = [v for v in secrets if v]
    found: list[str] = []
    for call in calls:
        text = json.dumps(call.args, ensure_ascii=False, default=str)
        found += [f"{call.method} call names secret {_clip(v)}" for v in values if v in text]
    for name, log_text in logs:
        for number, line in enumerate(log_text.splitlines(), 1):
            found += [f"{name} line {number} names secret {_clip(v)}" for v in values if v in line]
    return found


def _clip(secret: str) -> str:
    # The report must not print what it looks for.
    return f"{secret[:4]}… ({len(secret)} characters)"


# --- faults ----------------------------------------------------------------------------------


class Faults:
    """Draws KPS faults per request and arms Slack failures per call, while `active`."""

    def __init__(self, record: Record, rng: random.Random, settings: SoakSettings) -> None:
        self.active = True
        self._record = record
        self._rng = rng
        self._kps_rate = settings.kps_fault_rate
        self._slack_rate = settings.slack_fault_rate
        self._slack_faults = SLACK_FAULTS + (ODD_SLACK_FAULTS if settings.odd_slack else ())
        self._faulted: set[int] = set()  # ids of the RecordedRequests given a fault

    def pick(self, request: RecordedRequest) -> Fault | None:
        """The simulator's `pick_fault` hook."""
        self._record.kps_requests += 1
        if not self.active or self._rng.random() >= self._kps_rate:
            return None
        kind, fault = self._rng.choice(KPS_FAULTS)
        self._record.kps_faults[kind] += 1
        self._faulted.add(id(request))
        return fault

    def faulted(self, request: RecordedRequest) -> bool:
        """Whether `pick` gave this request a fault."""
        return id(request) in self._faulted

    def on_slack_call(self, slack: FakeSlack) -> Callable[[Call], None]:
        """A stand-in listener that arms a failure for the next call of the same method.

        The stand-in takes a queued failure before anything else and records the call without
        yielding in between, so a failure armed here goes to exactly the next call.
        """

        def arm(method: str) -> None:
            if self.active and self._rng.random() < self._slack_rate:
                status, error, body = self._rng.choice(self._slack_faults)
                slack.fail_next(method, status=status, error=error, retry_after=1, body=body)

        def listen(call: Call) -> None:
            if call.method == "response_url":
                return
            if not call.ok:
                self._record.slack_faults[f"{call.method} {call.status} {call.error}"] += 1
            arm(call.method)

        # The methods the watcher calls may fail on their very first call too.
        for method in ("chat.postMessage", "chat.update"):
            arm(method)
        if self._slack_faults != SLACK_FAULTS:
            # Each odd answer at least once, on the first notices, however short the soak.
            for status, error, body in ODD_SLACK_FAULTS:
                slack.fail_next("chat.postMessage", status=status, error=error, body=body)
        return listen


# --- PostgreSQL for --replicas -----------------------------------------------------------------


@dataclass
class Database:
    """A fresh PostgreSQL database for one soak, and the admin connection that made it."""

    url: str
    name: str
    admin: Any  # asyncpg connection to the admin database

    async def cut_off(self) -> None:
        """The store goes away: its connections are cut and new ones refused."""
        await self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
        await self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.name,
        )

    async def restore(self) -> None:
        """The store is back."""
        await self.admin.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    async def drop(self) -> None:
        """Drop the database and close the admin connection."""
        try:
            await self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await self.admin.close()


async def create_database(admin_database: str) -> Database:
    """A fresh database on the local PostgreSQL."""
    import asyncpg

    admin: Any = None
    last: BaseException | None = None
    for user in ("postgres", getpass.getuser()):
        try:
            admin = await asyncpg.connect(
                host="127.0.0.1", port=5432, user=user, database=admin_database, timeout=3
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            last = error
            continue
        break
    if admin is None:
        raise ConnectionError(f"no PostgreSQL at 127.0.0.1:5432 ({type(last).__name__}: {last})")
    name = f"kps_soak_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    return Database(f"postgresql+asyncpg://{user}@127.0.0.1:5432/{name}", name, admin)


# --- the bots' outbox, read from the side --------------------------------------------------------


class OutboxView:
    """Reads the bots' outbox (bot/store.py tables) to time kills and to explain what waits."""

    def __init__(self, url: str) -> None:
        # pre-ping: its connections are cut too when the soak sends the store away.
        self._engine = create_async_engine(url, pool_pre_ping=True)

    async def close(self) -> None:
        """Close its connections."""
        await self._engine.dispose()

    async def pending(self) -> int:
        """Rows not yet sent (due or deferred)."""
        query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.state == "pending")
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def dead(self) -> int:
        """Rows given up for good: a notice, reply or update that never reached Slack."""
        query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.state == "dead")
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def claimed(self) -> int:
        """Rows a bot has claimed and may be sending right now."""
        query = (
            sa.select(sa.func.count())
            .select_from(outbox)
            .where(
                outbox.c.state == "pending",
                outbox.c.claimed_until.is_not(None),
                outbox.c.claimed_until > time.time(),
            )
        )
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def held(self, pids: Iterable[int]) -> set[str]:
        """Task ids of notices with a row still claimed by one of these (killed) processes.

        A thread reply waits behind earlier rows of its notice, so every task of such a notice
        may be held back until the claim expires (2 minutes, README "Delivery").
        """
        marks = [f"%:{pid}:%" for pid in pids]
        if not marks:
            return set()
        notices = (
            sa.select(outbox.c.notice_id)
            .where(
                outbox.c.state == "pending", sa.or_(*(outbox.c.claimed_by.like(m) for m in marks))
            )
            .distinct()
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(alerts.c.task_id).where(alerts.c.notice_id.in_(notices))
            )
            return {str(r[0]) for r in rows}


# --- the soak --------------------------------------------------------------------------------


class Soak:
    """One soak run; `run()` returns the report."""

    def __init__(self, settings: SoakSettings) -> None:
        self.settings = settings
        self.seed = settings.seed if settings.seed is not None else secrets.randbits(32)
        self.rng = random.Random(self.seed)
        self.record = Record()
        self.faults = Faults(self.record, self.rng, settings)
        self.log_dir = settings.log_dir or Path(tempfile.mkdtemp(prefix="kps-soak-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.tokens: dict[str, str] = {}  # KPS token -> bot process name
        self.bots: list[BotProcess] = []  # every process started, in order
        self.live: list[BotProcess] = []
        self.sim = Simulator(
            project_id=PROJECT_ID,
            static_tokens=[self._token(i) for i in range(2 * (settings.kills + 2))],
        )
        # A bot token of this run's own, so the secret check looks for a value nothing else has.
        self.slack = FakeSlack(bot_token=f"xoxb-soak-{secrets.token_hex(12)}")
        self.state_url = f"sqlite+aiosqlite:///{self.log_dir / 'soak-state.db'}"
        self.database: Database | None = None
        # A kill and its restart, or the store's outage and the moments after it: never both
        # at once. A bot started while the store is away ends its start (as designed), and a
        # bot killed the moment the store is back could not record the outage it lived through.
        self._disruption = asyncio.Lock()
        self._started = 0

    def _token(self, index: int) -> str:
        return f"soak-token-{self.seed:x}-{index}"

    # -- processes ----------------------------------------------------------------------------

    def _start_bot(self) -> BotProcess:
        index = self._started
        self._started += 1
        token = self._token(index)
        name = f"bot-{index + 1}"
        self.tokens[token] = name
        env = bot_environment(
            sim_url=self.sim.url,
            slack_api_url=self.slack.api_url,
            port=free_port(),
            state_url=self.state_url,
            kps_token=token,
            KPS_TIMEOUT_SECONDS=f"{KPS_TIMEOUT:g}",
            SLACK_BOT_TOKEN=self.slack.bot_token,
        )
        bot = start_bot(name, env, self.log_dir)
        self.bots.append(bot)
        self.live.append(bot)
        return bot

    async def _leader(self, client: httpx.AsyncClient) -> BotProcess | None:
        for bot in self.live:
            body = await health(client, bot)
            if body and body.get("watcher") == "leader":
                return bot
        return None

    # -- simulator hooks ----------------------------------------------------------------------

    def _who(self, request: RecordedRequest) -> str:
        return self.tokens.get(request.headers.get("x-auth-token", ""), "?")

    def _before_request(self, request: RecordedRequest) -> Fault | None:
        # Every KPS request passes here on arrival, even one that then times out.
        self.record.last_request[self._who(request)] = time.time()
        return self.faults.pick(request)

    def _after_request(self, request: RecordedRequest) -> None:
        now = time.time()
        who = self._who(request)
        if not request.path.endswith("/running-tasks") or self.faults.faulted(request):
            return
        limit_ms = now * 1000 - STALE_MS - MARGIN_MS
        tasks = self.record.tasks
        stale = frozenset(
            t.task_id
            for t in self.sim.running()
            if t.task_time_ms is not None
            and t.task_time_ms <= limit_ms
            and t.task_id in tasks
            and not tasks[t.task_id].poison
        )
        self.record.listings.append(Listing(now, who, stale))

    # -- workload -----------------------------------------------------------------------------

    def _add(self, kind: str, age_s: float) -> None:
        if self.rng.random() < self.settings.poison:
            self._add_poison(age_s)
            return
        task = self.sim.add_task(
            task_time_ms=int((time.time() - age_s) * 1000),
            server_name=f"{kind}-{len(self.record.tasks):04d}",
            keypair_name=self.rng.choice(("KeyPair-ops-2025", "kp-deploy-ci", "team-sre")),
            operate_type=self.rng.choice(("RUNNING_RESET", "RUNNING_REPLACE", "RUNNING_UNBIND")),
        )
        started = task.task_time_ms or 0
        self.record.tasks[task.task_id] = TaskLife(task.task_id, kind, started)

    def _add_poison(self, age_s: float, what: str | None = None) -> None:
        """A hostile record: the bot must take it, or leave it out, without stopping."""
        n = len(self.record.tasks)
        what = what or self.rng.choice(POISON_KINDS)
        started = int((time.time() - age_s) * 1000)
        fields: dict[str, Any] = {
            "task_time_ms": started,
            "server_name": f"poison-{n:04d}",
            "keypair_name": "kp-poison",
        }
        usable = True
        if what == "odd-id":
            pattern = self.rng.choice(("p\n{n}", "p/../{n}", "p?x=1#{n}", " p {n} ", "p%2F{n}"))
            fields["task_id"] = pattern.format(n=n)
        elif what == "nul":
            fields["server_name"] = f"nul\x00name-{n}"
        elif what == "surrogate":
            fields["server_name"] = f"lone-\ud800-{n}"
            fields["keypair_name"] = "kp-\udfff"
        elif what == "control":
            fields["server_name"] = f"ctl\x1b[31m\u202e\r\n\x07-{n}"
        elif what == "long-name":
            fields["server_name"] = f"long-{n}-" + "L" * 10_000
        elif what == "wrong-type":
            fields["raw"] = self.rng.choice(
                (
                    {"server_name": 12345},
                    {"task_time": {"ms": 1}},
                    {"keypair_name": ["a"]},
                    {"task_id": None},
                    {"task_id": 7},
                    {"operate_type": False},
                )
            )
            usable = False
        elif what == "seconds":
            fields["task_time_ms"] = started // 1000  # read as ms: 1970, refused
            usable = False
        else:  # bad-id: the client takes it; no store can key it, so the scan leaves it out
            fields["task_id"] = self.rng.choice((f"nul\x00id-{n}", f"lone-\udc80-id-{n}"))
            usable = False
        task = self.sim.add_task(**fields)
        self.record.tasks[task.task_id] = TaskLife(
            task.task_id, f"poison-{what}", task.task_time_ms or 0, usable=usable
        )

    def _finish_one(self) -> None:
        running = [t for t in self.sim.running() if t.task_id in self.record.tasks]
        if not running:
            return
        task = self.rng.choice(running)
        failed = self.rng.random() < 0.3
        self.sim.finish_task(
            task.task_id,
            failed=failed,
            error_code="KPS.2008" if failed else None,
            error_msg="the server is not running" if failed else None,
        )
        life = self.record.tasks[task.task_id]
        life.finished_at = time.time()
        life.status = task.status

    async def _churn(self, until: float) -> None:
        if self.settings.poison:
            # One of each kind at once, already stale, so even a short soak meets them all.
            for what in POISON_KINDS:
                self._add_poison(self.rng.uniform(31 * 60, 90 * 60), what)
        burst_at = time.time() + self.rng.uniform(2, max(3.0, (until - time.time()) / 3))
        while time.time() < until:
            roll = self.rng.random()
            if time.time() >= burst_at:
                # More than a notice shows (20): the rest goes to its thread as detail.
                for _ in range(self.rng.randint(21, 30)):
                    self._add("burst", self.rng.uniform(31 * 60, 90 * 60))
                burst_at = time.time() + self.rng.uniform(30, 60)
            elif roll < 0.30:
                self._add("stale", self.rng.uniform(31 * 60, 180 * 60))
            elif roll < 0.40:
                # Crosses the threshold a few seconds from now, while the bot watches.
                self._add("aging", STALE_MINUTES * 60 - self.rng.uniform(1, 6))
            elif roll < 0.55:
                self._add("fresh", self.rng.uniform(0, 20 * 60))
            elif len(self.sim.running()) > 0:
                self._finish_one()
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))

    # -- kills --------------------------------------------------------------------------------

    async def _quiet_kill(self, victim: BotProcess, view: OutboxView, patience: float) -> Kill:
        """SIGKILL `victim` when no outbox row is claimed and no Slack call came meanwhile."""
        deadline = time.monotonic() + patience
        while True:
            calls_before = len(self.slack.calls)
            claimed = await view.claimed()
            # No await from here to the kill: nothing can reach the stand-in in between.
            quiet = not claimed and len(self.slack.calls) == calls_before
            if quiet or time.monotonic() > deadline:
                victim.kill()
                kill = Kill(time.time(), victim.name, quiet, victim.popen.pid)
                break
            await asyncio.sleep(0.02)
        self.record.kills.append(kill)
        await victim.exited()
        self.live.remove(victim)
        return kill

    async def _killer(self, client: httpx.AsyncClient, view: OutboxView, start: float) -> None:
        seconds = self.settings.seconds
        kills = self.settings.kills
        for n in range(1, kills + 1):
            at = start + seconds * n / (kills + 1) + self.rng.uniform(-0.5, 0.5)
            await asyncio.sleep(max(0.0, at - time.time()))
            async with self._disruption:
                victim = await self._leader(client) if self.settings.replicas else None
                victim = victim or self.live[0]
                await self._quiet_kill(victim, view, patience=10.0)
                await wait_role(client, self._start_bot(), ["leader", "standby"])
                # A standby's failed steps are its own (bot/watcher.py): the outage must meet
                # a leader, once the killed one's lease has expired.
                for _ in range(300):  # 30 s at most
                    if await self._leader(client) is not None:
                        break
                    await asyncio.sleep(0.1)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> SoakReport:
        """Start everything, churn with faults and kills, catch up, stop, and judge."""
        if self.settings.replicas or self.settings.store_outage:
            self.database = await create_database(self.settings.pg_admin_database)
            self.state_url = self.database.url
        self.sim.pick_fault = self._before_request
        self.sim.after_request = self._after_request
        self.slack.subscribe(self.faults.on_slack_call(self.slack))
        view = OutboxView(self.state_url)
        try:
            async with self.sim, self.slack, httpx.AsyncClient(timeout=2) as client:
                try:
                    await self._soak(client, view)
                finally:
                    for bot in self.live:
                        bot.popen.terminate()
                    for bot in self.live:
                        self.record.exits[bot.name] = await bot.terminate()
                    for bot in self.bots:
                        bot.kill()
                until = time.time()
                calls = list(self.slack.calls)
                held = await view.held(k.pid for k in self.record.kills)
                self.record.dead_rows = await view.dead()
        finally:
            await view.close()
            if self.database is not None:
                await self.database.drop()
        return self._report(calls, until, held)

    async def _soak(self, client: httpx.AsyncClient, view: OutboxView) -> None:
        first = self._start_bot()
        if self.settings.replicas:
            second = self._start_bot()
        await wait_role(client, first, ["leader", "standby"])
        if self.settings.replicas:
            await wait_role(client, second, ["leader", "standby"])
        start = time.time()
        self.record.started = start
        killer = asyncio.create_task(self._killer(client, view, start))
        outage = asyncio.create_task(self._outage(start))
        try:
            await self._churn(start + self.settings.seconds)
            await killer
            await outage
        finally:
            killer.cancel()
            outage.cancel()
        self.record.churn_ended = time.time()
        self.faults.active = False
        await self._catch_up(view)

    async def _outage(self, start: float) -> None:
        """Send the store away once, 30 % into the churn, for `store_outage` seconds.

        With the default three kills (at 25, 50 and 75 %) and 120 s, it falls between two.
        """
        seconds = self.settings.store_outage
        if not seconds or self.database is None:
            return
        await asyncio.sleep(max(0.0, start + self.settings.seconds * 0.3 - time.time()))
        async with self._disruption:
            away = time.time()
            await self.database.cut_off()
            try:
                await asyncio.sleep(seconds)
            finally:
                await self.database.restore()
                self.record.store_away = (away, time.time())
            await asyncio.sleep(3.0)  # a few scans with the store back before any kill

    async def _catch_up(self, view: OutboxView) -> None:
        """Wait until every check could pass (or `drain` runs out), then `settle` more."""
        deadline = time.monotonic() + self.settings.drain
        while time.monotonic() < deadline:
            if await self._caught_up(view):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(self.settings.settle)

    async def _caught_up(self, view: OutboxView) -> bool:
        # A bot restarted late in the churn (or back from a store outage) may not have scanned
        # yet: nothing is owed before its first complete scan, so "caught up" would be vacuous.
        since = self.record.churn_ended or 0.0
        if not any(
            listing.time > since and self.record.last_request.get(listing.who, 0.0) > listing.time
            for listing in self.record.listings
        ):
            return False
        seen = mentions(self.slack.calls)
        announced = {m.task_id for m in seen if is_announcement(m)}
        resolved = {m.task_id for m in seen if is_resolution(m)}
        if not must_announce(self.record) <= announced:
            return False
        ended = {t.task_id for t in self.record.tasks.values() if t.finished_at is not None}
        if not (ended & announced) <= resolved:
            return False
        return not await view.pending()

    def _report(self, calls: list[Call], until: float, held: set[str]) -> SoakReport:
        record = self.record
        settings = self.settings
        checks, repeats = judge(record, calls, until, held)
        killed = {k.victim for k in record.kills}
        logs = read_logs(self.bots, killed, record.store_away)
        expected = ", ".join(f"{n}x {what!r}" for what, n in logs.expected.items()) or "none"
        checks.append(
            Check(
                "no unhandled exception in the bots' logs",
                not logs.unexpected,
                f"{logs.lines} lines from {len(self.bots)} processes, {logs.warnings} warnings;"
                f" expected errors: {expected}; unexpected: {len(logs.unexpected)}"
                + "".join(f"\n      {u}" for u in logs.unexpected[:5])
                + (f"; {logs.cut} last line(s) cut by SIGKILL" if logs.cut else ""),
            )
        )
        checks.append(
            Check(
                "no watcher step failed (a poison record would fail it), the store's outage"
                " excepted",
                not logs.steps_failed,
                f"{len(logs.steps_failed)} failed steps"
                + "".join(f"\n      {u}" for u in logs.steps_failed[:5])
                + f"; {logs.store_away} store errors logged while the store was away",
            )
        )
        if record.store_away is not None:
            told = [
                c
                for c in calls
                if c.method == "chat.postMessage"
                and c.ok
                and c.time > record.store_away[0]
                and IMPAIRED in json.dumps(c.args.get("blocks"), ensure_ascii=False)
            ]
            checks.append(
                Check(
                    "the store's outage was told in the channel (an impaired notice)",
                    bool(told),
                    f"{len(told)} impaired notices after the store went away",
                )
            )
        leaks = find_secrets(
            [self.slack.bot_token, SIGNING_SECRET, *self.tokens],
            calls,
            ((bot.name, bot.log_text()) for bot in self.bots),
        )
        checks.append(
            Check(
                "no configured secret in any Slack call or log line",
                not leaks,
                f"{len(self.tokens) + 2} secret values looked for; found {len(leaks)}"
                + "".join(f"\n      {u}" for u in leaks[:5]),
            )
        )
        checks.append(
            Check(
                "nothing dropped: no outbox row given up",
                record.dead_rows == 0,
                f"{record.dead_rows} rows given up",
            )
        )
        bad_exits = {name: code for name, code in record.exits.items() if code != 0}
        checks.append(
            Check(
                "SIGTERM stops every running bot with exit status 0",
                bool(record.exits) and not bad_exits,
                f"exit statuses {record.exits}",
            )
        )
        kinds = Counter(t.kind for t in record.tasks.values() if not t.poison)
        poison = Counter(t.kind.removeprefix("poison-") for t in record.tasks.values() if t.poison)
        done = [t for t in record.tasks.values() if t.finished_at is not None]
        failed = sum(1 for t in done if (t.status or "").startswith("FAILED"))
        faults = sum(record.kps_faults.values())
        slack_calls = [c for c in calls if c.method != "response_url"]
        slack_bad = sum(record.slack_faults.values())
        by_method = Counter(c.method for c in slack_calls)
        churn = (record.churn_ended or until) - record.started
        if settings.replicas:
            setup = "two replicas sharing PostgreSQL"
        else:
            setup = "one bot, PostgreSQL" if self.database is not None else "one bot, SQLite"
        lines = [
            f"fault soak: {churn:.0f} s of churn, then {until - (record.churn_ended or until):.0f}"
            f" s to catch up and stop; seed {self.seed}",
            f"setup: {setup}; {len(self.bots)} bot processes in all; POLL_INTERVAL_SECONDS=1,"
            f" KPS_TIMEOUT_SECONDS={KPS_TIMEOUT:g}",
            f"tasks: {len(record.tasks)} added ({_counts(kinds)}); {len(done)} finished"
            f" ({len(done) - failed} succeeded, {failed} failed)",
            f"poison records: {sum(poison.values())} ({_counts(poison)})",
            f"KPS: {record.kps_requests} requests, {faults} given a fault"
            f" ({_share(faults, record.kps_requests)}): {_counts(record.kps_faults)};"
            f" {len(record.listings)} good running-task answers",
            f"Slack: {len(slack_calls)} Web API calls ({_counts(by_method)}), {slack_bad} refused"
            f" ({_share(slack_bad, len(slack_calls))}): {_counts(record.slack_faults)}",
            "kills: "
            + (
                ", ".join(
                    f"{k.victim} at {k.at - record.started:.1f} s"
                    f" ({'quiet' if k.quiet else 'NOT quiet: a row was claimed'})"
                    for k in record.kills
                )
                or "none"
            )
            + f"; restarted {len(record.kills)}",
            "store away: "
            + (
                f"{record.store_away[1] - record.store_away[0]:.1f} s from"
                f" {record.store_away[0] - record.started:.1f} s"
                if record.store_away
                else "never"
            ),
        ]
        return SoakReport(settings, self.seed, lines, checks, repeats, self.log_dir)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "–"


async def run_soak(settings: SoakSettings) -> SoakReport:
    """Run one soak and return its report."""
    return await Soak(settings).run()


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.soak [--seconds 120] [--short] [--replicas] [--seed N]`."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Fault soak: the real bot against a failing KPS and Slack, killed 3 times.",
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="churn time (120)")
    parser.add_argument("--short", action="store_true", help="20 s, as the test suite runs it")
    parser.add_argument("--replicas", action="store_true", help="two bots sharing PostgreSQL")
    parser.add_argument(
        "--poison",
        action="store_true",
        help="5 %% poison records, odd Slack answers, the store (PostgreSQL) away for 20 s",
    )
    parser.add_argument("--seed", type=int, help="random seed, to repeat a run's choices")
    parser.add_argument("--logs", type=Path, help="where the bots' logs go (a temp dir)")
    args = parser.parse_args(argv)
    make = SoakSettings.poisoned if args.poison else SoakSettings
    settings = make(
        seconds=20.0 if args.short else args.seconds,
        replicas=args.replicas,
        seed=args.seed,
        log_dir=args.logs,
    )
    report = asyncio.run(run_soak(settings))
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
