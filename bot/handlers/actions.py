"""Buttons: paging, refresh, retry, share, and the Home tab's list button."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.blockkit import BadButtonValue, redact_payload
from bot.blocks import (
    PageRef,
    build_home_note,
    build_line,
    list_not_sent_note,
    list_sent_note,
)
from bot.config import Settings
from bot.handlers.pages import page_message, send_page
from bot.inflight import InFlight
from bot.kps import KPSClient
from bot.outbox import slack_call
from bot.replies import Replies, ResponseType
from bot.services import acked

log = logging.getLogger(__name__)


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
        # Each click carries a fresh response_url, and replacing through it also works on the
        # ephemeral pages, which Slack's chat.update cannot edit. A shared page or a threaded
        # answer must stay visible to everyone. A slow KPS shows Loading in place meanwhile.
        container = body.get("container") or {}
        visibility: ResponseType = "ephemeral" if container.get("is_ephemeral") else "in_channel"
        await send_page(
            replies,
            body["response_url"],
            page_message(kps, settings, clock, ref),
            ref,
            replace_original=True,
            response_type=visibility,
            loading_after=settings.loading_after,
        )


async def handle_share(
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
    """Post the page the user is looking at to the channel, for everyone."""
    async with acked(ack, inflight):
        ref = await _ref_or_complain(replies, body, action)
        if ref is None:
            return
        user = body.get("user", {}).get("id")
        if isinstance(user, str) and user:
            ref = replace(ref, shared_by=user)
        message = await page_message(kps, settings, clock, ref)
        channel = _thread_channel(body)
        if channel is None:
            # An in_channel response needs no channel membership, unlike chat.postMessage.
            await replies.send(body["response_url"], message, response_type="in_channel")
            return
        # A response_url of a message in a thread answers in that thread, so the page would
        # land beside the one it copies; the bot was mentioned there, so it may post.
        _, said = await slack_call(client.chat_postMessage(channel=channel, **message.as_payload()))
        if said is not None:
            log.warning("sharing in the channel failed", extra={"why": said})
            notice = build_line(f"Could not share the list in the channel: Slack answered {said}.")
            await replies.send(body["response_url"], notice)


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
    """The Home tab's button: a Home view has no response_url, so the page goes to the DM.

    Home then says so under the button, since nothing else on Home shows where it went.
    """
    async with acked(ack, inflight):
        ref = await _ref_or_complain(replies, body, action)
        user = body.get("user", {}).get("id")
        if ref is None or not isinstance(user, str):
            return
        message = await page_message(kps, settings, clock, ref)
        _, said = await slack_call(client.chat_postMessage(channel=user, **message.as_payload()))
        if said is None:
            app = body.get("api_app_id")
            note = list_sent_note(
                team=_inner(body, "team", "id"),
                app=app if isinstance(app, str) else None,
                at=clock(),
            )
        else:
            log.warning("could not send the list to the Messages tab", extra={"why": said})
            note = list_not_sent_note(said)
        view = body.get("view")
        if not isinstance(view, dict):
            return
        hash_ = view.get("hash")
        _, said = await slack_call(
            client.views_publish(
                user_id=user,
                view=redact_payload(build_home_note(view, note, page_size=settings.page_size)),
                hash=hash_ if isinstance(hash_, str) else None,
            )
        )
        if said is not None:  # hash_conflict: Home was redrawn meanwhile, keep that
            log.info("Home note not shown", extra={"why": said})


def _thread_channel(body: dict[str, Any]) -> str | None:
    """The channel of the clicked message when it is a reply in a thread; None otherwise."""
    thread = _inner(body, "container", "thread_ts") or _inner(body, "message", "thread_ts")
    ts = _inner(body, "container", "message_ts") or _inner(body, "message", "ts")
    # A thread's parent carries thread_ts too, equal to its own ts: it is in the channel.
    if thread is None or thread == ts:
        return None
    return _inner(body, "container", "channel_id") or _inner(body, "channel", "id")


def _inner(body: dict[str, Any], outer: str, key: str) -> str | None:
    """`body[outer][key]` when it is non-empty text; None for anything else Slack might send."""
    found = body.get(outer)
    value = found.get(key) if isinstance(found, dict) else None
    return value if isinstance(value, str) and value else None


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
