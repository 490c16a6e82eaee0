"""Slack calls when Slack, or a proxy in its place, answers oddly: Retry-After, arrays, silence."""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import slack_retry_handlers
from bot.blocks import build_line
from bot.readiness import UNREACHABLE, Readiness
from bot.replies import Replies
from bot.retryafter import CappedRateLimitHandler, parse_retry_after, retry_after
from bot.sandbox.fakeslack import FakeSlack
from tests.loopback import serving


def test_retry_after_reads_seconds_and_dates_and_ignores_the_rest() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(["3"]) == 3.0  # slack_sdk keeps each header as a list
    assert parse_retry_after("-4") == 0.0
    ahead = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    found = parse_retry_after(ahead)
    assert found is not None and 55 <= found <= 60
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(past) == 0.0
    junks: tuple[object, ...] = ("soon", "nan", "inf", "", "Mon, 99 Xyz 2020", None, [], 3)
    for junk in junks:
        assert parse_retry_after(junk) is None, junk
    assert retry_after({"retry-AFTER": ["7"]}) == 7.0
    assert retry_after({"Content-Type": "text/plain"}) is None


def test_the_runtime_retries_429_with_the_capped_handler_and_the_outbox_never() -> None:
    assert any(isinstance(h, CappedRateLimitHandler) for h in slack_retry_handlers())
    assert not any(
        isinstance(h, CappedRateLimitHandler) for h in slack_retry_handlers(rate_limits=False)
    )


async def test_a_retry_after_of_an_hour_is_handed_back_at_once(slack: FakeSlack) -> None:
    # slack_sdk's handler slept int(Retry-After) uncapped, twice: the outbox's watcher step was
    # asleep for two hours with its lease kept, and the row's claim expired meanwhile.
    client = AsyncWebClient(
        token=slack.bot_token, base_url=slack.api_url, retry_handlers=slack_retry_handlers()
    )
    slack.fail_next("chat.postMessage", status=429, retry_after=3600)
    started = time.monotonic()
    async with asyncio.timeout(5):
        with pytest.raises(SlackApiError) as caught:
            await client.chat_postMessage(channel="C0GENERAL", text="hi")
    assert caught.value.response.status_code == 429
    assert time.monotonic() - started < 2
    assert len(slack.calls_to("chat.postMessage")) == 1


@pytest.mark.parametrize("header", ["0.3", "past-date"])
async def test_a_fractional_or_dated_retry_after_is_waited_not_raised(header: str) -> None:
    # slack_sdk's handler parsed the header with int(): ValueError out of every Slack call.
    value = header
    if header == "past-date":
        value = email.utils.format_datetime(datetime.now(UTC) - timedelta(minutes=1), usegmt=True)
    hits = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        if hits == 1:
            body = {"ok": False, "error": "ratelimited"}
            return web.json_response(body, status=429, headers={"Retry-After": value})
        return web.json_response({"ok": True, "channel": "C0GENERAL", "ts": "1.2"})

    async with serving(handle) as base:
        client = AsyncWebClient(
            token="xoxb-1", base_url=base + "/", retry_handlers=slack_retry_handlers()
        )
        async with asyncio.timeout(5):
            answer = await client.chat_postMessage(channel="C0GENERAL", text="hi")
    assert answer["ok"] is True and hits == 2


@pytest.mark.parametrize("stock", [False, True], ids=["runtime-handlers", "slack-sdk-handler"])
async def test_replies_never_raise_on_a_retry_after_slack_sdk_cannot_parse(stock: bool) -> None:
    # Replies.send promises not to raise; slack_sdk's own 429 handler raised ValueError on
    # "Retry-After: soon" and the listener answered "Something went wrong" instead.
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down", headers={"Retry-After": "soon"})

    async with serving(handle) as base, aiohttp.ClientSession() as session:
        handlers = [AsyncRateLimitErrorRetryHandler()] if stock else slack_retry_handlers()
        replies = Replies(session, retry_handlers=handlers, allowed=lambda _: True)
        async with asyncio.timeout(5):
            assert await replies.send(base + "/hook", build_line("hi")) is False


async def test_auth_test_answered_with_a_json_array_is_a_problem_not_a_crash() -> None:
    # slack_sdk raises AttributeError on a 200 whose JSON is an array: it escaped check_slack
    # and ended the start, or the task that asks again.
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text='["ok"]', content_type="application/json")

    async with serving(handle) as base:
        client = AsyncWebClient(
            token="xoxb-1", base_url=base + "/", retry_handlers=slack_retry_handlers()
        )
        readiness = Readiness(client, None, clock=lambda: datetime.now(UTC))
        assert await readiness.check_slack() is False
        assert readiness.slack_problem == UNREACHABLE
