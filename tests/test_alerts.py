"""Notice buttons and the Home tab through a running bot: signed clicks, restarts, problems."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bot.notices import ACTION_ACK, ACTION_STALE_LIST, SNOOZE_ACTIONS, NoticeRef
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Simulator
from bot.secret import Secret
from tests.conftest import ALERTS, RunningBot
from tests.standin import wait_for
from tests.watching import add_stale, shown, top_level


def notice_post(call: Call) -> bool:
    return call.ok and call.args.get("channel") == ALERTS and not call.args.get("thread_ts")


def value_of(message: dict[str, Any], action_id: str) -> str:
    for block in message["blocks"]:
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            if element["action_id"] == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button in {shown(message)[:300]}")


def updated_with(words: str) -> Callable[[Call], bool]:
    return lambda call: call.ok and words in json.dumps(call.args.get("blocks"))


async def start(bot_factory: Any, state_url: str, **changes: Any) -> RunningBot:
    bot: RunningBot = await bot_factory(
        stale_channel_id=ALERTS, state_url=Secret(state_url), poll_interval=0.1, **changes
    )
    return bot


async def test_acknowledge_and_snooze_survive_a_restart(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    sim.tasks = []
    first_tasks = add_stale(sim, 2)
    bot = await start(bot_factory, state_url)
    await wait_for(slack, "chat.postMessage", 1, timeout=10, where=notice_post)
    (first,) = top_level(slack)
    await bot.sender.action(
        ACTION_ACK, value_of(first, ACTION_ACK), slack.response_url(), user="U0ALICE"
    )
    await wait_for(slack, "chat.update", 1, timeout=10, where=updated_with("Acknowledged by"))
    assert "Acknowledged by <@U0ALICE>" in shown(top_level(slack)[0])

    add_stale(sim, 1)
    await wait_for(slack, "chat.postMessage", 2, timeout=10, where=notice_post)
    second = top_level(slack)[1]
    four_hours = SNOOZE_ACTIONS[1]
    assert NoticeRef.parse(value_of(second, four_hours)).hours == 4
    await bot.sender.action(
        four_hours, value_of(second, four_hours), slack.response_url(), user="U0BOB"
    )
    await wait_for(slack, "chat.update", 1, timeout=10, where=updated_with("snoozed by <@U0BOB>"))
    assert await bot.shutdown() == 0

    # Restarted, with reminders every second: only the third notice, neither acknowledged nor
    # snoozed, gets one; the two older ones were due first and stay quiet.
    again = await start(bot_factory, state_url, renotify_after=timedelta(seconds=1))
    add_stale(sim, 1)
    await wait_for(slack, "chat.postMessage", 3, timeout=10, where=notice_post)
    third = top_level(slack)[2]
    await wait_for(
        slack,
        "chat.postMessage",
        1,
        timeout=10,
        where=lambda c: c.ok and c.args.get("thread_ts") == third["ts"],
    )
    (reminder,) = slack.thread(ALERTS, third["ts"])
    assert "still running" in shown(reminder)
    assert slack.thread(ALERTS, first["ts"]) == []
    assert slack.thread(ALERTS, second["ts"]) == []

    # The acknowledgement is part of the stored state: redrawn after the restart, it is there.
    sim.finish_task(first_tasks[0].task_id)
    await wait_for(
        slack,
        "chat.update",
        1,
        timeout=10,
        where=lambda c: c.ok and c.args["ts"] == first["ts"] and "1 of 2 finished" in str(c.args),
    )
    redrawn = top_level(slack)[0]
    assert "Acknowledged by <@U0ALICE>" in shown(redrawn)
    assert "1 of 2 finished" in shown(redrawn)
    assert await again.shutdown() == 0


async def test_acknowledge_answers_in_words_when_chat_update_gets_a_json_array(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    # slack_sdk raised AttributeError on the array; the click answered "Something went wrong".
    sim.tasks = []
    add_stale(sim, 1)
    bot = await start(bot_factory, state_url)
    await wait_for(slack, "chat.postMessage", 1, timeout=10, where=notice_post)
    (notice,) = top_level(slack)
    slack.fail_next("chat.update", status=200, body="array")
    await bot.sender.action(
        ACTION_ACK, value_of(notice, ACTION_ACK), slack.response_url(), user="U0ALICE"
    )
    (answer,) = await wait_for(slack, "response_url", 1, timeout=10, where=lambda c: c.ok)
    assert answer.args["replace_original"] is True
    assert "Acknowledged by <@U0ALICE>" in json.dumps(answer.args["blocks"])
    assert "Something went wrong" not in json.dumps(answer.args)


async def test_list_all_pages_through_a_big_notice(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    sim.tasks = []
    add_stale(sim, 25)
    bot = await start(bot_factory, state_url)
    await wait_for(slack, "chat.postMessage", 1, timeout=10, where=notice_post)
    (notice,) = top_level(slack)
    assert "List all 25" in shown(notice)

    await bot.sender.action(
        ACTION_STALE_LIST, value_of(notice, ACTION_STALE_LIST), slack.response_url()
    )
    (page,) = await wait_for(slack, "response_url", 1, timeout=10, where=lambda c: c.ok)
    assert "Stale tasks 1–20 of 25" in json.dumps(page.args["blocks"], ensure_ascii=False)
    assert page.args["replace_original"] is False
    await bot.sender.action(
        ACTION_STALE_LIST, value_of(page.args, ACTION_STALE_LIST), slack.response_url()
    )
    calls = await wait_for(slack, "response_url", 2, timeout=10, where=lambda c: c.ok)
    assert "Stale tasks 21–25 of 25" in json.dumps(calls[1].args["blocks"], ensure_ascii=False)
    assert calls[1].args["replace_original"] is True


async def test_buttons_on_unknown_or_garbled_notices_answer_in_words(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    sim.tasks = []
    bot = await start(bot_factory, state_url)
    await bot.sender.action(ACTION_ACK, NoticeRef(424242).encode(), slack.response_url())
    await bot.sender.action(SNOOZE_ACTIONS[0], "not json", slack.response_url())
    calls = await wait_for(slack, "response_url", 2, timeout=10, where=lambda c: c.ok)
    said = " ".join(json.dumps(c.args["blocks"]) for c in calls)
    assert "no longer in the bot's state store" in said
    assert "could not be read" in said
    assert slack.calls_to("chat.update") == []


async def test_home_tab_shows_that_slack_refuses_the_notices(
    bot_factory: Any, sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    sim.tasks = []
    add_stale(sim, 1)
    bot = await bot_factory(
        stale_channel_id="C0NOWHERE", state_url=Secret(state_url), poll_interval=0.1
    )
    await wait_for(
        slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.error == "channel_not_found"
    )
    for attempt in range(50):
        await bot.sender.event(
            {"type": "app_home_opened", "user": "U0ALICE", "tab": "home"},
            event_id=f"EvHome{attempt}",
        )
        published = await wait_for(slack, "views.publish", attempt + 1, timeout=10)
        view = json.dumps(published[-1].args["view"])
        if "channel_not_found" in view:
            break
    else:
        raise AssertionError("the Home tab never showed the problem")
    assert "C0NOWHERE" in view and "STALE_CHANNEL_ID" in view
    # Refused for good means: not tried again at every scan.
    assert len(slack.calls_to("chat.postMessage")) == 1
