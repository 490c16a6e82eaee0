"""Whether the bot is ready for traffic: Slack accepts its token and the state store answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.outbox import read_refusal
from bot.store import Store, StoreError

log = logging.getLogger(__name__)

# auth.test's errors that refuse the token itself (docs.slack.dev/reference/methods/auth.test):
# a person must replace or reinstate it. Retrying costs one call a minute and notices a
# reactivated account or a Slack-side fault that heals without a restart.
TOKEN_REFUSALS: Final = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)
NOT_CHECKED: Final = "Slack auth.test not answered yet"
REJECTED: Final = "Slack rejected SLACK_BOT_TOKEN"
UNREACHABLE: Final = "Slack unreachable"
# Bounds the start: slack_sdk's retry handlers (connection errors, 429, 5xx) run inside it.
AUTH_TEST_SECONDS: Final = 10.0
# A probe answers a platform that itself times out in a few seconds (Kubernetes: 1 s default).
STORE_SECONDS: Final = 2.0
# Probes arriving together, or a flood of them, share one store query a second.
STORE_FRESH_SECONDS: Final = 1.0


def describe_auth_failure(error: Exception) -> str:
    """Why auth.test failed, in words fit for `/readyz` and a log line: never the token."""
    if isinstance(error, SlackApiError):
        _, code, _, why = read_refusal(error)
        if code in TOKEN_REFUSALS:
            return f"{REJECTED} ({code})"
        return f"Slack answered auth.test with {why}"
    return UNREACHABLE


class Readiness:
    """Slack's verdict on the bot token (asked at start, then again until it is good) and a
    probe of the state store; `problem()` is what `/readyz` reports."""

    def __init__(
        self,
        slack: AsyncWebClient,
        store: Store | None,
        *,
        clock: Callable[[], datetime],
        first_retry: float = 5.0,
        max_retry: float = 60.0,
    ) -> None:
        self._slack = slack
        self._store = store
        self._clock = clock
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.slack_problem: str | None = NOT_CHECKED
        self._retrying: asyncio.Task[None] | None = None
        self._store_lock = asyncio.Lock()
        self._store_seen: tuple[float, str | None] | None = None

    def __repr__(self) -> str:
        return f"Readiness(slack_problem={self.slack_problem!r})"

    async def start(self) -> None:
        """Ask Slack once; when that fails, keep asking in the background, backing off."""
        if not await self.check_slack():
            self._retrying = asyncio.create_task(self._retry_slack(), name="auth.test retries")

    async def aclose(self) -> None:
        """Stop asking Slack."""
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
            self._retrying = None

    async def check_slack(self) -> bool:
        """One auth.test: True when Slack accepts the token. Logs a change of verdict, once."""
        try:
            async with asyncio.timeout(AUTH_TEST_SECONDS):
                answer = await self._slack.auth_test()
        except (
            SlackClientError,
            aiohttp.ClientError,
            OSError,
            TimeoutError,
            ValueError,  # an unreadable answer inside slack_sdk must not end the start or retry
            AttributeError,  # slack_sdk reading a 200 whose JSON is not an object
        ) as error:
            problem = describe_auth_failure(error)
            if problem != self.slack_problem:
                cause = "" if isinstance(error, SlackApiError) else f" ({type(error).__name__})"
                # A refused token waits for a person; anything else usually heals by itself.
                refused = problem.startswith(REJECTED)
                log.log(
                    logging.ERROR if refused else logging.WARNING,
                    "%s%s: replies and notices cannot be posted and /readyz answers 503 until "
                    "auth.test passes; asking again every %g s at most",
                    problem,
                    cause,
                    self.max_retry,
                )
            self.slack_problem = problem
            return False
        if self.slack_problem == NOT_CHECKED:
            log.info(
                "Slack accepts the bot token",
                extra={"team": answer.get("team_id"), "bot_user": answer.get("user_id")},
            )
        else:
            log.warning("Slack accepts the bot token again: ready")
        self.slack_problem = None
        return True

    async def _retry_slack(self) -> None:
        delay = self.first_retry
        while True:
            await asyncio.sleep(delay)
            if await self.check_slack():
                return
            delay = min(delay * 2, self.max_retry)

    async def store_problem(self) -> str | None:
        """None when the state store answers a cheap read in time (or there is no store)."""
        if self._store is None:
            return None
        async with self._store_lock:
            now = asyncio.get_running_loop().time()
            if self._store_seen is not None and now - self._store_seen[0] < STORE_FRESH_SECONDS:
                return self._store_seen[1]
            problem = await self._probe_store(self._store)
            previous = self._store_seen[1] if self._store_seen is not None else None
            if problem != previous:
                if problem is None:
                    log.warning("the state store answers again")
                else:
                    log.error("state store probe failed: %s", problem)
            self._store_seen = (asyncio.get_running_loop().time(), problem)
            return problem

    async def _probe_store(self, store: Store) -> str | None:
        try:
            # Shorter than the store's own 5 s deadline: a probe answers in time for Kubernetes.
            async with asyncio.timeout(STORE_SECONDS):
                await store.ping()
        except TimeoutError:
            return f"state store did not answer within {STORE_SECONDS:g} s"
        except StoreError as error:
            # The driver error's class only: its message can name hosts and users to anyone
            # who can reach the port.
            return f"state store failed ({error.cause or 'StoreError'})"
        return None

    async def problem(self) -> str | None:
        """The first reason the bot is not ready, or None: Slack's verdict, then the store."""
        return self.slack_problem or await self.store_problem()
