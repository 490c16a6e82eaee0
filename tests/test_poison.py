"""Poison records against a real scan: the simulator serves them, a SQLite file keeps state.

One bad record must never stop a scan (issue 10, item 2): it is left out, counted and logged
once, a task whose record turned bad is not taken as ended, and the scan goes on to announce
and end every other task.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from bot.auth import StaticTokenAuth
from bot.kps import Deadlines, KPSClient, RetryPolicy
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from bot.scan import shown_id, untrackable
from bot.secret import Secret
from bot.store import Store
from tests.conftest import ALERTS, PROJECT, TOKEN
from tests.watching import add_stale, make_watcher, ok_posts, shown, started_ms, top_level

LEFT_OUT = "left out a task record KPS sent"


def told(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(LEFT_OUT)]


# --- odd but valid ids go through the whole life of a notice ----------------------------------


async def test_a_task_id_with_a_newline_is_announced_ended_and_later_tasks_still_announced(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim = empty_sim
    odd = sim.add_task(
        task_id="task\nwith-a-newline", task_time_ms=started_ms(50), server_name="odd-newline"
    )
    others = [
        sim.add_task(task_id=task_id, task_time_ms=started_ms(40), server_name=f"odd-{n}")
        for n, task_id in enumerate(("a/b?c#d", "..", " spaced ", "%2F", "tab\there"))
    ]
    # A record the client rejects sits in the list the whole time.
    sim.add_task(task_time_ms=started_ms(60), raw={"server_name": 42})
    watcher = make_watcher(store, kps_client, slack_client)

    first = await watcher.scan()
    assert (first.ok, first.announced, first.rejected) == (True, 6, 1)
    await watcher.deliver()
    (notice,) = top_level(slack)
    assert "odd-newline" in shown(notice)

    sim.finish_task(odd.task_id)
    sim.finish_task(others[1].task_id, failed=True, error_code="KPS.2034", error_msg="agent down")
    ended = await watcher.scan()
    assert (ended.ok, ended.ended) == (True, 2)
    await watcher.deliver()
    (reply,) = slack.thread(ALERTS, notice["ts"])
    said = shown(reply)
    assert "odd-newline" in said and "(`SUCCESS_RESET`)" in said
    assert "(`FAILED_RESET`): `KPS.2034 agent down`" in said
    assert "outcome unknown" not in said

    (late,) = add_stale(sim, 1, server_name="late-normal")
    again = await watcher.scan()
    assert (again.ok, again.announced, again.ended) == (True, 1, 0)
    await watcher.deliver()
    notices = top_level(slack)
    assert len(notices) == 2 and late.task_id in shown(notices[1])
    assert (await watcher.scan()).ended == 0  # the endings were told once


async def test_an_announced_task_whose_record_turns_bad_is_not_ended(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    (task, other) = add_stale(empty_sim, 2)
    watcher = make_watcher(store, kps_client, slack_client)
    assert (await watcher.scan()).announced == 2
    await watcher.deliver()
    (notice,) = top_level(slack)

    task.raw = {"keypair_name": ["not", "a", "string"], "task_time": True}
    for _ in range(3):
        result = await watcher.scan()
        assert (result.ok, result.ended, result.rejected) == (True, 0, 1)
    assert len(await store.open_alerts()) == 2
    assert slack.thread(ALERTS, notice["ts"]) == []

    empty_sim.finish_task(task.task_id)  # gone from the list: now it has ended
    result = await watcher.scan()
    assert (result.ok, result.ended, result.rejected) == (True, 1, 0)
    await watcher.deliver()
    (reply,) = slack.thread(ALERTS, notice["ts"])
    assert task.task_id in shown(reply) and other.task_id not in shown(reply)


# --- records the client or the scan cannot use ------------------------------------------------


async def test_a_task_time_in_seconds_is_rejected_logged_once_and_not_announced(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seconds = empty_sim.add_task(task_time_ms=1_700_000_000, server_name="in-seconds")
    (normal,) = add_stale(empty_sim, 1)
    watcher = make_watcher(store, kps_client, slack_client)
    with caplog.at_level(logging.WARNING, logger="bot.scan"):
        for n in range(6):
            result = await watcher.scan()
            assert (result.ok, result.rejected) == (True, 1)
            assert result.announced == (1 if n == 0 else 0)
            await watcher.deliver()
    (line,) = told(caplog)
    assert "'task_time' 1700000000 is not a plausible start time" in line.getMessage()
    assert seconds.task_id in line.getMessage()
    (notice,) = top_level(slack)
    assert normal.task_id in shown(notice)
    assert "in-seconds" not in shown(notice) and seconds.task_id not in shown(notice)
    assert len(ok_posts(slack)) == 1


async def test_records_the_client_or_the_store_cannot_take_never_stop_a_scan(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = empty_sim
    old = started_ms(90)
    poison = [
        {"task_id": None},
        {"task_id": 12345},
        {"task_time": {"ms": 1}},
        {"server_name": ["a"]},
        {"keypair_name": False},
        {"operate_type": 7},
        {"task_time": "yesterday"},
    ]
    for raw in poison:
        sim.add_task(task_time_ms=old, raw=raw)
    # Ids the client accepts but no store or path can carry as sent.
    sim.add_task(task_id="nul\x00in-id", task_time_ms=old)
    sim.add_task(task_id="lone-\ud800-surrogate", task_time_ms=old)
    sim.add_task(task_id="x" * 10_000, task_time_ms=old)
    sim.add_task(task_time_ms=old, raw={"task_time": "1700000000\n"})  # the reason quotes it
    # Odd but storable text: announced like any task.
    shouty = sim.add_task(
        task_time_ms=old, server_name="ctl\x07\x1b[31m\u202e" + "n" * 10_000, keypair_name="k\r\n"
    )
    normal = add_stale(sim, 5)
    watcher = make_watcher(store, kps_client, slack_client, page_size=4)

    with caplog.at_level(logging.WARNING, logger="bot.scan"):
        for _ in range(3):
            result = await watcher.scan()
            assert result.ok and result.rejected == len(poison) + 4
            await watcher.deliver()
    # Each once over three scans; the two without an id share their reason, so one line.
    assert len(told(caplog)) == len(poison) + 4 - 1
    assert all("\n" not in r.getMessage() and "\x00" not in r.getMessage() for r in told(caplog))
    announced = {a.task_id for a in await store.open_alerts()}
    assert announced == {t.task_id for t in normal} | {shouty.task_id}
    (notice,) = top_level(slack)
    assert all(t.task_id in shown(notice) for t in normal)


async def test_a_status_lookup_that_raises_waits_while_the_others_end(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken, fine = add_stale(empty_sim, 2)
    watcher = make_watcher(store, kps_client, slack_client)
    await watcher.scan()
    await watcher.deliver()
    (notice,) = top_level(slack)
    empty_sim.finish_task(broken.task_id)
    empty_sim.finish_task(fine.task_id)

    real = kps_client.get_task_status

    async def status(task_id: str) -> Any:
        if task_id == broken.task_id:
            raise RuntimeError("a bug in one lookup")
        return await real(task_id)

    monkeypatch.setattr(kps_client, "get_task_status", status)
    result = await watcher.scan()
    assert (result.ok, result.ended) == (True, 1)
    await watcher.deliver()
    (reply,) = slack.thread(ALERTS, notice["ts"])
    assert fine.task_id in shown(reply) and broken.task_id not in shown(reply)

    monkeypatch.setattr(kps_client, "get_task_status", real)
    result = await watcher.scan()
    assert (result.ok, result.ended) == (True, 1)
    await watcher.deliver()
    replies = slack.thread(ALERTS, notice["ts"])
    assert len(replies) == 2 and broken.task_id in shown(replies[1])
    assert "(`SUCCESS_RESET`)" in shown(replies[1])


async def test_a_walk_cut_short_says_which_limit_and_ends_nothing(
    empty_sim: Simulator, slack: FakeSlack, store: Store, slack_client: Any
) -> None:
    tasks = add_stale(empty_sim, 30)
    deadlines = Deadlines(attempt=5, call=5, walk=0.3, join=1)
    async with httpx.AsyncClient(auth=StaticTokenAuth(Secret(TOKEN)), timeout=5) as http:
        kps = KPSClient(
            http,
            endpoint=empty_sim.url,
            project_id=PROJECT,
            retry=RetryPolicy(attempts=1),
            deadlines=deadlines,
        )
        watcher = make_watcher(store, kps, slack_client, page_size=10)
        assert (await watcher.scan()).announced == 30
        empty_sim.finish_task(tasks[0].task_id)
        empty_sim.latency = 0.2  # three pages no longer fit in the walk's 0.3 s
        cut = await watcher.scan()
    assert not cut.ok and cut.ended == 0
    assert "not read to its end" in (cut.error or "")
    assert "time limit" in (cut.error or "")
    assert len(await store.open_alerts()) == 30


# --- the pieces ---------------------------------------------------------------------------------


def test_untrackable_ids_and_how_ids_are_shown_in_the_log() -> None:
    assert untrackable("0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0") is None
    assert untrackable("line\nbreak") is None
    assert untrackable("a" * 255) is None
    assert "256 characters" in (untrackable("a" * 256) or "")
    assert "NUL" in (untrackable("a\x00b") or "")
    assert "lone surrogate" in (untrackable("a\udc80") or "")
    assert shown_id("a\nb\u202ec") == "a\\nb\\u202ec"
    assert shown_id("ünï") == "ünï"
    assert shown_id(None) == "without a usable id"
    assert shown_id("y" * 100) == "y" * 80 + "…"


async def test_the_simulator_serves_raw_fields_as_given(sim: Simulator) -> None:
    task = sim.add_task(raw={"task_time": 1_700_000_000, "server_name": None})
    async with httpx.AsyncClient(headers={"X-Auth-Token": TOKEN}) as http:
        body = (await http.get(f"{sim.url}/v3/{PROJECT}/running-tasks?limit=1000")).json()
        (item,) = [i for i in body["tasks"] if i["task_id"] == task.task_id]
        assert item["task_time"] == 1_700_000_000 and item["server_name"] is None
        added = await http.post(
            f"{sim.url}/_sim/tasks",
            json={"server_name": "via-admin", "raw": {"keypair_name": 3}},
        )
        assert added.status_code == 201 and added.json()["raw"] == {"keypair_name": 3}
        refused = await http.post(f"{sim.url}/_sim/tasks", json={"raw": "not-an-object"})
        assert refused.status_code == 400
