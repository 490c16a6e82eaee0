"""The short fault soak, the soak's own checks, and regression tests for what the soak found."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from bench.notices import CHANNEL
from bench.soak import (
    POISON_KINDS,
    Kill,
    Listing,
    Record,
    SoakSettings,
    TaskLife,
    find_secrets,
    judge,
    read_logs,
    run_soak,
)
from bot.kps import KPSClient
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Fault, RecordedRequest, Simulator
from bot.store import Store
from tests.conftest import ALERTS, PROJECT, TOKEN
from tests.watching import Clock, add_stale, make_watcher, shown, top_level

# --- the soak itself ---------------------------------------------------------------------------


async def test_short_fault_soak_passes_every_check(tmp_path: Path) -> None:
    """20 s: KPS failing 20 %, Slack 10 %, three SIGKILLs; see bench/soak.py for the checks."""
    report = await run_soak(SoakSettings(seconds=20.0, log_dir=tmp_path))
    assert report.ok, report.text()
    assert len(report.checks) == 8
    # The soak did what it says: faults were drawn, kills happened, tasks were announced.
    assert "restarted 3" in report.text()


async def test_poison_soak_never_stops_a_scan_and_leaks_nothing(tmp_path: Path) -> None:
    """Poison records (every kind, then 5 %) and odd Slack answers, over KPS faults and a kill.

    The store's outage is the next test's, so a failure here is the records' or Slack's.
    """
    settings = SoakSettings.poisoned(
        seconds=12.0, kills=1, store_outage=0.0, slack_fault_rate=0.2, log_dir=tmp_path
    )
    report = await run_soak(settings)
    assert report.ok, report.text()
    # The soak did what it says: every kind of poison was served, every odd Slack answer given.
    (poison,) = [line for line in report.lines if line.startswith("poison records: ")]
    assert all(f"{what} " in poison for what in POISON_KINDS), poison
    (slack,) = [line for line in report.lines if line.startswith("Slack: ")]
    for odd in ("200 html body", "200 garbage body", "200 array body", "500 internal_error"):
        assert f"chat.postMessage {odd}" in slack, slack


async def test_poison_soak_with_the_store_away(tmp_path: Path, pg_url: str) -> None:
    """The store (PostgreSQL) cut off and refusing connections for 6 s mid-soak, with odd Slack
    answers: no step fails but while it is away, nothing is dropped, every stale task is told.
    `pg_url` only makes the test skip (or fail under REQUIRE_POSTGRES=1) without PostgreSQL."""
    settings = SoakSettings.poisoned(
        seconds=12.0, kills=1, poison=0.0, store_outage=6.0, log_dir=tmp_path
    )
    report = await run_soak(settings)
    assert report.ok, report.text()
    assert "store away: 6." in report.text()


# --- the soak's checks can fail --------------------------------------------------------------

A = "a0000000-0000-4000-8000-000000000001"
B = "b0000000-0000-4000-8000-000000000002"


def post(at: float, *lines: str, thread: str | None = None) -> Call:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": line}} for line in lines]
    args: dict[str, Any] = {"channel": CHANNEL, "blocks": blocks}
    if thread:
        args["thread_ts"] = thread
    return Call("chat.postMessage", args, None, at, "/api/chat.postMessage")


def running(task_id: str) -> str:
    return f":hourglass_flowing_sand: *web* · key pair `kp` · running *45 min* · task `{task_id}`"


def ended(task_id: str, status: str) -> str:
    return f":white_check_mark: *web* · key pair `kp` · done (`{status}`) · task `{task_id}`"


def record_with(*, finished: bool = True) -> Record:
    record = Record(started=0.0)
    record.tasks[A] = TaskLife(
        A, "stale", started_ms=-31 * 60_000, finished_at=50.0 if finished else None
    )
    record.tasks[A].status = "SUCCESS_RESET" if finished else None
    record.listings.append(Listing(10.0, "bot-1", frozenset({A})))
    record.last_request["bot-1"] = 11.0
    return record


def verdicts(record: Record, calls: list[Call]) -> list[bool]:
    checks, _ = judge(record, calls, until=100.0, held=set())
    return [c.ok for c in checks]


def test_the_checks_pass_on_a_clean_record() -> None:
    calls = [post(12.0, running(A)), post(60.0, ended(A, "SUCCESS_RESET"), thread="1.0")]
    assert verdicts(record_with(), calls) == [True, True, True]


def test_a_stale_task_never_announced_fails() -> None:
    assert verdicts(record_with(finished=False), []) == [False, True, True]


def test_a_repeat_right_after_the_store_went_away_is_reported_not_failed() -> None:
    calls = [post(12.0, running(A)), post(30.0, running(A))]
    record = record_with(finished=False)
    record.store_away = (14.0, 20.0)  # too late after the first post to explain it
    assert verdicts(record, calls) == [False, True, True]
    record.store_away = (12.4, 20.0)
    checks, repeats = judge(record, calls, until=100.0, held=set())
    assert checks[0].ok
    assert len(repeats) == 1 and "the outbox could not mark it sent" in repeats[0]
    record.store_away = (10.0, 13.0)  # accepted while the store was away
    assert judge(record, calls, until=100.0, held=set())[0][0].ok


def test_a_task_announced_twice_fails_unless_a_kill_explains_it() -> None:
    calls = [post(12.0, running(A)), post(30.0, running(A))]
    record = record_with(finished=False)
    assert verdicts(record, calls) == [False, True, True]
    record.kills.append(Kill(12.2, "bot-1", quiet=False, pid=1))
    checks, repeats = judge(record, calls, until=100.0, held=set())
    assert checks[0].ok
    assert len(repeats) == 1 and "before the SIGKILL of bot-1" in repeats[0]


def test_a_wrong_missing_or_doubled_resolution_fails() -> None:
    notice = post(12.0, running(A))
    unknown = ":black_square_for_stop: *web* · no longer running (outcome unknown) · task"
    assert verdicts(record_with(), [notice])[1] is False
    assert verdicts(record_with(), [notice, post(60.0, f"{unknown} `{A}`", thread="1")]) == [
        True,
        False,
        True,
    ]
    twice = [post(60.0 + i, ended(A, "SUCCESS_RESET"), thread="1") for i in range(2)]
    assert verdicts(record_with(), [notice, *twice])[1] is False


def test_naming_an_unusable_poison_record_fails() -> None:
    record = record_with(finished=False)
    record.tasks[A].usable = False  # say, a task_time in seconds
    assert verdicts(record, [post(12.0, running(A))])[2] is False


def test_a_secret_in_a_slack_call_or_a_log_line_is_found() -> None:
    token = "xoxb-secret-value"
    clean = [post(1.0, running(A))]
    assert find_secrets([token, ""], clean, [("bot-1", '{"message": "listening"}')]) == []
    leaked = [post(2.0, f"error: invalid token {token}")]
    (found,) = find_secrets([token], leaked, [])
    assert "chat.postMessage" in found and token not in found
    (found,) = find_secrets([token], [], [("bot-2", f'one\n{{"message": "auth {token}"}}')])
    assert found.startswith("bot-2 line 2") and token not in found


def test_store_errors_while_the_store_is_away_are_expected_and_counted_apart(
    tmp_path: Path,
) -> None:
    from bench.notices import BotProcess

    trace = "Traceback ...\nsqlalchemy.exc.InterfaceError: connection is closed"
    lines = [
        {
            "time": "2026-01-01T00:00:05.000Z",
            "level": "ERROR",
            "message": "watcher step failed",
            "exc": trace,
        },
        {
            "time": "2026-01-01T00:00:40.000Z",
            "level": "ERROR",
            "message": "watcher step failed",
            "exc": trace,
        },
        {
            "time": "2026-01-01T00:00:06.000Z",
            "level": "ERROR",
            "message": "watcher step failed",
            "exc": "Traceback ...\nKeyError: 'a bug'",
        },
    ]
    log = tmp_path / "bot-1.log"
    log.write_text("\n".join(json.dumps(x) for x in lines))
    bot = BotProcess("bot-1", 0, log, popen=None)  # type: ignore[arg-type]  # never started
    start = 1767225600.0  # 2026-01-01T00:00:00Z
    verdict = read_logs([bot], killed=set(), away=(start + 4, start + 10))
    assert verdict.store_away == 1
    assert len(verdict.steps_failed) == 2  # after the outage, and a bug during it
    assert len(verdict.unexpected) == 2
    assert len(read_logs([bot], killed=set()).steps_failed) == 3


def test_naming_a_task_never_stale_or_ending_a_running_one_fails() -> None:
    record = record_with(finished=False)
    record.tasks[B] = TaskLife(B, "fresh", started_ms=99_000)  # 1 s old at the end
    calls = [post(12.0, running(A), running(B))]
    assert verdicts(record, calls)[2] is False
    calls = [post(12.0, running(A)), post(20.0, ended(A, "SUCCESS_RESET"), thread="1")]
    assert verdicts(record, calls)[2] is False


def test_a_row_held_by_a_killed_process_is_reported_not_failed() -> None:
    checks, _ = judge(record_with(finished=False), [], until=100.0, held={A})
    assert checks[0].ok and "waiting behind a row a killed process had claimed" in checks[0].detail


def test_the_log_check_counts_tracebacks_errors_and_foreign_lines(tmp_path: Path) -> None:
    from bench.notices import BotProcess

    lines = [
        {"level": "INFO", "message": "listening"},
        {"level": "WARNING", "message": "KPS call failed, retrying"},
        {"level": "ERROR", "message": "watching is impaired: 3 scans failed in a row"},
        {"level": "ERROR", "message": "unhandled error in a listener", "exc": "Traceback ..."},
        {"level": "WARNING", "message": "could not renew", "exc": "Traceback ..."},
    ]
    log = tmp_path / "bot-1.log"
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nTraceback (most recent")
    bot = BotProcess("bot-1", 0, log, popen=None)  # type: ignore[arg-type]  # never started
    verdict = read_logs([bot], killed=set())
    assert verdict.expected["watching is impaired"] == 1
    assert len(verdict.unexpected) == 3 and verdict.warnings == 2
    # A last line cut short by SIGKILL is not held against the bot.
    assert len(read_logs([bot], killed={"bot-1"}).unexpected) == 2


# --- the simulator's pick_fault hook (added for the soak) --------------------------------------


async def test_pick_fault_draws_a_fault_per_kps_request_after_queued_ones(sim: Simulator) -> None:
    asked: list[str] = []

    def pick(request: RecordedRequest) -> Fault | None:
        asked.append(request.path)
        return Fault("status", status=503) if len(asked) % 2 else None

    sim.pick_fault = pick
    sim.inject(Fault("status", status=502, times=1))
    url = f"{sim.url}/v3/{PROJECT}/running-tasks"
    async with httpx.AsyncClient(headers={"X-Auth-Token": TOKEN}) as client:
        statuses = [(await client.get(url)).status_code for _ in range(4)]
        assert (await client.get(f"{sim.url}/_sim/stats")).status_code == 200
    assert statuses == [502, 503, 200, 503]  # the queued fault first, without asking
    assert len(asked) == 3  # admin requests never ask


# --- found by the soak: a failed status lookup is not an unknown outcome --------------------------


async def test_a_failed_lookup_waits_for_the_next_scan_instead_of_saying_unknown(
    sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim.tasks = []
    (task,) = add_stale(sim, 1)
    watcher = make_watcher(store, kps_client, slack_client)
    await watcher.scan()
    await watcher.deliver()
    (notice,) = top_level(slack)

    sim.finish_task(task.task_id)
    # KPS answers the status lookup with a body that is not JSON (not retried: KPSBadResponse).
    sim.inject(Fault("garbage", path=f"/v3/{PROJECT}/tasks/", times=1))
    assert (await watcher.scan()).ended == 0
    await watcher.deliver()
    assert slack.thread(ALERTS, notice["ts"]) == []

    assert (await watcher.scan()).ended == 1
    await watcher.deliver()
    (reply,) = slack.thread(ALERTS, notice["ts"])
    assert "(`SUCCESS_RESET`)" in shown(reply) and "outcome unknown" not in shown(reply)


async def test_a_lookup_failing_past_the_grace_period_ends_as_unknown(
    sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim.tasks = []
    (task,) = add_stale(sim, 1)
    clock = Clock()
    watcher = make_watcher(
        store, kps_client, slack_client, clock=clock, running_grace=timedelta(minutes=3)
    )
    await watcher.scan()
    await watcher.deliver()
    (notice,) = top_level(slack)

    sim.finish_task(task.task_id)
    sim.inject(Fault("status", status=500, path=f"/v3/{PROJECT}/tasks/", times=-1))
    assert (await watcher.scan()).ended == 0
    clock.advance(60)
    assert (await watcher.scan()).ended == 0  # still within the grace period
    clock.advance(150)
    assert (await watcher.scan()).ended == 1
    await watcher.deliver()
    (reply,) = slack.thread(ALERTS, notice["ts"])
    assert "no longer running (outcome unknown)" in shown(reply)
