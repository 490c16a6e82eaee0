"""Stale-notice buttons: Acknowledge, Snooze 1 h / 4 h / 24 h, and List all.

Any replica may get the click (Socket Mode hands it to one random connection), so each handler
writes the store and updates the notice itself; the store also queues an update for the
watching replica, which redraws the notice from the newest state in case two edits crossed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_sdk.web.async_client import AsyncWebClient

from bot.alerts import NoticeState
from bot.blockkit import BadButtonValue, Message, ViewContext
from bot.blocks import build_line
from bot.config import Settings
from bot.inflight import InFlight
from bot.notices import (
    NoticeRef,
    build_notice_list,
    build_notices_off,
    build_stale_notice,
    build_unknown_notice,
)
from bot.outbox import slack_call
from bot.replies import Replies
from bot.services import acked, view_context
from bot.store import Store, StoreError

log = logging.getLogger(__name__)


async def handle_acknowledge(
    ack: AsyncAck,
    body: dict[str, Any],
    action: dict[str, Any],
    client: AsyncWebClient,
    replies: Replies,
    store: Store | None,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """Record who acknowledged the notice and when, and show it on the notice."""
    async with acked(ack, inflight):
        found = await _notice_and_store(replies, store, body, action)
        if found is None:
            return
        ref, store = found
        try:
            state = await store.acknowledge(ref.notice_id, _user(body), now=clock())
        except StoreError as error:
            await _store_down(replies, body, "record your acknowledgement", error)
            return
        await _redraw(replies, client, body, state, view_context(settings, clock()))


async def handle_snooze(
    ack: AsyncAck,
    body: dict[str, Any],
    action: dict[str, Any],
    client: AsyncWebClient,
    replies: Replies,
    store: Store | None,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """Stop the notice's reminders for 1, 4 or 24 hours, and show until when."""
    async with acked(ack, inflight):
        found = await _notice_and_store(replies, store, body, action)
        if found is None:
            return
        ref, store = found
        if not ref.hours:
            await _answer(replies, body, build_line("That snooze button could not be read."))
            return
        now = clock()
        until = now + timedelta(hours=ref.hours)
        try:
            state = await store.snooze(ref.notice_id, _user(body), until=until, now=now)
        except StoreError as error:
            await _store_down(replies, body, "record your snooze", error)
            return
        await _redraw(replies, client, body, state, view_context(settings, clock()))


async def handle_stale_list(
    ack: AsyncAck,
    body: dict[str, Any],
    action: dict[str, Any],
    replies: Replies,
    store: Store | None,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """Every task of a notice with its state, a page at a time, only for the one who asked."""
    async with acked(ack, inflight):
        found = await _notice_and_store(replies, store, body, action)
        if found is None:
            return
        ref, store = found
        try:
            state = await store.notice_state(ref.notice_id)
        except StoreError as error:
            await _store_down(replies, body, "read this notice", error)
            return
        if state is None or not state.alerts:
            await _answer(replies, body, build_unknown_notice())
            return
        message = build_notice_list(state, view_context(settings, clock()), offset=ref.offset)
        await _answer(replies, body, message, replace=ref.replace)


async def _notice_and_store(
    replies: Replies, store: Store | None, body: dict[str, Any], action: dict[str, Any]
) -> tuple[NoticeRef, Store] | None:
    try:
        ref = NoticeRef.parse(action.get("value"))
    except BadButtonValue as error:
        await _answer(replies, body, build_line(f"That button could not be read ({error})."))
        return None
    if store is None:
        await _answer(replies, body, build_notices_off())
        return None
    return ref, store


async def _store_down(replies: Replies, body: dict[str, Any], what: str, error: StoreError) -> None:
    # The click changed nothing: say so, so the user tries again rather than trusting it.
    log.warning("a click could not %s: %s", what, error, extra={"error": str(error)})
    words = f"I could not {what}: the state store is unavailable. Please try again in a minute."
    await _answer(replies, body, build_line(words))


async def _redraw(
    replies: Replies,
    client: AsyncWebClient,
    body: dict[str, Any],
    state: NoticeState | None,
    ctx: ViewContext,
) -> None:
    if state is None or not state.alerts:
        await _answer(replies, body, build_unknown_notice())
        return
    message = build_stale_notice(state, ctx)
    container = body.get("container") or {}
    channel = state.notice.channel or container.get("channel_id")
    ts = state.notice.ts or container.get("message_ts")
    if isinstance(channel, str) and isinstance(ts, str):
        _, said = await slack_call(
            client.chat_update(channel=channel, ts=ts, **message.as_payload())
        )
        if said is None:
            return
        log.warning(
            "could not update the notice; replacing it through response_url",
            extra={"error": said},
        )
    await _answer(replies, body, message, replace=True)


async def _answer(
    replies: Replies, body: dict[str, Any], message: Message, *, replace: bool = False
) -> None:
    url = body.get("response_url")
    if isinstance(url, str):
        await replies.send(url, message, replace_original=replace)


def _user(body: dict[str, Any]) -> str:
    user = body.get("user") or {}
    found = user.get("id") if isinstance(user, dict) else None
    return found if isinstance(found, str) and found else "someone"
