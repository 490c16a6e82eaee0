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
from bot.handlers.commands import COMMAND, handle_kps
from bot.handlers.events import handle_home, handle_mention

# What manifest.yml must declare; a test compares the two.
COMMANDS = (COMMAND,)
EVENTS = ("app_mention", "app_home_opened")

_PAGING = re.compile(
    "^("
    + "|".join(re.escape(a) for a in (ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_RETRY))
    + ")$"
)


def register(app: AsyncApp) -> None:
    """Attach every listener to `app`."""
    app.command(COMMAND)(handle_kps)
    app.action(_PAGING)(handle_page)
    app.action(ACTION_SHARE)(handle_share)
    app.action(ACTION_LIST)(handle_list)
    app.event("app_mention")(handle_mention)
    app.event("app_home_opened")(handle_home)
