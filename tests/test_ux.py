"""Issue 10's "What a new user hit", end to end: signed Slack requests into the running bot,
with the KPS simulator and the Slack stand-in."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from bot.blocks import ACTION_LIST, ACTION_NEXT, ACTION_SHARE, HOME_NOTE_BLOCK
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Fault, Simulator
from bot.secret import Secret
from tests.conftest import ALERTS, RunningBot
from tests.standin import wait_for
from tests.test_slack_e2e import button, texts
from tests.watching import add_stale, shown, started_ms, top_level


async def start_watching(bot_factory: Any, state_url: str) -> RunningBot:
    bot: RunningBot = await bot_factory(
        stale_channel_id=ALERTS, state_url=Secret(state_url), poll_interval=0.1
    )
    return bot


def in_alerts(call: Call) -> bool:
    return call.ok and call.args.get("channel") == ALERTS and not call.args.get("thread_ts")


async def click(bot: RunningBot, payload: dict[str, Any]) -> None:
    """Send a block_actions payload as Slack would, signed."""
    body = urlencode({"payload": json.dumps(payload)})
    response = await bot.sender.post(body, "application/x-www-form-urlencoded")
    assert response.status_code == 200


# --- queued tasks --------------------------------------------------------------------------------


async def test_a_queued_task_is_shown_queued_counted_apart_and_never_announced(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    # Issue 10: a READY_x task read "running 26 min", and past STALE_AFTER it was announced.
    sim.tasks = []
    queued = sim.add_task(
        operate_type="READY_RESET", task_time_ms=started_ms(50), server_name="waiting-01"
    )
    (stale,) = add_stale(sim, 1, minutes=40, server_name="stuck-01")
    bot = await start_watching(bot_factory, state_url)

    await wait_for(slack, "chat.postMessage", 1, timeout=10, where=in_alerts)
    (notice,) = top_level(slack)
    assert stale.task_id in shown(notice) and queued.task_id not in shown(notice)
    assert "A key-pair task is stale" in shown(notice)

    await bot.sender.command("", slack.response_url())
    (page,) = await wait_for(slack, "response_url", 1, timeout=10)
    said = texts(page.args)
    assert "*1* on this page is queued, not started yet" in said
    line = next(t for t in said.split('"text": "') if t.startswith("*waiting-01*"))
    assert "*queued* <!date^" in line and "waiting 50 min to start" in line
    assert "running" not in line and "stale" not in line

    event = {"type": "app_home_opened", "user": "U0ALICE", "channel": "D0ALICE", "tab": "home"}
    await bot.sender.event(event, event_id="EvQueued")
    (published,) = await wait_for(slack, "views.publish", 1, timeout=10)
    home = json.dumps(published.args["view"], ensure_ascii=False)
    assert "*1* key-pair task is running · *1* stale" in home
    assert "*1* queued, not started yet" in home
    assert "stuck-01" in home and "Oldest" in home  # the queued one is older but not running


# --- Share from the mention's thread answer ------------------------------------------------------


async def test_share_on_a_thread_answer_posts_in_the_channel_not_the_thread(
    bot: RunningBot, slack: FakeSlack
) -> None:
    # Issue 10: the response_url of a message in a thread answers in that thread, so Share put
    # a second copy beside the first.
    mention = slack.add_user_message("C0GENERAL", "U0ALICE", "<@U0BOT> tasks")
    event = {
        "type": "app_mention",
        "user": "U0ALICE",
        "text": "<@U0BOT> tasks",
        "ts": mention["ts"],
        "channel": "C0GENERAL",
        "event_ts": mention["ts"],
    }
    await bot.sender.event(event, event_id="EvShare")
    (answer,) = await wait_for(slack, "chat.postMessage", 1, timeout=10)
    assert answer.result is not None
    share = button(answer.args, ACTION_SHARE)
    assert share is not None

    payload = bot.sender.action_payload(
        ACTION_SHARE, share["value"], slack.response_url("thread"), ephemeral=False
    )
    payload["container"].update(message_ts=answer.result["ts"], thread_ts=mention["ts"])
    payload["message"] = {**answer.result["message"], "thread_ts": mention["ts"]}
    await click(bot, payload)

    posts = await wait_for(slack, "chat.postMessage", 2, timeout=10)
    copy = posts[1].args
    assert copy["channel"] == "C0GENERAL" and not copy.get("thread_ts")
    assert "1–10 of 37" in texts(copy) and "Shared by <@U0ALICE>" in texts(copy)
    await bot.settled()
    assert slack.calls_to("response_url") == []
    assert len(slack.thread("C0GENERAL", mention["ts"])) == 1  # only the answer itself
    assert posts[1].result is not None
    in_channel = [m["ts"] for m in top_level(slack, "C0GENERAL")]
    assert in_channel == [mention["ts"], posts[1].result["ts"]]


async def test_share_on_a_thread_answer_says_in_words_when_slack_answers_garbage(
    bot: RunningBot, slack: FakeSlack
) -> None:
    # A 200 whose body is not JSON reached the listener as an aiohttp response, and reading it
    # like Slack's JSON raised AttributeError: the user saw "Something went wrong".
    mention = slack.add_user_message("C0GENERAL", "U0ALICE", "<@U0BOT> tasks")
    event = {
        "type": "app_mention",
        "user": "U0ALICE",
        "text": "<@U0BOT> tasks",
        "ts": mention["ts"],
        "channel": "C0GENERAL",
        "event_ts": mention["ts"],
    }
    await bot.sender.event(event, event_id="EvShareGarbage")
    (answer,) = await wait_for(slack, "chat.postMessage", 1, timeout=10)
    assert answer.result is not None
    share = button(answer.args, ACTION_SHARE)
    assert share is not None
    payload = bot.sender.action_payload(
        ACTION_SHARE, share["value"], slack.response_url("thread"), ephemeral=False
    )
    payload["container"].update(message_ts=answer.result["ts"], thread_ts=mention["ts"])
    payload["message"] = {**answer.result["message"], "thread_ts": mention["ts"]}
    slack.fail_next("chat.postMessage", status=200, body="garbage")
    await click(bot, payload)

    (said,) = await wait_for(slack, "response_url", 1, timeout=10)
    words = texts(said.args)
    assert "Could not share the list in the channel" in words
    assert "not Slack's JSON" in words and "Something went wrong" not in words


async def test_share_on_an_ephemeral_page_still_answers_in_channel(
    bot: RunningBot, slack: FakeSlack
) -> None:
    # Not in a thread: the response_url posts in the channel, with no membership needed.
    await bot.sender.command("", slack.response_url())
    (page,) = await wait_for(slack, "response_url", 1, timeout=10)
    share = button(page.args, ACTION_SHARE)
    assert share is not None
    await bot.sender.action(ACTION_SHARE, share["value"], slack.response_url())
    shared = (await wait_for(slack, "response_url", 2, timeout=10))[1].args
    assert shared["response_type"] == "in_channel"
    await bot.settled()
    assert slack.calls_to("chat.postMessage") == []


# --- the recovery notice -------------------------------------------------------------------------


async def test_recovery_is_posted_before_that_scans_stale_notice_and_in_seconds(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    # Issue 10: "works again after 0 min", arriving after the stale notice of the same scan.
    sim.tasks = []
    sim.inject(Fault(kind="status", status=503, error_code="KPS.0503", times=-1))
    await start_watching(bot_factory, state_url)
    await wait_for(slack, "chat.postMessage", 1, timeout=20, where=in_alerts)
    (stale,) = add_stale(sim, 1)
    sim.clear_faults()

    await wait_for(slack, "chat.postMessage", 3, timeout=20, where=in_alerts)
    impaired, recovered, notice = top_level(slack)[:3]
    assert "is impaired" in shown(impaired)
    assert re.search(r"works again\* after \d+ s\.", shown(recovered)), shown(recovered)
    assert "0 min" not in shown(recovered)
    assert stale.task_id in shown(notice)


# --- the Home tab's List button ------------------------------------------------------------------


async def open_home_and_click_list(bot: RunningBot, slack: FakeSlack) -> dict[str, Any]:
    event = {"type": "app_home_opened", "user": "U0ALICE", "channel": "D0ALICE", "tab": "home"}
    await bot.sender.event(event, event_id="EvHome")
    await wait_for(slack, "views.publish", 1, timeout=10)
    view = slack.views["U0ALICE"]  # as Slack stores it, with its id and hash
    listing = next(
        e
        for b in view["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == ACTION_LIST
    )
    payload = bot.sender.action_payload(ACTION_LIST, listing["value"], None, container="view")
    payload["container"] = {"type": "view", "view_id": view["id"]}
    payload["view"] = view
    del payload["channel"]
    await click(bot, payload)
    return view


async def test_home_list_button_says_on_home_that_the_list_is_in_messages(
    bot: RunningBot, slack: FakeSlack
) -> None:
    # Issue 10: the list went to the Messages tab and Home showed no sign of it.
    before = await open_home_and_click_list(bot, slack)
    (dm,) = await wait_for(slack, "chat.postMessage", 1, timeout=10)
    assert dm.args["channel"] == "U0ALICE" and "1–10 of 37" in texts(dm.args)
    published = await wait_for(slack, "views.publish", 2, timeout=10)
    again = published[1].args
    assert again["hash"] == before["hash"]  # a Home redrawn meanwhile is not overwritten
    blocks = again["view"]["blocks"]
    note = blocks[-1]
    assert note["block_id"] == HOME_NOTE_BLOCK
    assert "Sent the list of running tasks to your" in note["elements"][0]["text"]
    assert "tab=messages|Messages tab>" in note["elements"][0]["text"]
    # The counts and the button the user was looking at stay.
    assert blocks[:-1] == before["blocks"]
    assert "37" in json.dumps(blocks[:-1], ensure_ascii=False)


async def test_home_says_so_when_the_list_cannot_reach_messages(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.fail_next("chat.postMessage", status=200, error="messages_tab_disabled")
    await open_home_and_click_list(bot, slack)
    published = await wait_for(slack, "views.publish", 2, timeout=10)
    note = published[1].args["view"]["blocks"][-1]["elements"][0]["text"]
    assert "Could not send the list to your Messages tab" in note
    assert "`messages_tab_disabled`" in note


async def test_home_says_so_when_slack_answers_the_list_with_a_json_array(
    bot: RunningBot, slack: FakeSlack
) -> None:
    # slack_sdk itself raised AttributeError on a 200 whose JSON is an array; it escaped the
    # listener's `except SlackApiError` and Home showed nothing.
    slack.fail_next("chat.postMessage", status=200, body="array")
    await open_home_and_click_list(bot, slack)
    published = await wait_for(slack, "views.publish", 2, timeout=10)
    note = published[1].args["view"]["blocks"][-1]["elements"][0]["text"]
    assert "Could not send the list to your Messages tab" in note
    assert "not Slack's JSON" in note


# --- slow KPS: a Loading state at once -----------------------------------------------------------


async def test_slow_kps_shows_loading_then_the_page_in_its_place(
    bot_factory: Callable[..., Any], sim: Simulator, slack: FakeSlack
) -> None:
    # Issue 10: nothing changed for 3 s after /kps or Next.
    bot: RunningBot = await bot_factory(loading_after=0.5)
    sim.latency = 5.0
    started = time.monotonic()
    response = await bot.sender.command("", slack.response_url("cmd"))
    assert response.status_code == 200 and time.monotonic() - started < 3.0  # Slack's limit
    (loading,) = await wait_for(slack, "response_url", 1, timeout=10)
    assert time.monotonic() - started < 5.0  # before KPS answers: a placeholder, not the page
    assert "Loading" in texts(loading.args) and loading.args["replace_original"] is False
    assert button(loading.args, ACTION_NEXT) is None
    page = (await wait_for(slack, "response_url", 2, timeout=20))[1]
    assert page.path == loading.path  # the same response_url
    assert page.args["replace_original"] is True and "1–10 of 37" in texts(page.args)

    nxt = button(page.args, ACTION_NEXT)
    assert nxt is not None
    await bot.sender.action(ACTION_NEXT, nxt["value"], slack.response_url("next"))
    calls = await wait_for(slack, "response_url", 4, timeout=20)
    assert "Loading" in texts(calls[2].args) and calls[2].args["replace_original"] is True
    assert calls[2].args["response_type"] == "ephemeral"
    assert "11–20 of 37" in texts(calls[3].args) and calls[3].args["replace_original"] is True


async def test_fast_kps_gets_no_loading_state(
    bot_factory: Callable[..., Any], sim: Simulator, slack: FakeSlack
) -> None:
    # A quick answer neither flickers nor spends one of the response_url's five posts. The
    # delay is longer than the bot's 0.5 s so a loaded test machine cannot decide the result.
    bot: RunningBot = await bot_factory(loading_after=3.0)
    await bot.sender.command("", slack.response_url())
    (page,) = await wait_for(slack, "response_url", 1, timeout=10)
    await bot.settled()
    assert len(slack.calls_to("response_url")) == 1
    assert "1–10 of 37" in texts(page.args) and page.args["replace_original"] is False
