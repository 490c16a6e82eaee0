"""The one place where Bolt, the HTTP and KPS clients, the store and the watcher are built."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot import handlers
from bot.auth import AkSkAuth, IamPasswordAuth, StaticTokenAuth
from bot.blocks import build_line
from bot.config import AkSkAuthSettings, PasswordAuthSettings, Settings, TokenAuthSettings
from bot.gate import ResponseUrls, mark_verified, passed_verification
from bot.inflight import InFlight
from bot.kps import KPSClient, RetryPolicy
from bot.logs import correlation_id, new_correlation_id, register_secret
from bot.readiness import Readiness
from bot.replies import Replies
from bot.retryafter import CappedRateLimitHandler
from bot.scan import Notices
from bot.services import Provided, SeenEvents, utc_now
from bot.store import Store
from bot.watcher import Pace, Watcher

log = logging.getLogger(__name__)

KPS_CONNECTIONS = 50  # the httpx pool; the KPS client queues further requests itself


def build_kps_auth(settings: Settings) -> httpx.Auth:
    """The `httpx.Auth` for the configured KPS auth mode."""
    auth = settings.auth
    if isinstance(auth, TokenAuthSettings):
        return StaticTokenAuth(auth.token)
    if isinstance(auth, PasswordAuthSettings):
        return IamPasswordAuth(
            iam_endpoint=settings.iam_endpoint,
            username=auth.username,
            password=auth.password,
            domain=auth.domain,
            project_id=settings.project_id,
        )
    if isinstance(auth, AkSkAuthSettings):
        return AkSkAuth(
            ak=auth.ak,
            sk=auth.sk,
            project_id=settings.project_id,
            security_token=auth.security_token,
        )
    raise TypeError(f"unknown auth settings {type(auth).__name__}")


def slack_retry_handlers(*, rate_limits: bool = True) -> list[AsyncRetryHandler]:
    """Retry connection errors, 429 (a short Retry-After only) and 5xx; slack_sdk does the first.

    `rate_limits=False` leaves a 429 to the caller: the outbox's `classify` owns rate limits.
    """
    handlers: list[AsyncRetryHandler] = [
        AsyncConnectionErrorRetryHandler(max_retry_count=2),
        AsyncServerErrorRetryHandler(max_retry_count=2),
    ]
    if rate_limits:
        handlers.insert(1, CappedRateLimitHandler(max_retry_count=2))
    return handlers


@dataclass
class Runtime:
    """Everything built at start-up, and the methods that start and close it all."""

    settings: Settings
    app: AsyncApp
    kps: KPSClient
    inflight: InFlight
    slack: AsyncWebClient
    http: httpx.AsyncClient
    session: aiohttp.ClientSession
    readiness: Readiness
    store: Store | None = None
    watcher: Watcher | None = None

    async def start(self) -> None:
        """Create or migrate the store's schema, ask Slack whether it takes the bot token, then
        start the watcher beside the app.

        A refused token does not end the process: `/readyz` says so (while `/healthz`, which
        platforms restart on, stays 200) and auth.test is asked again until Slack accepts it.
        The watcher starts anyway; its outbox holds notices while Slack refuses them.
        """
        if self.store is not None:
            await self.store.migrate()
        await self.readiness.start()
        if self.watcher is not None:
            self.watcher.start()

    async def aclose(self) -> None:
        """Stop the watcher (giving its lease up), then close the store and the pooled clients."""
        await self.readiness.aclose()
        try:
            if self.watcher is not None:
                await self.watcher.stop()
        finally:
            if self.store is not None:
                await self.store.close()
            await self.http.aclose()
            await self.session.close()


def build_runtime(
    settings: Settings, *, kps_transport: httpx.AsyncBaseTransport | None = None
) -> Runtime:
    """Build the clients and the Bolt app; must be called inside a running event loop."""
    for secret in settings.secret_values():
        register_secret(secret)
    timeout = httpx.Timeout(settings.kps_timeout, connect=min(5.0, settings.kps_timeout))
    http = httpx.AsyncClient(
        auth=build_kps_auth(settings),
        timeout=timeout,
        limits=httpx.Limits(max_connections=KPS_CONNECTIONS, max_keepalive_connections=20),
        transport=kps_transport,
        headers={"User-Agent": "kps-bot/0.1"},
    )
    kps = KPSClient(
        http,
        endpoint=settings.kps_endpoint,
        project_id=settings.project_id,
        retry=RetryPolicy(attempts=settings.kps_max_attempts),
        max_in_flight=KPS_CONNECTIONS,
    )
    # One aiohttp session for the Web API and every response_url post: pooled connections.
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    retry = slack_retry_handlers()
    slack = AsyncWebClient(
        token=settings.slack_bot_token.reveal(),
        base_url=settings.slack_api_url,
        session=session,
        retry_handlers=retry,
    )
    # The store exists only with STALE_CHANNEL_ID: without notices there is no alert state, and
    # no kps-bot.db appears in the working directory.
    channel = settings.stale_channel_id
    store = Store.open(settings.state_url.reveal()) if channel else None
    provided = Provided(
        settings=settings,
        kps=kps,
        replies=Replies(
            session,
            retry_handlers=retry,
            allowed=ResponseUrls.for_api(settings.slack_api_url).allows,
        ),
        store=store,
        inflight=InFlight(),
        seen_events=SeenEvents(),
        clock=utc_now,
    )
    watcher = None
    if store is not None and channel:
        watcher = Watcher(
            store=store,
            kps=kps,
            # Its own client on the same session: a 429 goes straight to the outbox's policy.
            slack=AsyncWebClient(
                token=settings.slack_bot_token.reveal(),
                base_url=settings.slack_api_url,
                session=session,
                retry_handlers=slack_retry_handlers(rate_limits=False),
            ),
            notices=Notices(
                channel=channel,
                project_id=settings.project_id,
                region=settings.region,
                stale_after=settings.stale_after,
                renotify_after=settings.renotify_after,
            ),
            pace=Pace(poll_interval=settings.poll_interval),
        )
    app = build_app(settings, slack, provided)
    readiness = Readiness(slack, store, clock=utc_now)
    return Runtime(
        settings, app, kps, provided["inflight"], slack, http, session, readiness, store, watcher
    )


def build_app(settings: Settings, slack: AsyncWebClient, provided: Provided) -> AsyncApp:
    """The Bolt app with its middleware, listeners and error hook."""
    signing_secret = settings.slack_signing_secret
    app = AsyncApp(
        client=slack,
        # Socket Mode requests are not signed; HTTP mode always verifies (config requires it).
        signing_secret=signing_secret.reveal() if signing_secret else None,
        request_verification_enabled=not settings.socket_mode,
        process_before_response=False,
    )

    # Each under its own name: Bolt passes a context key to the listener parameter named after
    # it, so listeners declare what they use (see services.Provided).
    async def provide(context: AsyncBoltContext, next: Callable[[], Awaitable[None]]) -> None:
        context.update(provided)
        await next()

    async def log_request(
        body: dict[str, Any], context: AsyncBoltContext, next: Callable[[], Awaitable[None]]
    ) -> None:
        cid = new_correlation_id()
        context["correlation_id"] = cid
        log.info("slack request", extra=_describe(body))
        await next()

    app.use(mark_verified)  # first: what on_error trusts
    app.use(log_request)
    app.use(provide)
    handlers.register(app)

    async def on_error(
        error: Exception, body: dict[str, Any], context: AsyncBoltContext
    ) -> BoltResponse | None:
        log.error("unhandled error in a listener", exc_info=error)
        url = body.get("response_url")
        # An unverified body (Bolt calls this hook for its own middleware's errors too) must
        # never choose where the bot posts.
        if isinstance(url, str) and passed_verification(context):
            cid = correlation_id.get() or "unknown"
            notice = build_line(
                f"Something went wrong on our side. It has been logged with id `{cid}`."
            )
            await provided["replies"].send(url, notice)
        return None

    app.error(on_error)
    return app


def _describe(body: dict[str, Any]) -> dict[str, Any]:
    """The few fields of a Slack payload worth one log line, never tokens or free text."""
    kind = body.get("type") or ("command" if "command" in body else "unknown")
    detail: dict[str, Any] = {"kind": kind}
    if "command" in body:
        detail["command"] = body.get("command")
        detail["user"] = body.get("user_id")
    elif kind == "block_actions":
        actions = body.get("actions")
        first = actions[0] if isinstance(actions, list) and actions else None
        detail["action"] = _field(first, "action_id")
        detail["user"] = _field(body.get("user"), "id")
    elif kind == "event_callback":
        event = body.get("event")
        detail["event"] = _field(event, "type")
        detail["user"] = _field(event, "user")
    return detail


def _field(value: Any, key: str) -> Any:
    # A log line must not fail on a payload of an unexpected shape (tests/test_fuzz.py).
    return value.get(key) if isinstance(value, dict) else None
