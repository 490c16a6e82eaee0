"""What listeners need, put into each request's Bolt context by name at start-up."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypedDict

from slack_bolt.context.ack.async_ack import AsyncAck

from bot.blockkit import ViewContext
from bot.config import Settings
from bot.inflight import InFlight
from bot.kps import KPSClient
from bot.replies import Replies
from bot.store import Store


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class SeenEvents:
    """Event ids handled recently: Slack redelivers an event it thinks was not acknowledged.

    Deduplicating on `event_id` rather than dropping every retry keeps a genuinely lost first
    delivery from being lost twice.
    """

    def __init__(self, ttl: float = 600.0, limit: int = 10_000) -> None:
        self._ttl = ttl
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, event_id: str, now: float | None = None) -> bool:
        """True the first time an id is offered within the TTL."""
        moment = time.monotonic() if now is None else now
        while self._seen and (
            len(self._seen) > self._limit or next(iter(self._seen.values())) < moment - self._ttl
        ):
            self._seen.popitem(last=False)
        if event_id in self._seen:
            return False
        self._seen[event_id] = moment
        return True


class Provided(TypedDict):
    """What a middleware puts into every request's context, each under its own name.

    Bolt hands a listener every context key its signature names, as it hands it `ack` or `body`
    (slack_bolt/kwargs_injection/async_utils.py), so a listener declares exactly what it uses
    as typed parameters: `kps: KPSClient`, `store: Store | None`. Bolt fills a name it does not
    know with None and only logs a warning, so `handlers.register` refuses, at start-up, a
    listener whose parameters are not all Bolt's own or keys of this dict.
    """

    settings: Settings
    kps: KPSClient
    replies: Replies
    store: Store | None  # None when STALE_CHANNEL_ID is unset: no notices, no state
    inflight: InFlight
    seen_events: SeenEvents
    clock: Callable[[], datetime]


def view_context(settings: Settings, now: datetime) -> ViewContext:
    """Project, region, thresholds and the time, for the page, Home and notice builders."""
    return ViewContext(
        project_id=settings.project_id,
        region=settings.region,
        now=now,
        stale_after=settings.stale_after,
        renotify_after=settings.renotify_after,
    )


@asynccontextmanager
async def acked(ack: AsyncAck, inflight: InFlight) -> AsyncIterator[None]:
    """Ack the request and hold it in flight until the block ends.

    The hold starts before the ack: once Slack has its ack, a SIGTERM must still wait for the
    rest of the work (bot/server.py drains in-flight work before closing the clients).
    """
    async with inflight.hold():
        await ack()
        yield
