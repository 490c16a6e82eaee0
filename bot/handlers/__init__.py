"""Every Slack entry point the bot answers, registered in one place."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.kwargs_injection.async_args import AsyncArgs

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
from bot.services import Provided

# What manifest.yml must declare; a test compares the two.
COMMANDS = (COMMAND,)
EVENTS = ("app_mention", "app_home_opened")

_PAGING = re.compile(
    "^("
    + "|".join(re.escape(a) for a in (ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_RETRY))
    + ")$"
)
_SNOOZE = re.compile("^(" + "|".join(re.escape(a) for a in SNOOZE_ACTIONS) + ")$")


# The names Bolt itself hands to listeners (its `args` object lists them), and ours beside them.
BOLT_ARGS = frozenset(inspect.signature(AsyncArgs.__init__).parameters) - {"self", "kwargs"}
PROVIDED = frozenset(Provided.__annotations__)


def register(app: AsyncApp) -> None:
    """Attach every listener to `app`."""
    listen = (
        (app.command(COMMAND), handle_kps),
        (app.action(_PAGING), handle_page),
        (app.action(ACTION_SHARE), handle_share),
        (app.action(ACTION_LIST), handle_list),
        (app.action(ACTION_ACK), handle_acknowledge),
        (app.action(_SNOOZE), handle_snooze),
        (app.action(ACTION_STALE_LIST), handle_stale_list),
        (app.event("app_mention"), handle_mention),
        (app.event("app_home_opened"), handle_home),
    )
    for attach, listener in listen:
        check_injectable(listener)
        attach(listener)


def check_injectable(listener: Callable[..., Any]) -> None:
    """Refuse a listener Bolt could not fill: it passes None for a name it does not know."""
    unknown = [
        name
        for name, p in inspect.signature(listener).parameters.items()
        # Bolt fills only positional-or-keyword parameters (getfullargspec(...).args).
        if p.kind is not p.POSITIONAL_OR_KEYWORD or name not in BOLT_ARGS | PROVIDED
    ]
    if unknown:
        raise TypeError(f"Bolt cannot pass {listener.__qualname__} {', '.join(unknown)}")
