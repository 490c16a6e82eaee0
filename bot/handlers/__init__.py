"""Every Slack entry point the bot answers, registered in one place."""

from __future__ import annotations

import re

from slack_bolt.async_app import AsyncApp

from bot.blocks import (
    ACTION_LIST,
    ACTION_NEXT,
    ACTION_PREVIOUS,
    ACTION_REFRESH,
    ACTION_RETRY,
    ACTION_SHARE,
)
from bot.handlers.actions import handle_list, handle_page, handle_share
from bot.handlers.alerts import handle_acknowledge, handle_snooze, handle_stale_list
from bot.handlers.commands import COMMAND, handle_kps
from bot.handlers.events import handle_home, handle_mention
from bot.notices import ACTION_ACK, ACTION_STALE_LIST, SNOOZE_ACTIONS

# What manifest.yml must declare; a test compares the two.
COMMANDS = (COMMAND,)
EVENTS = ("app_mention", "app_home_opened")

_PAGING = re.compile(
    "^("
    + "|".join(re.escape(a) for a in (ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_RETRY))
    + ")$"
)
_SNOOZE = re.compile("^(" + "|".join(re.escape(a) for a in SNOOZE_ACTIONS) + ")$")


def register(app: AsyncApp) -> None:
    """Attach every listener to `app`."""
    app.command(COMMAND)(handle_kps)
    app.action(_PAGING)(handle_page)
    app.action(ACTION_SHARE)(handle_share)
    app.action(ACTION_LIST)(handle_list)
    app.action(ACTION_ACK)(handle_acknowledge)
    app.action(_SNOOZE)(handle_snooze)
    app.action(ACTION_STALE_LIST)(handle_stale_list)
    app.event("app_mention")(handle_mention)
    app.event("app_home_opened")(handle_home)
