"""End to end: signed Slack requests into the running bot, with the simulator and stand-in."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from bot.blocks import (
    ACTION_LIST,
    ACTION_NEXT,
    ACTION_PREVIOUS,
    ACTION_REFRESH,
    ACTION_RETRY,
    ACTION_SHARE,
    PageRef,
)
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Fault, Simulator
from bot.secret import Secret
from tests.conftest import RunningBot, make_settings
from tests.standin import wait_for


def texts(message: dict[str, Any]) -> str:
    """Everything a user could read in a message, as one string."""
    return json.dumps(message.get("blocks", []), ensure_ascii=False) + str(message.get("text", ""))


def button(message: dict[str, Any], action_id: str) -> dict[str, Any] | None:
    for block in message.get("blocks", []):
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            if element.get("action_id") == action_id:
                return element  # type: ignore[no-any-return]
    return None


def running_ids(sim: Simulator) -> list[str]:
    """Task ids in KPS order: ids, unlike the seeded server names, never repeat."""
    ordered = sorted(sim.running(), key=lambda t: (t.task_time_ms or 0, t.task_id))
    return [t.task_id for t in ordered]


async def page_after(slack: FakeSlack, count: int) -> Call:
    calls = await wait_for(slack, "response_url", count, timeout=10)
    return calls[count - 1]


async def test_kps_shows_first_page_then_next_and_previous(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    response = await bot.sender.command("", slack.response_url("cmd"))
    assert response.status_code == 200
    first = (await page_after(slack, 1)).args
    assert "1–10 of 37" in texts(first)
    names = running_ids(sim)
    for name in names[:10]:
        assert name in texts(first)
    assert names[10] not in texts(first)
    assert button(first, ACTION_PREVIOUS) is None
    next_button = button(first, ACTION_NEXT)
    assert next_button is not None and "Next" in next_button["text"]["text"]

    await bot.sender.action(ACTION_NEXT, next_button["value"], slack.response_url("next"))
    second = (await page_after(slack, 2)).args
    assert second["replace_original"] is True
    assert "11–20 of 37" in texts(second)
    assert names[10] in texts(second) and names[0] not in texts(second)
    previous = button(second, ACTION_PREVIOUS)
    assert previous is not None and "Previous" in previous["text"]["text"]

    await bot.sender.action(ACTION_PREVIOUS, previous["value"], slack.response_url("prev"))
    back = (await page_after(slack, 3)).args
    assert "1–10 of 37" in texts(back)


async def test_last_page_has_no_next_and_refresh_sees_changes(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    ref = PageRef(offset=30, page_size=10, query="")
    await bot.sender.action(ACTION_NEXT, ref.encode(), slack.response_url())
    last = (await page_after(slack, 1)).args
    assert "31–37 of 37" in texts(last)
    assert button(last, ACTION_NEXT) is None

    sim.add_task(server_name="fresh-node-99", keypair_name="kp-new")
    refresh = button(last, ACTION_REFRESH)
    assert refresh is not None
    await bot.sender.action(ACTION_REFRESH, refresh["value"], slack.response_url())
    refreshed = (await page_after(slack, 2)).args
    assert "31–38 of 38" in texts(refreshed)
    assert "fresh-node-99" in texts(refreshed)


async def test_list_that_shrank_shows_last_existing_page(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    for task in sim.running()[12:]:
        sim.finish_task(task.task_id)
    ref = PageRef(offset=30, page_size=10, query="")
    await bot.sender.action(ACTION_NEXT, ref.encode(), slack.response_url())
    shown = (await page_after(slack, 1)).args
    assert "11–12 of 12" in texts(shown)


async def test_filter_walks_all_pages_and_pages_the_result(
    bot_factory: Any, sim: Simulator, slack: FakeSlack
) -> None:
    base = int(time.time() * 1000) - 60_000
    for i in range(25):
        sim.add_task(server_name=f"Zeta-web-{i:02d}", keypair_name="kp-zeta", task_time_ms=base + i)
    running = await bot_factory()
    await running.sender.command("tasks ZETA web", slack.response_url())
    first = (await page_after(slack, 1)).args
    assert "1–10 of 25" in texts(first)
    assert "Zeta-web-00" in texts(first)
    next_button = button(first, ACTION_NEXT)
    assert next_button is not None
    assert PageRef.parse(next_button["value"]).query == "ZETA web"
    await running.sender.action(ACTION_NEXT, next_button["value"], slack.response_url())
    second = (await page_after(slack, 2)).args
    assert "11–20 of 25" in texts(second)
    assert "Zeta-web-10" in texts(second) and "Zeta-web-00" not in texts(second)


async def test_help_and_unknown_answer_in_the_ack(bot: RunningBot, slack: FakeSlack) -> None:
    helped = await bot.sender.command("help", slack.response_url())
    assert helped.status_code == 200
    assert "/kps tasks" in helped.text
    unknown = await bot.sender.command("frobnicate <!channel>", slack.response_url())
    assert unknown.status_code == 200
    body = unknown.json()
    assert body.get("response_type", "ephemeral") == "ephemeral"
    assert "frobnicate" in texts(body) and "/kps tasks" in texts(body)
    assert "<!channel>" not in texts(body)
    assert "Traceback" not in unknown.text


async def test_bad_and_replayed_signatures_are_refused(bot: RunningBot, slack: FakeSlack) -> None:
    body = "command=%2Fkps&text=&response_url=" + slack.response_url()
    forged = await bot.sender.client.post(
        bot.sender.url,
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(int(time.time())),
            "X-Slack-Signature": "v0=" + "0" * 64,
        },
    )
    assert forged.status_code == 401
    old = bot.sender.sign(body, timestamp=int(time.time()) - 6 * 60)
    replayed = await bot.sender.client.post(
        bot.sender.url,
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", **old},
    )
    assert replayed.status_code == 401
    await bot.settled()
    assert slack.calls_to("response_url") == []


async def test_kps_failure_is_explained_with_code_and_request_id_and_retry(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    sim.inject(Fault(kind="status", status=403, error_code="KPS.0403", error_msg="denied here"))
    await bot.sender.command("", slack.response_url())
    failed = (await page_after(slack, 1)).args
    shown = texts(failed)
    assert "KPS.0403" in shown and "denied here" in shown
    # The simulator stamps every answer with a uuid4-hex X-Request-Id; the user must see it.
    assert re.search(r"[0-9a-f]{32}", shown), shown
    assert "Traceback" not in shown
    retry = button(failed, ACTION_RETRY)
    assert retry is not None
    await bot.sender.action(ACTION_RETRY, retry["value"], slack.response_url())
    recovered = (await page_after(slack, 2)).args
    assert "1–10 of 37" in texts(recovered)


async def test_transient_kps_failures_are_retried_before_the_user_sees_anything(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    sim.inject(Fault(kind="html", status=502))
    sim.inject(Fault(kind="retry_after", delay=0.1))
    await bot.sender.command("", slack.response_url())
    page = (await page_after(slack, 1)).args
    assert "1–10 of 37" in texts(page)
    assert sim.count("GET", "/v3/") == 3


async def test_slow_kps_is_acked_at_once_and_answered_later(
    bot_factory: Callable[..., Any], sim: Simulator, slack: FakeSlack
) -> None:
    bot: RunningBot = await bot_factory(loading_after=0.5)
    sim.latency = 5.0
    started = time.monotonic()
    response = await bot.sender.command("", slack.response_url())
    acked_after = time.monotonic() - started
    assert response.status_code == 200
    # The ack left before KPS answered: nothing but the Loading state reached response_url.
    assert all("Loading" in texts(c.args) for c in slack.calls_to("response_url"))
    assert acked_after < 3.0  # Slack's own limit, the contract's bound
    loading, page = (c.args for c in await wait_for(slack, "response_url", 2, timeout=10))
    assert "Loading" in texts(loading)
    assert "1–10 of 37" in texts(page) and page["replace_original"] is True


async def test_kps_strings_are_escaped(bot: RunningBot, sim: Simulator, slack: FakeSlack) -> None:
    for task in list(sim.running()):
        sim.finish_task(task.task_id)
    sim.add_task(server_name="<!channel> & <@U123>", keypair_name="<https://evil|click>")
    await bot.sender.command("", slack.response_url())
    shown = texts((await page_after(slack, 1)).args)
    assert "<!channel>" not in shown and "<@U123>" not in shown and "<https://evil" not in shown
    assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in shown


async def test_malformed_button_value_gets_a_clear_message(
    bot: RunningBot, slack: FakeSlack
) -> None:
    await bot.sender.action(ACTION_NEXT, '{"v":1,"o":-5}', slack.response_url())
    notice = (await page_after(slack, 1)).args
    assert "could not be read" in texts(notice)
    assert notice["replace_original"] is False


async def test_share_posts_the_page_in_channel(bot: RunningBot, slack: FakeSlack) -> None:
    ref = PageRef(offset=0, page_size=10, query="")
    await bot.sender.action(ACTION_SHARE, ref.encode(), slack.response_url())
    shared = (await page_after(slack, 1)).args
    assert shared["response_type"] == "in_channel"
    assert "1–10 of 37" in texts(shared) and "U0ALICE" in texts(shared)
    assert button(shared, ACTION_SHARE) is None
    # Paging the shared message keeps it in the channel and keeps saying who shared it.
    next_button = button(shared, ACTION_NEXT)
    assert next_button is not None
    await bot.sender.action(
        ACTION_NEXT, next_button["value"], slack.response_url(), ephemeral=False
    )
    paged = (await page_after(slack, 2)).args
    assert paged["response_type"] == "in_channel" and paged["replace_original"] is True
    assert "11–20 of 37" in texts(paged) and "U0ALICE" in texts(paged)
    assert button(paged, ACTION_SHARE) is None


async def test_mention_answers_in_thread(bot: RunningBot, slack: FakeSlack) -> None:
    event = {
        "type": "app_mention",
        "user": "U0ALICE",
        "text": "<@U0BOT> tasks",
        "ts": "1764412345.000100",
        "channel": "C0GENERAL",
        "event_ts": "1764412345.000100",
    }
    assert (await bot.sender.event(event, event_id="Ev1")).status_code == 200
    # Slack redelivers when it thinks an event was lost; the answer must not double.
    assert (await bot.sender.event(event, event_id="Ev1")).status_code == 200
    posted = await wait_for(slack, "chat.postMessage", 1)
    assert posted[0].args["thread_ts"] == "1764412345.000100"
    assert "1–10 of 37" in texts(posted[0].args)
    assert button(posted[0].args, ACTION_NEXT) is not None
    await bot.settled()
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_home_tab_shows_live_summary_and_list_button_posts_to_dm(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    stale = sum(
        1
        for t in sim.running()
        if t.task_time_ms and time.time() * 1000 - t.task_time_ms >= 30 * 60_000
    )
    event = {"type": "app_home_opened", "user": "U0ALICE", "channel": "D0ALICE", "tab": "home"}
    await bot.sender.event(event, event_id="Ev2")
    published = await wait_for(slack, "views.publish", 1)
    view = published[0].args["view"]
    shown = json.dumps(view, ensure_ascii=False)
    assert "37" in shown and str(stale) in shown
    list_button = next(
        e
        for b in view["blocks"]
        if b.get("type") == "actions"
        for e in b["elements"]
        if e["action_id"] == ACTION_LIST
    )
    await bot.sender.action(ACTION_LIST, list_button["value"], None, container="view")
    dm = await wait_for(slack, "chat.postMessage", 1)
    assert dm[0].args["channel"] == "U0ALICE"
    assert "1–10 of 37" in texts(dm[0].args)


async def test_sigterm_finishes_work_in_flight_then_exits_zero(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    sim.latency = 1.0
    await bot.sender.command("", slack.response_url())
    assert await bot.shutdown() == 0
    assert "1–10 of 37" in texts(slack.calls_to("response_url")[-1].args)


async def test_socket_mode_answers_a_slash_command(sim: Simulator, slack: FakeSlack) -> None:
    settings = make_settings(
        sim, slack, slack_app_token=Secret(slack.app_token), slack_signing_secret=None
    )
    from bot.server import serve

    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop, handle_signals=False))
    try:
        await slack.wait_socket_connected(timeout=10)
        payload = {
            "command": "/kps",
            "text": "tasks",
            "user_id": "U0ALICE",
            "channel_id": "C0GENERAL",
            "team_id": "T0TEST",
            "api_app_id": "A0KPS",
            "response_url": slack.response_url("socket"),
            "trigger_id": "1.2.3",
        }
        ack = await slack.send_socket_request("slash_commands", payload)
        assert ack["envelope_id"]
        page = (await page_after(slack, 1)).args
        assert "1–10 of 37" in texts(page)
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0


@pytest.mark.parametrize("text", ["", "tasks"])
async def test_kps_and_kps_tasks_are_the_same(bot: RunningBot, slack: FakeSlack, text: str) -> None:
    await bot.sender.command(text, slack.response_url())
    assert "1–10 of 37" in texts((await page_after(slack, 1)).args)


def test_start_with_bad_settings_fails_with_one_message() -> None:
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "SLACK_BOT_TOKEN": "xoxb-secretvalue123", "PAGE_SIZE": "99"}
    result = subprocess.run(
        [sys.executable, "-m", "bot"], env=env, capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert result.returncode == 2
    assert "PAGE_SIZE" in result.stderr and "HUAWEICLOUD_SDK_PROJECT_ID" in result.stderr
    assert "Traceback" not in result.stderr and "secretvalue123" not in result.stderr


async def test_no_secret_reaches_a_log_line(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    running = await bot_factory()
    sim.inject(Fault(kind="status", status=401, error_code="APIG.0307", error_msg="expired"))
    await running.sender.command("", slack.response_url())
    await page_after(slack, 1)
    await running.sender.command("tasks", slack.response_url())
    await page_after(slack, 2)
    # Raw records, before the redaction filter: nothing secret is logged in the first place.
    logged = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    assert "slack request" in logged and "listing failed" in logged
    for secret in ("sim-static-token", "test-signing-secret", "xoxb-test"):
        assert secret not in logged
