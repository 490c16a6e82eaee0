"""What a page is drawn from: unreadable task records are counted and said, through the bot."""

from __future__ import annotations

import json

from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from tests.conftest import RunningBot
from tests.standin import wait_for

# Seconds where KPS documents milliseconds: read as milliseconds, a start in January 1970.
SECONDS_NOT_MS = 1_700_000_000


async def test_a_page_says_how_many_records_it_left_out(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    for _ in range(2):
        sim.add_task(task_time_ms=SECONDS_NOT_MS)
    await bot.sender.command("", slack.response_url("plain"))
    await bot.sender.command("tasks ecs", slack.response_url("filtered"))
    replies = await wait_for(slack, "response_url", 2, timeout=15)
    for reply in replies:
        shown = json.dumps(reply.args, ensure_ascii=False)
        assert "2 task records could not be read and are not shown." in shown, reply.path
