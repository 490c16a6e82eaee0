"""Answers through `response_url` over one pooled aiohttp session.

Bolt's stock `respond()` builds an `AsyncWebhookClient` without a session, so every reply opens a
new connection (and a new TLS handshake with Slack). slack_sdk's webhook client accepts a session,
so we keep the library and hand it ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import aiohttp
from slack_sdk.errors import SlackClientError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.blockkit import Message, redact_payload
from bot.gate import SLACK_HOOKS_ONLY, describe_url

log = logging.getLogger(__name__)

ResponseType = Literal["ephemeral", "in_channel"]


class Replies:
    """Posts messages to Slack `response_url`s; failures are logged and reported, never raised."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        retry_handlers: Sequence[AsyncRetryHandler] = (),
        timeout: int = 10,
        allowed: Callable[[str], bool] = SLACK_HOOKS_ONLY.allows,
    ) -> None:
        self._session = session
        self._allowed = allowed
        self._retry_handlers = list(retry_handlers)
        self._timeout = timeout

    async def send(
        self,
        response_url: str,
        message: Message,
        *,
        replace_original: bool = False,
        response_type: ResponseType = "ephemeral",
    ) -> bool:
        """Send `message`; True when Slack accepted it.

        `replace_original` is always sent explicitly: legacy messages replaced by default and a
        missing flag has surprised people before (../shared/research/slack-bolt.md §1).
        """
        if not self._allowed(response_url):
            # The path is a credential for that reply: log where it pointed, not all of it.
            log.warning("refused a response_url", extra={"host": describe_url(response_url)})
            return False
        client = AsyncWebhookClient(
            response_url,
            session=self._session,
            timeout=self._timeout,
            retry_handlers=self._retry_handlers,
        )
        body = dict(message.as_payload())
        body["response_type"] = response_type
        body["replace_original"] = replace_original
        # The last step before Slack: whatever built `message`, no secret leaves (issue 10).
        body = redact_payload(body)
        try:
            response = await client.send_dict(body)
        except (aiohttp.ClientError, TimeoutError, ValueError, SlackClientError) as exc:
            # ValueError: an odd answer inside slack_sdk; SlackClientError: any of its refusals.
            log.warning("response_url post failed", extra={"why": type(exc).__name__})
            return False
        if response.status_code != 200:
            # A response_url serves 5 posts within 30 minutes; past that Slack answers 404.
            log.warning(
                "response_url refused the message",
                extra={"status": response.status_code, "body": response.body[:200]},
            )
            return False
        return True
