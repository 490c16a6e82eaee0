"""The watcher's pure decisions: stale, newly stale, gone, how it ended, reminders, impaired."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.alerts import Alert, Notice, NoticeState, WatchState
from bot.blockkit import ViewContext
from bot.blocks import HomeSummary, PageRef, build_home, build_page
from bot.listing import census
from bot.stale import (
    Finding,
    as_alert,
    decide_endings,
    due_reminders,
    lease_ttl,
    newly_impaired,
    newly_stale,
    reconcile,
    stale_tasks,
)
from bot.tasks import Task, TaskStatus

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
THIRTY = timedelta(minutes=30)


def task(task_id: str, age: timedelta | None, name: str = "web-01") -> Task:
    started = None if age is None else NOW - age
    return Task(task_id, "RUNNING_RESET", started, name, f"srv-{task_id}", "kp-ops")


def alert(task_id: str, *, notice: int = 1, missing_since: datetime | None = None) -> Alert:
    base = as_alert(task(task_id, timedelta(minutes=40)), now=NOW - timedelta(minutes=10))
    return replace(base, notice_id=notice, missing_since=missing_since)


def test_stale_means_at_least_the_threshold_and_needs_a_start_time() -> None:
    tasks = [
        task("young", THIRTY - timedelta(seconds=1)),
        task("exact", THIRTY),
        task("old", timedelta(hours=5)),
        task("undated", None),
        task("future", -timedelta(minutes=5)),
    ]
    found = stale_tasks(tasks, now=NOW, stale_after=THIRTY)
    assert [t.task_id for t in found] == ["old", "exact"]  # oldest first


def test_newly_stale_skips_announced_and_repeated_ids() -> None:
    stale = [task("a", THIRTY), task("b", THIRTY), task("a", THIRTY), task("c", THIRTY)]
    assert [t.task_id for t in newly_stale(stale, {"b"})] == ["a", "c"]
    assert newly_stale(stale, {"a", "b", "c"}) == []


def test_reconcile_finds_gone_and_returned_tasks() -> None:
    open_alerts = [
        alert("listed"),
        alert("gone"),
        alert("back", missing_since=NOW - timedelta(minutes=1)),
    ]
    found = reconcile(open_alerts, {"listed", "back", "unrelated"})
    assert [a.task_id for a in found.gone] == ["gone"]
    assert found.back == ("back",)


def test_endings_say_what_kps_said_and_never_guess() -> None:
    gone = [alert(i) for i in ("ok", "bad", "lost", "odd", "later")]
    findings = {
        "ok": Finding("ok", TaskStatus("ok", "s", "SUCCESS_RESET")),
        "bad": Finding(
            "bad", TaskStatus("bad", "s", "FAILED_REPLACE"), "KPS.0001", "agent not running"
        ),
        "lost": Finding("lost", None),  # 404 or an error: unknown
        "odd": Finding("odd", TaskStatus("odd", "s", "SOMETHING_NEW")),
        # "later" was not looked up this scan: it waits
    }
    endings = decide_endings(gone, findings, now=NOW, grace=timedelta(minutes=3))
    by_id = {e.task_id: e for e in endings.ended}
    assert set(by_id) == {"ok", "bad", "lost", "odd"}
    assert by_id["ok"].outcome == "SUCCESS_RESET" and by_id["ok"].error_code is None
    assert (by_id["bad"].outcome, by_id["bad"].error_code, by_id["bad"].error_msg) == (
        "FAILED_REPLACE",
        "KPS.0001",
        "agent not running",
    )
    assert by_id["lost"].outcome is None
    assert by_id["odd"].outcome == "SOMETHING_NEW"
    assert all(e.finished_at == NOW for e in endings.ended)
    assert endings.missing == ()


def test_a_gone_task_kps_still_calls_running_gets_a_grace_period() -> None:
    grace = timedelta(minutes=3)
    running = TaskStatus("t", "s", "RUNNING_RESET")
    first = decide_endings([alert("t")], {"t": Finding("t", running)}, now=NOW, grace=grace)
    assert first.ended == () and first.missing == ("t",)
    within = alert("t", missing_since=NOW - timedelta(minutes=2))
    again = decide_endings([within], {"t": Finding("t", running)}, now=NOW, grace=grace)
    assert again.ended == () and again.missing == ("t",)
    past = alert("t", missing_since=NOW - timedelta(minutes=4))
    ready = TaskStatus("t", "s", "READY_RESET")
    late = decide_endings([past], {"t": Finding("t", ready)}, now=NOW, grace=grace)
    assert [(e.task_id, e.outcome) for e in late.ended] == [("t", None)]


def notice_state(**changes: object) -> NoticeState:
    notice = Notice(
        id=1, kind="stale", channel="C0ALERTS", ts="1.0", created_at=NOW - timedelta(hours=3)
    )
    notice = replace(notice, posted_at=notice.created_at, **changes)  # type: ignore[arg-type]
    return NoticeState(notice, (alert("a"),))


def test_reminders_follow_interval_ack_and_snooze() -> None:
    hour = timedelta(hours=1)
    assert due_reminders([notice_state()], now=NOW, every=None) == []
    assert len(due_reminders([notice_state()], now=NOW, every=hour)) == 1
    recent = notice_state(reminded_at=NOW - timedelta(minutes=30))
    assert due_reminders([recent], now=NOW, every=hour) == []
    acked = notice_state(acked_by="U1", acked_at=NOW - hour)
    assert due_reminders([acked], now=NOW, every=hour) == []
    snoozed = notice_state(snoozed_until=NOW + timedelta(minutes=5))
    assert due_reminders([snoozed], now=NOW, every=hour) == []
    woke = notice_state(snoozed_until=NOW - timedelta(minutes=5))
    assert len(due_reminders([woke], now=NOW, every=hour)) == 1
    unposted = notice_state(ts=None)
    assert due_reminders([unposted], now=NOW, every=hour) == []
    finished = replace(
        notice_state(), alerts=(replace(alert("a"), finished_at=NOW, outcome="SUCCESS_RESET"),)
    )
    assert due_reminders([finished], now=NOW, every=hour) == []


def test_impaired_once_the_streak_reaches_the_threshold() -> None:
    assert not newly_impaired(WatchState(failures=2), after=3)
    assert newly_impaired(WatchState(failures=3), after=3)
    assert newly_impaired(WatchState(failures=4), after=3)
    assert not newly_impaired(WatchState(failures=5, impaired=True), after=3)


def test_lease_lasts_three_polls_and_at_least_five_seconds() -> None:
    assert lease_ttl(60) == 180
    assert lease_ttl(1) == 5


@pytest.mark.parametrize("offset", [-1, 0, 1])
@pytest.mark.parametrize("naive", [False, True])
def test_watcher_page_and_home_agree_at_the_threshold(offset: int, naive: bool) -> None:
    # One rule (bot.tasks.is_stale) behind all three surfaces: a task one second either side of
    # STALE_AFTER is stale everywhere or nowhere. KPS times may arrive naive (taken as UTC).
    started = NOW - THIRTY - timedelta(seconds=offset)
    if naive:
        started = started.replace(tzinfo=None)
    t = Task("edge", "RUNNING_RESET", started, "web-01", "srv-edge", "kp-ops")
    expected = offset >= 0
    ctx = ViewContext(project_id="p", region=None, now=NOW, stale_after=THIRTY)

    watcher = bool(stale_tasks([t], now=NOW, stale_after=THIRTY))
    page = build_page([t], total=1, ref=PageRef(), ctx=ctx)
    marked = ":warning: *stale*" in json.dumps(page.as_payload()["blocks"], ensure_ascii=False)
    counts = census([t], now=NOW, stale_after=THIRTY)
    home = build_home(HomeSummary(counts.running, counts.stale, counts.oldest, NOW), ctx)
    home_count = f"*{int(expected)}* stale" in json.dumps(home["blocks"], ensure_ascii=False)

    assert (watcher, marked, counts.stale == 1) == (expected, expected, expected)
    assert home_count


def test_a_queued_task_is_never_stale_and_is_counted_apart() -> None:
    # Issue 10: a READY_x task is listed under running-tasks but has not started; its wait is
    # not a stuck operation, on any surface.
    queued = Task("q", "READY_RESET", NOW - timedelta(hours=3), "web-01", "srv-q", "kp-ops")
    running = task("r", timedelta(hours=1))
    ctx = ViewContext(project_id="p", region=None, now=NOW, stale_after=THIRTY)

    assert queued.queued and not running.queued
    assert [t.task_id for t in stale_tasks([queued, running], now=NOW, stale_after=THIRTY)] == ["r"]
    counts = census([queued, running], now=NOW, stale_after=THIRTY)
    assert (counts.running, counts.queued, counts.stale) == (1, 1, 1)
    assert counts.oldest == running  # the queued one is older, but has not started
    page = build_page([queued], total=1, ref=PageRef(), ctx=ctx)
    assert "stale" not in json.dumps(page.as_payload()["blocks"], ensure_ascii=False)
    only = census([queued], now=NOW, stale_after=THIRTY)
    assert (only.running, only.queued, only.stale, only.oldest) == (0, 1, 0, None)
