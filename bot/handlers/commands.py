"""The `/kps` slash command."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck

from bot.blocks import PageRef, build_help, build_usage_error
from bot.config import Settings
from bot.handlers.pages import page_message, send_page
from bot.inflight import InFlight
from bot.intent import ListTasks, ShowHelp, parse_command
from bot.kps import KPSClient
from bot.replies import Replies
from bot.services import acked

COMMAND = "/kps"


async def handle_kps(
    ack: AsyncAck,
    command: dict[str, Any],
    kps: KPSClient,
    replies: Replies,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """Help and usage errors go back in the ack; a page follows through `response_url`.

    A KPS slower than `settings.loading_after` gets a Loading state there first, which the page
    replaces.
    """
    intent = parse_command(command.get("text"))
    if isinstance(intent, ShowHelp):
        await ack(**build_help().as_payload())
        return
    if not isinstance(intent, ListTasks):
        await ack(**build_usage_error(intent.text).as_payload())
        return
    # Ack first: Slack gives up after 3 seconds and KPS may be slower than that.
    async with acked(ack, inflight):
        ref = PageRef(offset=0, page_size=settings.page_size, query=intent.query)
        await send_page(
            replies,
            command["response_url"],
            page_message(kps, settings, clock, ref),
            ref,
            replace_original=False,
            response_type="ephemeral",
            loading_after=settings.loading_after,
        )
