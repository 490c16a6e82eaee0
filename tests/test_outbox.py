"""The outbox's Slack-answer policy, line by line, and odd answers from the Slack stand-in."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiohttp import web
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import slack_retry_handlers
from bot.kps import KPSClient
from bot.outbox import (
    CHANNEL_REFUSALS,
    MAX_BACKOFF,
    MESSAGE_REFUSALS,
    Outcome,
    backoff,
    classify,
)
from bot.sandbox.fakeslack import ODD_BODIES, FakeSlack
from bot.sandbox.simulator import Simulator
from bot.store import Store
from tests.loopback import serving
from tests.watching import Clock, add_stale, make_watcher, ok_posts, top_level

# --- the policy, pure ----------------------------------------------------------------------------

# The refusals the README names: "a reason that retrying cannot fix".
README_REFUSALS = ("channel_not_found", "not_in_channel", "is_archived", "invalid_auth")


@pytest.mark.parametrize("code", README_REFUSALS)
def test_the_refusals_the_readme_names_wait_for_a_person(code: str) -> None:
    assert classify(200, code, None) is Outcome.CHANNEL_REFUSED


@pytest.mark.parametrize("code", sorted(CHANNEL_REFUSALS))
def test_every_channel_or_token_refusal_holds_every_call(code: str) -> None:
    assert classify(200, code, None) is Outcome.CHANNEL_REFUSED


@pytest.mark.parametrize("code", sorted(MESSAGE_REFUSALS))
def test_every_refusal_of_one_message_drops_that_call(code: str) -> None:
    assert classify(200, code, None) is Outcome.REFUSED


def test_the_two_refusal_lists_do_not_overlap() -> None:
    assert not CHANNEL_REFUSALS & MESSAGE_REFUSALS


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [
        (429, "ratelimited", 30.0),
        (429, "ratelimited", None),
        (429, None, 5.0),  # a proxy's 429 page still asks everyone to slow down
        (200, "ratelimited", None),
        (200, "rate_limited", None),
        (503, "service_unavailable", 120.0),  # a 5xx that says how long it will be down
    ],
)
def test_rate_limits_pause_every_call(
    status: int, code: str | None, retry_after: float | None
) -> None:
    assert classify(status, code, retry_after) is Outcome.RATE_LIMITED


@pytest.mark.parametrize(
    ("status", "code"),
    [
        # Slack's own transient errors, as HTTP 5xx or as 200 with ok: false
        (500, "internal_error"),
        (502, None),
        (503, "service_unavailable"),
        (504, None),
        (200, "internal_error"),
        (200, "fatal_error"),
        (200, "service_unavailable"),
        (200, "request_timeout"),
        # a 5xx decides before its code: a failing server's word on the token is no verdict
        (500, "invalid_auth"),
        (503, "invalid_blocks"),
        # an error this bot does not know yet: dropping would be for good
        (200, "some_error_slack_adds_next_year"),
        (404, "unknown_method"),
        # no Slack answer at all: a proxy's HTML or text, garbage JSON, or nothing readable
        (200, None),
        (403, None),
        (407, None),
        (None, None),
    ],
)
def test_everything_else_is_retried_with_backoff(status: int | None, code: str | None) -> None:
    assert classify(status, code, None) is Outcome.RETRY


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [backoff(n) for n in range(10)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, MAX_BACKOFF]
    assert backoff(10_000) == MAX_BACKOFF == 300.0


# --- odd answers from the stand-in, through the real client and store ----------------------------


ODD_ANSWERS = [
    (200, "html"),  # a proxy's page: slack_sdk sees no JSON and an empty body
    (200, "garbage"),  # JSON cut short: slack_sdk hands over aiohttp's response
    (200, "text"),  # slack_sdk raises AttributeError on a text body
    (200, "array"),  # JSON that is not an object: the same AttributeError
    (500, "text"),  # used to crash the refusal handler: 'str' object has no attribute 'get'
    (502, "html"),
    (500, "garbage"),
]


@pytest.mark.parametrize(("status", "body"), ODD_ANSWERS)
async def test_an_odd_answer_waits_with_backoff_and_is_sent_later(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    status: int,
    body: str,
) -> None:
    assert body in ODD_BODIES
    add_stale(empty_sim, 2)
    clock = Clock()
    watcher = make_watcher(store, kps_client, slack_client, clock=clock)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=status, body=body, times=2)

    assert await watcher.deliver() == 0  # no exception, and the row is kept
    (row,) = await store.pending()
    assert row.attempts == 1
    clock.advance(1.5)
    assert await watcher.deliver() == 0  # the same answer again: now it waits 2 s
    clock.advance(1.5)
    assert await watcher.deliver() == 0  # not due yet: Slack is not asked
    assert len(slack.calls_to("chat.postMessage")) == 2
    clock.advance(1)
    assert await watcher.deliver() == 1
    assert len(top_level(slack)) == 1 and len(ok_posts(slack)) == 1
    assert await store.pending() == []


async def test_the_runtime_client_retries_a_text_500_then_the_outbox_waits(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient
) -> None:
    add_stale(empty_sim, 1)
    client = AsyncWebClient(
        token=slack.bot_token, base_url=slack.api_url, retry_handlers=slack_retry_handlers()
    )
    clock = Clock()
    # The client's two retries back off ~1.5 s: inside half the claim, or the outbox gives up.
    watcher = make_watcher(store, kps_client, client, clock=clock, claim_ttl=10.0)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=500, body="text", times=3)
    assert await watcher.deliver() == 0
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [500, 500, 500]
    assert await watcher.deliver() == 0  # waiting: no fourth call
    assert len(slack.calls_to("chat.postMessage")) == 3
    clock.advance(1.5)
    assert await watcher.deliver() == 1
    assert len(top_level(slack)) == 1


async def test_a_clear_refusal_of_one_message_drops_it_and_lets_the_rest_through(
    empty_sim: Simulator,
    slack: FakeSlack,
    store: Store,
    kps_client: KPSClient,
    slack_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add_stale(empty_sim, 1)
    watcher = make_watcher(store, kps_client, slack_client)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=200, error="invalid_blocks")
    with caplog.at_level(logging.ERROR, logger="bot.outbox"):
        assert await watcher.deliver() == 0
    assert await store.pending() == []  # dropped for good, and said so
    (said,) = [r for r in caplog.records if "for good" in r.getMessage()]
    assert getattr(said, "error", None) == "invalid_blocks"

    add_stale(empty_sim, 1, server_name="next-one")
    await watcher.scan()
    assert await watcher.deliver() == 1
    assert "next-one" in str(top_level(slack)[0]["blocks"])


async def test_an_unknown_slack_error_is_retried_not_dropped(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    add_stale(empty_sim, 1)
    clock = Clock()
    watcher = make_watcher(store, kps_client, slack_client, clock=clock)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=200, error="fatal_error")
    assert await watcher.deliver() == 0
    (row,) = await store.pending()
    assert row.attempts == 1
    clock.advance(1.5)
    assert await watcher.deliver() == 1
    assert len(top_level(slack)) == 1


async def test_a_retry_after_of_a_day_pauses_sending_five_minutes_at_most(
    empty_sim: Simulator, slack: FakeSlack, store: Store, kps_client: KPSClient, slack_client: Any
) -> None:
    add_stale(empty_sim, 1)
    clock = Clock()
    watcher = make_watcher(store, kps_client, slack_client, clock=clock)
    await watcher.scan()
    slack.fail_next("chat.postMessage", status=429, retry_after=86_400)
    assert await watcher.deliver() == 0
    clock.advance(MAX_BACKOFF - 10)
    assert await watcher.deliver() == 0  # still paused: Slack is not asked
    assert len(slack.calls_to("chat.postMessage")) == 1
    clock.advance(11)
    assert await watcher.deliver() == 1


async def test_an_unexpected_error_in_the_client_is_a_retry_not_a_failed_step(
    empty_sim: Simulator, store: Store, kps_client: KPSClient, caplog: pytest.LogCaptureFixture
) -> None:
    # slack_sdk's stock 429 handler raises ValueError on a Retry-After it cannot int(): that
    # escaped deliver() and left the row claimed.
    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down", headers={"Retry-After": "soon"})

    add_stale(empty_sim, 1)
    async with serving(handle) as base:
        client = AsyncWebClient(
            token="xoxb-1", base_url=base + "/", retry_handlers=[AsyncRateLimitErrorRetryHandler()]
        )
        clock = Clock()
        watcher = make_watcher(store, kps_client, client, clock=clock)
        await watcher.scan()
        with caplog.at_level(logging.WARNING, logger="bot.outbox"):
            assert await watcher.deliver() == 0
            clock.advance(1.5)
            assert await watcher.deliver() == 0
    (row,) = await store.pending()
    assert row.attempts == 2
    said = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(said) == 2 and all("unexpected ValueError" in s for s in said)
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1  # the traceback once, not at every attempt


async def test_a_slack_call_that_hangs_ends_well_inside_the_claim(
    empty_sim: Simulator, store: Store, kps_client: KPSClient
) -> None:
    # Without a deadline of its own, a silent Slack held the row past its claim: sent twice.
    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({"ok": True})

    add_stale(empty_sim, 1)
    async with serving(handle) as base:
        client = AsyncWebClient(token="xoxb-1", base_url=base + "/")
        watcher = make_watcher(store, kps_client, client, clock=Clock(), claim_ttl=2.0)
        await watcher.scan()
        started = time.monotonic()
        async with asyncio.timeout(10):
            assert await watcher.deliver() == 0
        assert time.monotonic() - started < 2.0
    (row,) = await store.pending()
    assert row.attempts == 1
