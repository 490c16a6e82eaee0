"""Buttons: paging, refresh, retry, share, and the Home tab's list button."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.blockkit import BadButtonValue
from bot.blocks import PageRef, build_line
from bot.config import Settings
from bot.handlers.pages import page_message
from bot.inflight import InFlight
from bot.kps import KPSClient
from bot.replies import Replies, ResponseType
from bot.services import acked


async def handle_page(
    ack: AsyncAck,
    body: dict[str, Any],
    action: dict[str, Any],
    kps: KPSClient,
    replies: Replies,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """Previous, Next, Refresh and Retry: replace the message that holds the button."""
    async with acked(ack, inflight):
        ref = await _ref_or_complain(replies, body, action)
        if ref is None:
            return
        message = await page_message(kps, settings, clock, ref)
        # Each click carries a fresh response_url, and replacing through it also works on the
        # ephemeral pages, which Slack's chat.update cannot edit. A shared page or a threaded
        # answer must stay visible to everyone.
        container = body.get("container") or {}
        visibility: ResponseType = "ephemeral" if container.get("is_ephemeral") else "in_channel"
        await replies.send(
            body["response_url"], message, replace_original=True, response_type=visibility
        )


async def handle_share(
    ack: AsyncAck,
    body: dict[str, Any],
    action: dict[str, Any],
    kps: KPSClient,
    replies: Replies,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """Post the page the user is looking at to the channel, for everyone."""
    async with acked(ack, inflight):
        ref = await _ref_or_complain(replies, body, action)
        if ref is None:
            return
        user = body.get("user", {}).get("id")
        if isinstance(user, str) and user:
            ref = replace(ref, shared_by=user)
        message = await page_message(kps, settings, clock, ref)
        # An in_channel response needs no channel membership, unlike chat.postMessage.
        await replies.send(body["response_url"], message, response_type="in_channel")


async def handle_list(
    ack: AsyncAck,
    body: dict[str, Any],
    action: dict[str, Any],
    client: AsyncWebClient,
    kps: KPSClient,
    replies: Replies,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """The Home tab's button: a Home view has no response_url, so the page goes to the DM."""
    async with acked(ack, inflight):
        ref = await _ref_or_complain(replies, body, action)
        user = body.get("user", {}).get("id")
        if ref is None or not isinstance(user, str):
            return
        message = await page_message(kps, settings, clock, ref)
        await client.chat_postMessage(channel=user, **message.as_payload())


async def _ref_or_complain(
    replies: Replies, body: dict[str, Any], action: dict[str, Any]
) -> PageRef | None:
    try:
        return PageRef.parse(str(action.get("value", "")))
    except BadButtonValue as error:
        url = body.get("response_url")
        if isinstance(url, str):
            notice = build_line(f"That button could not be read ({error}). Run `/kps` again.")
            await replies.send(url, notice)
        return None
