"""Delivers the store's outbox to Slack, oldest first, and decides what each Slack answer means.

`classify` is the whole policy, pure: what Slack answered in, a named `Outcome` out. Only an
answer that clearly and permanently refuses a call drops it; everything else waits and is tried
again, as the README promises ("retried, never dropped").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Final, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot.alerts import NoticeState
from bot.blockkit import redact_payload
from bot.retryafter import retry_after
from bot.store import POST, REPLY, UPDATE, OutboxItem, Store

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BACKOFF: Final = 300.0  # seconds; the README promises "1 s, 2 s, 4 s, … up to 5 minutes"
_MAX_PASSES: Final = 20
_RATE_LIMIT_WAIT: Final = 1.0  # a rate limit without Retry-After: Slack's own retry advice

# Slack errors that no retry heals: the channel or the token must be fixed by a person, and
# until then no call to the channel can succeed, so every call waits.
CHANNEL_REFUSALS: Final = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
        "access_denied",
        "ekm_access_denied",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "team_access_not_granted",
    }
)
# Slack errors that refuse one call for good: the same call can never succeed (a malformed
# message, an edit of a message that is gone or too old), while other calls may still go through.
MESSAGE_REFUSALS: Final = frozenset(
    {
        "invalid_blocks",
        "invalid_blocks_format",
        "block_mismatch",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_attachments",
        "invalid_arguments",
        "invalid_arg_name",
        "invalid_array_arg",
        "invalid_charset",
        "invalid_form_data",
        "invalid_post_type",
        "missing_post_type",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "message_not_found",
        "cant_update_message",
        "edit_window_closed",
        "cannot_reply_to_message",
        "restricted_action_thread_locked",
    }
)
_RATE_LIMITS: Final = frozenset({"ratelimited", "rate_limited"})
_HINTS: Final = {
    "channel_not_found": "check STALE_CHANNEL_ID (a channel ID such as C0123456789)",
    "not_in_channel": "a private channel: /invite @kps-bot there",
    "is_archived": "the channel is archived: unarchive it or choose another",
    "invalid_auth": "SLACK_BOT_TOKEN was refused",
    "not_authed": "SLACK_BOT_TOKEN is missing",
    "token_revoked": "SLACK_BOT_TOKEN was revoked: reinstall the app",
    "not_allowed_token_type": "SLACK_BOT_TOKEN must be a bot token (xoxb-…)",
    "missing_scope": "the app lacks a scope: reinstall it from manifest.yml",
}


class Outcome(Enum):
    """What a Slack call came to, and so what happens to its outbox row."""

    SENT = "sent"  # Slack accepted it: the row is marked sent
    RATE_LIMITED = "rate_limited"  # every call pauses for Retry-After
    RETRY = "retry"  # this row waits with backoff: transient, unknown, or not Slack's answer
    CHANNEL_REFUSED = "channel_refused"  # every call waits until a person fixes channel or token
    REFUSED = "refused"  # this call alone can never succeed: the row is dropped and logged


def classify(status: int | None, error: str | None, retry_after: float | None) -> Outcome:
    """The outcome of a call Slack did not accept.

    `status` is the HTTP status (None: no answer could be read at all), `error` Slack's error
    code (None: the body was not Slack's JSON, say a proxy's HTML page), `retry_after` the
    Retry-After header in seconds.
    """
    if status == 429 or error in _RATE_LIMITS:
        return Outcome.RATE_LIMITED
    if status is None or status >= 500:
        # A server that says how long it will be down speaks for every call, as a 429 does.
        return Outcome.RATE_LIMITED if retry_after is not None else Outcome.RETRY
    if error in CHANNEL_REFUSALS:
        return Outcome.CHANNEL_REFUSED
    if error in MESSAGE_REFUSALS:
        return Outcome.REFUSED
    # An error code this list does not know (internal_error, fatal_error and the ones Slack adds
    # later), or a body that is not Slack's at all: dropping the notice would be for good, and
    # waiting costs a retry every few minutes.
    return Outcome.RETRY


def backoff(attempts: int) -> float:
    """Seconds a row waits after its `attempts`-th failure: 1, 2, 4, … up to MAX_BACKOFF."""
    return min(2.0 ** min(attempts, 16), MAX_BACKOFF)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How long a claimed row stays ours, and how long a refused channel waits for a fix."""

    claim_ttl: float = 120.0  # seconds; another replica may send the row after that
    refused_retry: float = 600.0  # seconds; the README says "trying again every 10 minutes"


class Outbox:
    """Sends what the outbox holds, oldest first; a thread reply waits for its notice."""

    def __init__(
        self,
        *,
        store: Store,
        slack: AsyncWebClient,
        config: Delivery,
        holder: str,
        render: Callable[[NoticeState], dict[str, Any]],
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._slack = slack
        self._config = config
        self._holder = holder
        self._render = render  # a stale notice is drawn when it is sent, as its state is then
        self._clock = clock
        self.next_due: float | None = None  # after deliver(): seconds until a waiting row is due
        self._paused_until: datetime | None = None
        self._unexpected: set[str] = set()  # kinds of unforeseen errors already logged in full
        self._slack_ok = False  # unknown at start, so the first success clears a stale problem

    async def deliver(self) -> int:
        """Send every row that is due; the number Slack accepted."""
        sent = 0
        self.next_due = None
        for _ in range(_MAX_PASSES):
            progress, stop = await self._deliver_pass()
            sent += progress
            if stop or not progress:
                break
        return sent

    async def _deliver_pass(self) -> tuple[int, bool]:
        now = self._clock()
        if self._paused_until is not None and now < self._paused_until:
            self._note_due(self._paused_until, now)
            return 0, True
        blocked: set[int] = set()  # notices whose earlier thread reply has to go first
        sent = 0
        for item in await self._store.pending():
            if item.kind == REPLY and item.notice_id in blocked:
                continue
            if item.kind != POST and item.notice_ts is None:
                blocked.add(item.notice_id)  # its notice is not posted yet
                continue
            if item.due_at > now:
                self._note_due(item.due_at, now)
                blocked.add(item.notice_id)
                continue
            if not await self._store.claim(
                item.id, self._holder, now=now, ttl=self._config.claim_ttl
            ):
                blocked.add(item.notice_id)
                continue
            outcome = await self._send(item)
            if outcome is Outcome.SENT:
                sent += 1
            elif outcome is Outcome.REFUSED:
                blocked.add(item.notice_id)
            else:  # Slack or the way to it is in trouble: the next step tries again
                return sent, True
        return sent, False

    def _note_due(self, due: datetime, now: datetime) -> None:
        wait = max((due - now).total_seconds(), 0.0)
        self.next_due = wait if self.next_due is None else min(self.next_due, wait)

    async def _send(self, item: OutboxItem) -> Outcome:
        payload = await self._payload(item)
        if payload is None:
            await self._store.give_up(item, error="the notice is gone from the store")
            return Outcome.REFUSED
        # Rows stored before redaction existed, or by another version, are redacted here too.
        payload = redact_payload(payload)
        try:
            # Well inside the claim: a row still in flight when its claim expires is sent twice.
            async with asyncio.timeout(self._config.claim_ttl / 2):
                if item.kind == UPDATE:
                    response = await self._slack.chat_update(
                        channel=item.channel, ts=item.notice_ts or "", **payload
                    )
                else:
                    response = await self._slack.chat_postMessage(
                        channel=item.channel,
                        thread_ts=item.notice_ts if item.kind == REPLY else None,
                        unfurl_links=False,
                        unfurl_media=False,
                        **payload,
                    )
        except SlackApiError as error:
            return await self._not_accepted(item, *read_refusal(error))
        except AttributeError:
            # slack_sdk (3.48) checks a 200 answer with `data.get("ok")`, so a text body or a
            # JSON array from a proxy raises AttributeError inside the client: no Slack answer.
            return await self._not_accepted(item, None, None, None, "an unreadable 200 answer")
        except (aiohttp.ClientError, TimeoutError) as error:
            why = f"{type(error).__name__} talking to Slack"
            return await self._not_accepted(item, None, None, None, why)
        except Exception as error:
            # Anything else (a client-side bug, an answer nobody foresaw) waits like a transient
            # failure rather than failing the step with the row claimed; the traceback is logged
            # once per kind of error, so a repeating one does not flood the log.
            if type(error).__name__ not in self._unexpected:
                self._unexpected.add(type(error).__name__)
                log.exception("unexpected error sending a stale-notice %s", item.kind)
            why = f"unexpected {type(error).__name__} talking to Slack"
            return await self._not_accepted(item, None, None, None, why)
        ts, channel = response.get("ts"), response.get("channel")
        await self._store.mark_sent(
            item,
            now=self._clock(),
            ts=ts if isinstance(ts, str) else None,
            channel=channel if isinstance(channel, str) else None,
        )
        if not self._slack_ok:
            self._slack_ok = True
            if await self._store.clear_problem(problem_key(item.channel)):
                log.info("Slack accepts stale notices for %s again", item.channel)
        return Outcome.SENT

    async def _payload(self, item: OutboxItem) -> dict[str, Any] | None:
        if item.body is not None:
            return item.body
        state = await self._store.notice_state(item.notice_id)
        if state is None or not state.alerts:
            return None
        return self._render(state)

    async def _not_accepted(
        self,
        item: OutboxItem,
        status: int | None,
        code: str | None,
        retry_after: float | None,
        why: str,
    ) -> Outcome:
        outcome = classify(status, code, retry_after)
        if outcome is Outcome.RATE_LIMITED:
            # Slack warns that posting on while rate-limited can get an app disabled: pause all.
            # A Retry-After of hours (a proxy's, say) is capped: one call then asks again.
            wait = min(retry_after if retry_after is not None else _RATE_LIMIT_WAIT, MAX_BACKOFF)
            self._paused_until = self._clock() + timedelta(seconds=wait)
            await self._retry_later(item, why, wait)
        elif outcome is Outcome.CHANNEL_REFUSED:
            await self._channel_refused(item, code or why)
        elif outcome is Outcome.REFUSED:
            log.error(
                "Slack refused a stale-notice %s for good: %s (notice %d)",
                item.kind,
                why,
                item.notice_id,
                extra={"error": why, "kind": item.kind, "notice": item.notice_id, "row": item.id},
            )
            await self._store.give_up(item, error=why)
        else:
            await self._retry_later(item, why, backoff(item.attempts))
        return outcome

    async def _channel_refused(self, item: OutboxItem, code: str) -> None:
        now = self._clock()
        self._slack_ok = False
        hint = _HINTS.get(code, "see the Slack API docs for this error")
        text = f"Stale notices cannot be posted to {item.channel}: Slack says {code} ({hint})"
        if await self._store.set_problem(problem_key(item.channel), text, now=now):
            log.error(
                "Slack refuses stale notices for %s: %s (%s); they wait until this is fixed",
                item.channel,
                code,
                hint,
                extra={"channel": item.channel, "error": code, "hint": hint},
            )
        until = now + timedelta(seconds=self._config.refused_retry)
        self._paused_until = until
        await self._store.defer(item, until=until, error=code)

    async def _retry_later(self, item: OutboxItem, why: str, delay: float) -> None:
        log.warning(
            "Slack %s failed (%s); retrying in %.1f s",
            item.kind,
            why,
            delay,
            extra={"why": why, "kind": item.kind, "row": item.id, "in_s": round(delay, 1)},
        )
        await self._store.defer(item, until=self._clock() + timedelta(seconds=delay), error=why)


def problem_key(channel: str) -> str:
    """The store's key for the problem "Slack refuses notices for `channel`"."""
    return f"slack:{channel}"


def read_refusal(error: SlackApiError) -> tuple[int | None, str | None, float | None, str]:
    """Status, Slack error code, Retry-After and a short description, from any answer."""
    response: Any = error.response
    # slack_sdk hands over its own response, or aiohttp's when the body was not valid JSON.
    status: int | None = None
    headers: Any = None
    data: Any = None
    if isinstance(response, AsyncSlackResponse):
        status, headers, data = response.status_code, response.headers, response.data
    elif isinstance(response, aiohttp.ClientResponse):
        status, headers = response.status, response.headers
    code = data.get("error") if isinstance(data, dict) else None
    code = code if isinstance(code, str) and code else None
    if code is not None:
        why = f"HTTP {status} {code}" if status != 200 else code
    else:
        why = f"HTTP {status}, an answer that is not Slack's JSON"
    return status, code, retry_after(headers), why


# What a Slack call can raise when Slack, or something in its place, answers oddly: slack_sdk
# raises AttributeError itself on a 200 whose JSON is not an object (an array, say).
SLACK_CALL_ERRORS: Final = (SlackClientError, AttributeError, aiohttp.ClientError, TimeoutError)


def describe_slack_failure(error: BaseException) -> str:
    """Slack's error code, or a short description when there was no Slack answer to read."""
    if isinstance(error, SlackApiError):
        _, code, _, why = read_refusal(error)
        return code or why
    if isinstance(error, AttributeError):
        return "an answer that is not Slack's JSON"
    if isinstance(error, SlackClientError):
        return f"a client error ({type(error).__name__})"
    return f"no answer ({type(error).__name__})"


async def slack_call(call: Awaitable[T]) -> tuple[T, None] | tuple[None, str]:
    """Await one Slack call: (its answer, None), or (None, why) when it failed in any way."""
    try:
        return await call, None
    except SLACK_CALL_ERRORS as error:
        return None, describe_slack_failure(error)
