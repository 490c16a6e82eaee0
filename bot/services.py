"""What every listener needs, built once at start-up and handed over through Bolt's context."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext

from bot.blockkit import ViewContext
from bot.config import Settings
from bot.inflight import InFlight
from bot.kps import KPSClient
from bot.replies import Replies
from bot.store import Store

CONTEXT_KEY = "kps_services"


def utc_now() -> datetime:
    """The current time, aware UTC."""
    return datetime.now(UTC)


class SeenEvents:
    """Event ids handled recently: Slack redelivers an event it thinks was not acknowledged.

    Deduplicating on `event_id` rather than dropping every retry keeps a genuinely lost first
    delivery from being lost twice (research/slack-bolt.md §7).
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


@dataclass(frozen=True)
class Services:
    """The KPS client, the reply channel, the alert store and the settings, for all listeners."""

    settings: Settings
    kps: KPSClient
    replies: Replies
    inflight: InFlight = field(default_factory=InFlight)
    seen_events: SeenEvents = field(default_factory=SeenEvents)
    clock: Callable[[], datetime] = utc_now
    store: Store | None = None  # None when STALE_CHANNEL_ID is unset: no notices, no state

    def view_context(self) -> ViewContext:
        """Project, region, thresholds and the time, for the page and notice builders."""
        return ViewContext(
            project_id=self.settings.project_id,
            region=self.settings.region,
            now=self.clock(),
            stale_after=self.settings.stale_after,
            renotify_after=self.settings.renotify_after,
        )


def services_of(context: AsyncBoltContext) -> Services:
    """The services a middleware put into this request's context."""
    services = context[CONTEXT_KEY]
    if not isinstance(services, Services):  # a wiring bug, not a user error
        raise RuntimeError("kps-bot services are missing from the Bolt context")
    return services


@asynccontextmanager
async def acked(ack: AsyncAck, context: AsyncBoltContext) -> AsyncIterator[Services]:
    """Ack the request and hold it in flight until the block ends.

    The hold starts before the ack: once Slack has its ack, a SIGTERM must still wait for the
    rest of the work (bot/server.py drains in-flight work before closing the clients).
    """
    services = services_of(context)
    async with services.inflight.hold():
        await ack()
        yield services
