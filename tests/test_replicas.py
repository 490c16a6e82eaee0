"""Replicas sharing PostgreSQL: one notice per stale task, and watching survives a killed leader."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.kps import KPSClient
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from bot.store import Store
from tests.conftest import ALERTS, PROJECT, SIGNING_SECRET, TOKEN, free_port
from tests.standin import wait_for
from tests.watching import add_stale, make_watcher, shown, top_level

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def announced_ids(slack: FakeSlack) -> Counter[str]:
    """How many channel notices name each task id."""
    counts: Counter[str] = Counter()
    for notice in top_level(slack):
        counts.update(set(UUID.findall(shown(notice))))
    return counts


async def test_two_watchers_one_notice_and_a_take_over_after_a_crash(
    sim: Simulator, slack: FakeSlack, pg_url: str, kps_client: KPSClient, slack_client: Any
) -> None:
    sim.tasks = []
    first = add_stale(sim, 5)
    stores = [Store.open(pg_url), Store.open(pg_url)]  # one engine each, as two processes have
    await asyncio.gather(*(s.migrate() for s in stores))
    watchers = [
        make_watcher(store, kps_client, slack_client, poll_interval=0.05, lease_ttl=1.0, holder=h)
        for store, h in zip(stores, ("A", "B"), strict=True)
    ]
    runs = [asyncio.create_task(w.run()) for w in watchers]
    try:
        await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)

        async def delivered() -> bool:
            return await stores[0].pending() == []

        # Killed between scans: a kill in the instant between Slack accepting a post and the
        # store marking it sent is the documented at-least-once window (bot/watcher.py).
        await wait_until(delivered, 10, "the notice to be marked sent")
        roles = sorted(w.role for w in watchers)
        assert roles == ["leader", "standby"]
        leader = next(i for i, w in enumerate(watchers) if w.role == "leader")
        runs[leader].cancel()  # killed: no clean stop, the lease is left to expire
        with pytest.raises(asyncio.CancelledError):
            await runs[leader]

        (late,) = add_stale(sim, 1)
        await wait_for(slack, "chat.postMessage", 2, timeout=10, where=lambda c: c.ok)
        survivor = watchers[1 - leader]
        assert survivor.role == "leader"
        sim.finish_task(first[0].task_id)
        await wait_for(slack, "chat.update", 1, timeout=10, where=lambda c: c.ok)
    finally:
        for watcher in watchers:
            await watcher.stop(grace=2)
        for store in stores:
            await store.close()
    counts = announced_ids(slack)
    assert set(counts) == {t.task_id for t in [*first, late]}
    assert set(counts.values()) == {1}
    first_notice = top_level(slack)[0]
    (reply,) = slack.thread(ALERTS, first_notice["ts"])
    assert first[0].task_id in shown(reply) and "SUCCESS_RESET" in shown(reply)


def bot_environment(sim: Simulator, slack: FakeSlack, pg_url: str, port: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    return {
        **keep,
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "PORT": str(port),
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
        "HUAWEICLOUD_REGION": "cn-north-4",
        "KPS_ENDPOINT": sim.url,
        "IAM_ENDPOINT": sim.url,
        "KPS_AUTH_TOKEN": TOKEN,
        "STALE_CHANNEL_ID": ALERTS,
        "POLL_INTERVAL_SECONDS": "1",
        "STATE_URL": pg_url,
        "LOG_LEVEL": "INFO",
    }


async def health(client: httpx.AsyncClient, port: int) -> dict[str, Any] | None:
    try:
        response = await client.get(f"http://127.0.0.1:{port}/healthz")
    except httpx.TransportError:
        return None
    body: dict[str, Any] = response.json()
    return body if response.status_code == 200 else None


async def wait_until(condition: Any, timeout: float, what: str) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def exited(process: subprocess.Popen[bytes], timeout: float = 30) -> int:  # noqa: ASYNC109
    async def gone() -> bool:
        return process.poll() is not None

    await wait_until(gone, timeout, f"process {process.pid} to exit")
    return int(process.returncode)


async def test_two_bot_processes_announce_once_and_survive_a_sigkill(
    sim: Simulator, slack: FakeSlack, pg_url: str, tmp_path: Path
) -> None:
    sim.tasks = []
    first = add_stale(sim, 3)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"bot{i}.log" for i in range(2)]
    processes = []
    for port, log_path in zip(ports, logs, strict=True):
        with log_path.open("wb") as sink:
            processes.append(
                subprocess.Popen(  # noqa: ASYNC220 - started once, waited on with poll() below
                    [sys.executable, "-m", "bot"],
                    env=bot_environment(sim, slack, pg_url, port),
                    cwd=tmp_path,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )

    def log_tail() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)

    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def both_up() -> bool:
                states = [await health(client, port) for port in ports]
                return all(s is not None for s in states)

            await wait_until(both_up, 30, "both bots to answer /healthz\n" + log_tail())
            await wait_for(slack, "chat.postMessage", 1, timeout=15, where=lambda c: c.ok)

            async def one_leader() -> bool:
                roles = [(await health(client, port) or {}).get("watcher") for port in ports]
                return sorted(map(str, roles)) == ["leader", "standby"]

            await wait_until(one_leader, 15, "one leader and one standby")
            # Killed between scans, not in the instant between Slack accepting the post and the
            # store marking it sent: that is the documented at-least-once window.
            observer = Store.open(pg_url)
            try:

                async def delivered() -> bool:
                    return await observer.pending() == []

                await wait_until(delivered, 10, "the notice to be marked sent")
            finally:
                await observer.close()
            roles = [(await health(client, port) or {}).get("watcher") for port in ports]
            leader = roles.index("leader")
            processes[leader].send_signal(signal.SIGKILL)
            await exited(processes[leader])

            (late,) = add_stale(sim, 1)
            sim.finish_task(first[0].task_id)
            try:
                await wait_for(slack, "chat.postMessage", 3, timeout=30, where=lambda c: c.ok)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{log_tail()}") from None
            survivor = 1 - leader

            async def survivor_leads() -> bool:
                return (await health(client, ports[survivor]) or {}).get("watcher") == "leader"

            await wait_until(survivor_leads, 10, "the survivor to lead")
            processes[survivor].send_signal(signal.SIGTERM)
            # Waited on without blocking the loop: the simulator and stand-in live in it.
            assert await exited(processes[survivor]) == 0, log_tail()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    counts = announced_ids(slack)
    assert set(counts) == {t.task_id for t in [*first, late]}, log_tail()
    assert set(counts.values()) == {1}, log_tail()
    first_notice = top_level(slack)[0]
    replies = slack.thread(ALERTS, first_notice["ts"])
    assert any(first[0].task_id in shown(r) and "SUCCESS_RESET" in shown(r) for r in replies)
    assert "stopped cleanly" in logs[1 - leader].read_text()
