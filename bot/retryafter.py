"""The one Retry-After parser (KPS and Slack) and a Slack 429 retry handler with a capped wait."""

from __future__ import annotations

import asyncio
import email.utils
import math
from datetime import UTC, datetime
from typing import Any, Final

from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState

SLACK_WAIT_CAP: Final = 10.0  # seconds; past this a 429 is handed to the caller, not slept on
_NO_HINT_WAIT: Final = 1.0  # a 429 without a usable Retry-After: Slack's own advice


def parse_retry_after(value: object) -> float | None:
    """Seconds to wait from a Retry-After value (seconds or HTTP date); None when unusable."""
    if isinstance(value, list | tuple):  # slack_sdk keeps each header as a list of values
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):  # neither seconds nor an HTTP date
            return None
        if parsed is None or parsed.tzinfo is None:
            return None
        seconds = (parsed - datetime.now(UTC)).total_seconds()
    # "nan" and "inf" parse as floats; asyncio.sleep(nan) returns at once: not a usable hint.
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def retry_after(headers: Any) -> float | None:
    """The Retry-After of any header mapping (httpx, aiohttp, slack_sdk's dict of lists)."""
    if not headers:
        return None
    for name in headers:
        if str(name).lower() == "retry-after":
            return parse_retry_after(headers[name])
    return None


class CappedRateLimitHandler(AsyncRetryHandler):
    """Retries a 429 after its Retry-After, only when that wait is at most `cap` seconds.

    slack_sdk's own handler sleeps `int(Retry-After)` uncapped and raises ValueError on a
    fractional or HTTP-date value: a proxy's "Retry-After: 3600" would stall the caller an hour.
    """

    def __init__(self, max_retry_count: int = 2, cap: float = SLACK_WAIT_CAP) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.cap = cap

    def _wait(self, response: HttpResponse) -> float:
        found = retry_after(response.headers)
        return _NO_HINT_WAIT if found is None else found

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        return self._wait(response) <= self.cap

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        state.next_attempt_requested = True
        await asyncio.sleep(self._wait(response) if response is not None else _NO_HINT_WAIT)
        state.increment_current_attempt()
