"""Events: @-mentions answered in a thread, and the Home tab."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.blockkit import redact_payload
from bot.blocks import HomeSummary, PageRef, build_help, build_home, build_usage_error
from bot.config import Settings
from bot.errors import KPSError
from bot.handlers.pages import page_message
from bot.inflight import InFlight
from bot.intent import ListTasks, ShowHelp, parse_mention
from bot.kps import KPSClient
from bot.listing import census
from bot.services import SeenEvents, view_context
from bot.store import Store

log = logging.getLogger(__name__)


async def handle_mention(
    body: dict[str, Any],
    event: dict[str, Any],
    client: AsyncWebClient,
    kps: KPSClient,
    settings: Settings,
    inflight: InFlight,
    seen_events: SeenEvents,
    clock: Callable[[], datetime],
) -> None:
    """`@kps-bot tasks [words]` or `help`, answered in the mention's thread."""
    # Held before the duplicate check too: in flight 0 then also means a redelivery was seen.
    async with inflight.hold():
        if not seen_events.first_time(str(body.get("event_id", ""))):
            log.info("duplicate event delivery ignored")
            return
        intent = parse_mention(event.get("text"))
        if isinstance(intent, ListTasks):
            ref = PageRef(offset=0, page_size=settings.page_size, query=intent.query)
            message = await page_message(kps, settings, clock, ref)
        elif isinstance(intent, ShowHelp):
            message = build_help()
        else:
            message = build_usage_error(intent.text)
        await client.chat_postMessage(
            channel=event["channel"],
            thread_ts=event.get("thread_ts") or event["ts"],
            **message.as_payload(),
        )


async def handle_home(
    event: dict[str, Any],
    client: AsyncWebClient,
    kps: KPSClient,
    store: Store | None,
    settings: Settings,
    inflight: InFlight,
    clock: Callable[[], datetime],
) -> None:
    """A live summary on the Home tab: running, stale, the oldest, and a button to list them."""
    if event.get("tab", "home") != "home":
        return
    async with inflight.hold():
        ctx = view_context(settings, clock())
        error: KPSError | None = None
        try:
            snapshot = await kps.walk_running_tasks()
            counts = census(snapshot.tasks, now=ctx.now, stale_after=ctx.stale_after)
        except KPSError as exc:
            error = exc
            counts = census((), now=ctx.now, stale_after=ctx.stale_after)
        summary = HomeSummary(
            running=counts.running,
            stale=counts.stale,
            oldest=counts.oldest,
            fetched_at=ctx.fetched_at,
            problems=await _problems(store),
            error=error,
            queued=counts.queued,
        )
        view = build_home(summary, ctx, page_size=settings.page_size)
        # The Home tab is no Message: its view is redacted here, where it leaves.
        await client.views_publish(user_id=event["user"], view=redact_payload(view))


async def _problems(store: Store | None) -> tuple[str, ...]:
    """What the watcher recorded as wrong (Slack refusing notices, scans failing)."""
    if store is None:
        return ()
    try:
        return tuple(await store.problems())
    except Exception:  # the Home tab still shows the counts when the store is unreachable
        log.warning("could not read problems from the state store", exc_info=True)
        return ("The state store (STATE_URL) cannot be read; see the bot's log.",)
