"""The `/kps` slash command."""

from __future__ import annotations

from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext

from bot.blocks import PageRef, build_help, build_usage_error
from bot.handlers.pages import page_message
from bot.intent import ListTasks, ShowHelp, parse_command
from bot.services import acked

COMMAND = "/kps"


async def handle_kps(ack: AsyncAck, command: dict[str, Any], context: AsyncBoltContext) -> None:
    """Help and usage errors go back in the ack; a page follows through `response_url`."""
    intent = parse_command(command.get("text"))
    if isinstance(intent, ShowHelp):
        await ack(**build_help().as_payload())
        return
    if not isinstance(intent, ListTasks):
        await ack(**build_usage_error(intent.text).as_payload())
        return
    # Ack first: Slack gives up after 3 seconds and KPS may be slower than that.
    async with acked(ack, context) as services:
        ref = PageRef(offset=0, page_size=services.settings.page_size, query=intent.query)
        message = await page_message(services, ref)
        await services.replies.send(command["response_url"], message)
