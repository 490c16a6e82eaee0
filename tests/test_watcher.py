"""The watcher over real parts: the KPS simulator, the Slack stand-in and a SQLite state file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import slack_retry_handlers
from bot.kps import KPSClient
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Fault, RecordedRequest, Simulator
from bot.secret import Secret
from bot.server import serve
from bot.store import Store
from tests.conftest import ALERTS, PROJECT, make_settings
from tests.standin import wait_for
from tests.watching import (
    Clock,
    add_stale,
    make_watcher,
    ok_posts,
    shown,
    started_ms,
    top_level,
)


async def test_stale_tasks_are_announced_once_in_one_notice(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim = empty_sim
    stale = [
        sim.add_task(task_time_ms=started_ms(45), server_name="web-prod-01", keypair_name="kp-a"),
        sim.add_task(task_time_ms=started_ms(130), server_name="db-02", keypair_name="kp-b"),
        sim.add_task(task_time_ms=started_ms(61), server_name="bastion-03", keypair_name="kp-c"),
    ]
    sim.add_task(task_time_ms=started_ms(10), server_name="fresh-04")
    sim.add_task(task_time_ms=started_ms(29), server_name="fresh-05")
    watcher = make_watcher(store, kps_client, slack_client)

    result = await watcher.scan()
    assert (result.ok, result.announced) == (True, 3)
    assert await watcher.deliver() == 1

    (notice,) = top_level(slack)
    text = shown(notice)
    for task in stale:
        assert task.server_name in text and task.keypair_name in text and task.task_id in text
    assert "running *45 min*" in text and "running *2 h 10 min*" in text
    assert "fresh-0" not in text
    assert "3 key-pair tasks are stale" in text

    for _ in range(3):
        again = await watcher.scan()
        assert (again.ok, again.announced) == (True, 0)
        assert await watcher.deliver() == 0
    assert len(ok_posts(slack)) == 1
    assert slack.calls_to("chat.update") == []


async def test_a_thousand_stale_tasks_make_one_notice_and_thread_detail(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    tasks = add_stale(empty_sim, 1000)
    watcher = make_watcher(store, kps_client, slack_client)
    assert (await watcher.scan()).announced == 1000
    await watcher.deliver()

    notices = top_level(slack)
    assert len(notices) == 1  # at most 5 are allowed; one is what it takes
    (notice,) = notices
    assert "1000 key-pair tasks are stale" in shown(notice)
    replies = slack.thread(ALERTS, notice["ts"])
    assert 1 <= len(replies) <= 40
    ids = {t.task_id for t in tasks}
    named: list[str] = []
    for message in [notice, *replies]:
        named += [i for i in re.findall(r"[0-9a-f-]{36}", shown(message)) if i in ids]
    assert set(named) == ids  # none lost
    assert len(named) == len(ids)  # none named twice


async def test_restart_on_the_same_file_does_not_repeat(
    empty_sim: Simulator,
    slack: FakeSlack,
    state_url: str,
    kps_client: KPSClient,
    slack_client: Any,
) -> None:
    add_stale(empty_sim, 4)
    first_store = Store.open(state_url)
    await first_store.migrate()
    first = make_watcher(first_store, kps_client, slack_client)
    await first.scan()
    await first.deliver()
    await first_store.close()

    second_store = Store.open(state_url)
    await second_store.migrate()  # idempotent on an existing file
    second = make_watcher(second_store, kps_client, slack_client)
    assert (await second.scan()).announced == 0
    assert await second.deliver() == 0
    (late,) = add_stale(empty_sim, 1, server_name="late-node-99")
    assert (await second.scan()).announced == 1
    await second.deliver()
    await second_store.close()

    notices = top_level(slack)
    assert len(notices) == 2
    assert late.task_id in shown(notices[1])
    assert all(t.task_id not in shown(notices[1]) for t in empty_sim.tasks[:4])


async def test_endings_are_told_in_the_thread_and_on_the_notice(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim = empty_sim
    ok, bad, gone, still = add_stale(sim, 4)
    watcher = make_watcher(store, kps_client, slack_client)
    await watcher.scan()
    await watcher.deliver()
    (notice,) = top_level(slack)

    sim.finish_task(ok.task_id)
    sim.finish_task(
        bad.task_id, failed=True, error_code="KPS.2034", error_msg="ssh agent not responding"
    )
    sim.tasks.remove(sim.find_task(gone.task_id))  # type: ignore[arg-type]  # KPS answers 404
    result = await watcher.scan()
    assert (result.ok, result.ended) == (True, 3)
    await watcher.deliver()

    (reply,) = slack.thread(ALERTS, notice["ts"])
    said = shown(reply)
    assert "3 stale tasks have ended" in said
    assert "Reset key pair succeeded (`SUCCESS_RESET`)" in said
    assert "(`FAILED_RESET`): `KPS.2034 ssh agent not responding`" in said
    assert "no longer running (outcome unknown)" in said
    assert "after about 45 min" in said or "after about 46 min" in said
    assert still.task_id not in said

    updates = [c for c in slack.calls_to("chat.update") if c.ok]
    assert len(updates) == 1 and updates[0].args["ts"] == notice["ts"]
    (now_shown,) = top_level(slack)
    glance = shown(now_shown)
    assert f":white_check_mark: *{ok.server_name}*" in glance
    assert f":x: *{bad.server_name}*" in glance
    assert f":black_square_for_stop: *{gone.server_name}*" in glance
    assert f":hourglass_flowing_sand: *{still.server_name}*" in glance
    assert "3 of 4 finished: 1 succeeded, 1 failed, 1 no longer running" in glance

    assert (await watcher.scan()).ended == 0  # told once
    assert await watcher.deliver() == 0


async def test_a_scan_that_fails_on_page_three_ends_nothing(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim = empty_sim
    tasks = add_stale(sim, 25)
    watcher = make_watcher(store, kps_client, slack_client, page_size=10)
    await watcher.scan()
    await watcher.deliver()
    sim.finish_task(tasks[0].task_id)

    pages = 0
    listing = f"/v3/{PROJECT}/running-tasks"

    def fail_from_page_three(request: RecordedRequest) -> None:
        nonlocal pages
        if request.path == listing:
            pages += 1
            if pages == 2:
                sim.inject(Fault("status", status=500, path=listing, times=-1))

    sim.after_request = fail_from_page_three
    failed = await watcher.scan()
    assert not failed.ok and failed.ended == 0 and "500" in (failed.error or "")
    assert pages >= 3
    assert len(await store.open_alerts()) == 25
    assert await watcher.deliver() == 0

    sim.after_request = None
    sim.clear_faults()
    result = await watcher.scan()
    assert (result.ok, result.ended) == (True, 1)
    await watcher.deliver()
    (notice,) = top_level(slack)
    detail, ended = slack.thread(ALERTS, notice["ts"])  # the 5 the notice had no room for, then
    assert "Stale tasks 21–25 of 25" in shown(detail)
    assert "A stale task has ended" in shown(ended) and tasks[0].task_id in shown(ended)


async def test_a_scan_cut_short_by_a_changing_list_ends_nothing(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    sim = empty_sim
    tasks = add_stale(sim, 25)
    watcher = make_watcher(store, kps_client, slack_client, page_size=10)
    await watcher.scan()
    await watcher.deliver()
    sim.finish_task(tasks[0].task_id)

    def grow(request: RecordedRequest) -> None:
        if request.path.endswith("/running-tasks"):
            sim.add_task()  # a fresh task per page: the total never holds still

    sim.after_request = grow
    cut = await watcher.scan()
    assert not cut.ok and cut.ended == 0
    assert "changed while it was read" in (cut.error or "")
    assert len(await store.open_alerts()) == 25
    sim.after_request = None
    assert (await watcher.scan()).ended == 1


async def test_slack_429_twice_then_ok_delivers_once(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient
) -> None:
    add_stale(empty_sim, 2)
    # The runtime's outbox client: it leaves every 429 to the outbox, which pauses for it.
    client = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=slack_retry_handlers(rate_limits=False),
    )
    clock = Clock()
    watcher = make_watcher(store, kps_client, client, clock=clock)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=429, retry_after=1, times=2)
    assert await watcher.deliver() == 0
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429]
    clock.advance(1.5)
    assert await watcher.deliver() == 0
    clock.advance(1.5)
    assert await watcher.deliver() == 1
    posts = slack.calls_to("chat.postMessage")
    assert [c.status for c in posts] == [429, 429, 200]
    assert len(top_level(slack)) == 1
    assert await watcher.deliver() == 0
    assert len(ok_posts(slack)) == 1


async def test_slack_failures_past_client_retries_wait_in_the_outbox(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    add_stale(empty_sim, 2)
    clock = Clock()
    watcher = make_watcher(store, kps_client, slack_client, clock=clock)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=503, times=2)
    slack.fail_next("chat.postMessage", status=429, retry_after=30)

    assert await watcher.deliver() == 0  # 503: due again in 1 s
    assert await watcher.deliver() == 0  # not due yet: Slack is not asked
    assert len(slack.calls_to("chat.postMessage")) == 1
    clock.advance(1.5)
    assert await watcher.deliver() == 0  # 503 again: due in 2 s
    clock.advance(2.5)
    assert await watcher.deliver() == 0  # 429: everything pauses 30 s
    clock.advance(10)
    assert await watcher.deliver() == 0
    assert len(slack.calls_to("chat.postMessage")) == 3
    clock.advance(25)
    assert await watcher.deliver() == 1
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [503, 503, 429, 200]
    assert len(top_level(slack)) == 1


async def test_a_crash_between_outbox_and_send_delivers_once_after_restart(
    empty_sim: Simulator,
    slack: FakeSlack,
    state_url: str,
    kps_client: KPSClient,
    slack_client: Any,
) -> None:
    tasks = add_stale(empty_sim, 3)
    # A Slack that takes the request and never answers: the process "dies" while waiting.
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    hole = web.Application()
    hole.router.add_post("/api/{method}", hang)
    runner = web.AppRunner(hole, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    dead_slack = AsyncWebClient(token="xoxb-test", base_url=f"http://127.0.0.1:{port}/api/")

    first_store = Store.open(state_url)
    await first_store.migrate()
    first = make_watcher(
        first_store, kps_client, dead_slack, lease_ttl=0.5, claim_ttl=0.5, holder="first"
    )
    crashed = asyncio.create_task(first.run())
    await asyncio.wait_for(arrived.wait(), 10)
    crashed.cancel()  # no clean stop: the lease and the claim are left to expire
    with pytest.raises(asyncio.CancelledError):
        await crashed
    await first_store.close()
    await runner.cleanup()

    second_store = Store.open(state_url)
    await second_store.migrate()
    # The dead watcher's lease is still there (or just expired); nobody released it.
    assert await second_store.lease_holder(now=Clock()()) in ("first", None)
    second = make_watcher(second_store, kps_client, slack_client, lease_ttl=0.5, holder="second")
    second.start()
    try:
        await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)
        (late,) = add_stale(empty_sim, 1)
        await wait_for(slack, "chat.postMessage", 2, timeout=10, where=lambda c: c.ok)
    finally:
        await second.stop()
        await second_store.close()
    notices = top_level(slack)
    assert len(notices) == 2
    assert all(t.task_id in shown(notices[0]) for t in tasks)
    assert late.task_id in shown(notices[1]) and tasks[0].task_id not in shown(notices[1])


async def test_impaired_once_after_three_failed_scans_and_recovered_once(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    add_stale(empty_sim, 1)
    watcher = make_watcher(store, kps_client, slack_client)
    empty_sim.inject(Fault("status", status=503, error_code="KPS.0503", times=-1))
    for n in range(5):
        assert not (await watcher.scan()).ok
        await watcher.deliver()
        assert len(top_level(slack)) == (0 if n < 2 else 1)
    (impaired,) = top_level(slack)
    assert "Watching for stale key-pair tasks is impaired" in shown(impaired)
    assert "KPS.0503" in shown(impaired)
    (problem,) = await store.problems()
    assert "impaired" in problem and "503" in problem

    empty_sim.clear_faults()
    result = await watcher.scan()
    assert result.ok and result.announced == 1
    await watcher.deliver()
    await watcher.scan()
    await watcher.deliver()
    notices = top_level(slack)
    assert len(notices) == 3
    assert sum("tasks works again" in shown(n) for n in notices) == 1
    assert "key-pair task is stale" in shown(notices[1]) + shown(notices[2])
    assert await store.problems() == []


async def test_an_unhealable_slack_error_is_logged_once_and_shown_as_a_problem(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_stale(empty_sim, 1)
    clock = Clock()
    watcher = make_watcher(store, kps_client, slack_client, clock=clock, refused_retry=60)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=200, error="channel_not_found", times=2)
    with caplog.at_level(logging.ERROR, logger="bot.outbox"):
        assert await watcher.deliver() == 0
        clock.advance(30)
        assert await watcher.deliver() == 0  # waiting, Slack not asked
        clock.advance(31)
        assert await watcher.deliver() == 0  # refused again
    refusals = [r for r in caplog.records if "refuses stale notices" in r.getMessage()]
    assert len(refusals) == 1
    assert getattr(refusals[0], "error", None) == "channel_not_found"
    (problem,) = await store.problems()
    assert "channel_not_found" in problem and ALERTS in problem and "STALE_CHANNEL_ID" in problem
    assert len(slack.calls_to("chat.postMessage")) == 2

    clock.advance(61)
    assert await watcher.deliver() == 1
    assert await store.problems() == []
    assert len(top_level(slack)) == 1


async def test_reminders_repeat_in_the_thread_until_acknowledged(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    from datetime import timedelta

    add_stale(empty_sim, 2)
    clock = Clock()
    watcher = make_watcher(
        store, kps_client, slack_client, clock=clock, renotify_after=timedelta(hours=1)
    )
    await watcher.scan()
    await watcher.deliver()
    (notice,) = top_level(slack)
    assert "Reminders every 1 h in the thread" in shown(notice)

    assert (await watcher.scan()).reminded == 0
    clock.advance(3601)
    assert (await watcher.scan()).reminded == 1
    assert (await watcher.scan()).reminded == 0
    await watcher.deliver()
    (reminder,) = slack.thread(ALERTS, notice["ts"])
    assert "2 tasks from this notice are still running" in shown(reminder)

    notice_id = (await store.open_alerts())[0].notice_id
    await store.acknowledge(notice_id, "U0ALICE", now=clock())
    clock.advance(7300)
    assert (await watcher.scan()).reminded == 0
    await watcher.deliver()
    assert len(slack.thread(ALERTS, notice["ts"])) == 1
    (acked,) = top_level(slack)
    assert "Acknowledged by <@U0ALICE>" in shown(acked)


async def test_the_loop_survives_an_error_and_gives_the_lease_up_on_stop(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_stale(empty_sim, 1)
    real_walk = kps_client.walk_running_tasks
    calls = 0

    async def walk_failing_once(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a scan")
        return await real_walk(**kwargs)

    monkeypatch.setattr(kps_client, "walk_running_tasks", walk_failing_once)
    watcher = make_watcher(store, kps_client, slack_client, holder="me")
    with caplog.at_level(logging.ERROR, logger="bot.watcher"):
        watcher.start()
        await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)
        assert watcher.role == "leader"
        assert await store.lease_holder(now=Clock()()) == "me"
        await watcher.stop()
    failures = [r for r in caplog.records if r.getMessage().startswith("watcher step failed")]
    assert failures and failures[0].exc_info is not None
    assert "a bug in a scan" in str(failures[0].exc_info[1])
    assert watcher.role == "stopped"
    assert await store.lease_holder(now=Clock()()) is None


# --- a failing step is seen in the channel and on /healthz; the start blames only the store


async def test_a_step_that_always_raises_counts_toward_impaired_and_recovers(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_stale(empty_sim, 1)
    real_walk = kps_client.walk_running_tasks
    broken = True

    async def walk(**kwargs: Any) -> Any:
        if broken:
            raise RuntimeError("a poison record named secret-ish")
        return await real_walk(**kwargs)

    monkeypatch.setattr(kps_client, "walk_running_tasks", walk)
    watcher = make_watcher(store, kps_client, slack_client)
    watcher.start()
    try:
        await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)
        (impaired,) = top_level(slack)
        assert "Watching for stale key-pair tasks is impaired" in shown(impaired)
        assert "RuntimeError" in shown(impaired)
        assert "secret-ish" not in shown(impaired)  # only the type leaves the process
        assert watcher.problem is not None and "RuntimeError" in watcher.problem
        (problem,) = await store.problems()
        assert "impaired" in problem

        broken = False
        await wait_for(slack, "chat.postMessage", 3, timeout=10, where=lambda c: c.ok)
    finally:
        await watcher.stop()
    assert watcher.problem is None
    notices = [shown(n) for n in top_level(slack)]
    assert sum("is impaired" in n for n in notices) == 1
    assert sum("tasks works again" in n for n in notices) == 1
    assert sum("key-pair task is stale" in n for n in notices) == 1
    assert await store.problems() == []


def _sqlite(path: str, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute(statement)


async def test_healthz_says_when_the_watcher_step_keeps_failing_and_when_it_works_again(
    bot_factory: Callable[..., Any], empty_sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    add_stale(empty_sim, 1)
    bot = await bot_factory(stale_channel_id=ALERTS, state_url=Secret(state_url), poll_interval=0.1)
    await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)
    path = state_url.removeprefix("sqlite+aiosqlite:///")
    # The lease table gone: every step fails in hold_lease, before any scan (a store broken
    # under the bot, as a full disk or a wrong migration leaves it).
    await asyncio.to_thread(_sqlite, path, "ALTER TABLE kps_lease RENAME TO kps_lease_away")

    async with httpx.AsyncClient(timeout=5) as http:

        async def health() -> tuple[int, dict[str, Any]]:
            answer = await http.get(bot.url + "/healthz")
            return answer.status_code, answer.json()

        async def until(status: str) -> dict[str, Any]:
            for _ in range(200):
                code, body = await health()
                # Alive throughout: a restart would not mend the store (liveness stays 200).
                assert code == 200, body
                if body["status"] == status:
                    return body
                await asyncio.sleep(0.05)
            raise AssertionError(f"/healthz never said {status}; last {body}")

        impaired = await until("impaired")
        assert impaired["status"] == "impaired" and impaired["watcher"] == "leader"
        assert "OperationalError" in impaired["problem"]
        await wait_for(slack, "chat.postMessage", 2, timeout=10, where=lambda c: c.ok)
        assert "is impaired" in shown(top_level(slack)[1])

        await asyncio.to_thread(_sqlite, path, "ALTER TABLE kps_lease_away RENAME TO kps_lease")
        healthy = await until("ok")
        assert healthy["status"] == "ok" and "problem" not in healthy
    await wait_for(slack, "chat.postMessage", 3, timeout=10, where=lambda c: c.ok)
    assert "tasks works again" in shown(top_level(slack)[2])
    assert await bot.shutdown() == 0


async def test_a_state_store_that_cannot_be_opened_ends_the_start_with_one_line(
    sim: Simulator, slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'state.db'}"
    settings = make_settings(sim, slack, stale_channel_id=ALERTS, state_url=Secret(url))
    with caplog.at_level(logging.ERROR, logger="bot.server"):
        assert await serve(settings, stop=asyncio.Event(), handle_signals=False) == 1
    (line,) = [r for r in caplog.records if "cannot open the state store" in r.getMessage()]
    assert "unable to open database file" in line.getMessage()


async def test_a_bug_at_start_is_raised_whole_not_blamed_on_the_state_store(
    sim: Simulator,
    slack: FakeSlack,
    state_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def migrate_with_a_bug(self: Store) -> None:
        raise KeyError("a bug, not a database")

    monkeypatch.setattr(Store, "migrate", migrate_with_a_bug)
    settings = make_settings(sim, slack, stale_channel_id=ALERTS, state_url=Secret(state_url))
    with pytest.raises(KeyError, match="a bug, not a database"):
        await serve(settings, stop=asyncio.Event(), handle_signals=False)
    assert not [r for r in caplog.records if "state store" in r.getMessage()]
