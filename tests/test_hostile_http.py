"""The bot's HTTP front against requests nobody signed: refused cheaply, quietly, and in time.

These drive the real server (`serve`) over loopback, the way an attacker on the internet would,
and import nothing from the module that fixes them, so they run against any version of the bot.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.app import build_runtime
from bot.logs import RedactionFilter, TextFormatter
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from tests.conftest import RunningBot, make_settings
from tests.standin import wait_for

MARKER = "BODY-MARKER-"  # what a refused body carries; must never reach the log
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    """Every record at INFO and above, formatted as the bot writes its log; start bots after it
    (Bolt copies the root level into its loggers when the app is built)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(TextFormatter())
    root, client = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, client.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    client.setLevel(logging.WARNING)  # as configure_logging does: the test's own requests
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        client.setLevel(levels[1])


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[str]]]:
    """An "internal" HTTP service on loopback that records every request it receives."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}", seen
    finally:
        await runner.cleanup()


def command_body(response_url: str, text: str = "") -> str:
    return urlencode({"command": "/kps", "text": text, "response_url": response_url})


# --- issue 10 item 1: an unsigned request must not make the bot post anywhere ----------------


@pytest.mark.parametrize("timestamp", ["abc", "1.5", "", "0x10", "+1", "1_0", "١٢٣"])
async def test_a_malformed_timestamp_is_a_401_and_nothing_is_posted(
    bot: RunningBot, slack: FakeSlack, timestamp: str
) -> None:
    response = await bot.sender.client.post(
        bot.sender.url,
        content=command_body(slack.response_url("forged")),
        # Bytes: a timestamp of non-ASCII digits must reach the bot as it was typed.
        headers={
            b"Content-Type": b"application/x-www-form-urlencoded",
            b"X-Slack-Request-Timestamp": timestamp.encode(),
            b"X-Slack-Signature": b"v0=" + b"0" * 64,
        },
    )
    assert response.status_code == 401
    await bot.settled()  # whatever the request set going has finished
    assert slack.calls_to("response_url") == []


@pytest.mark.parametrize(
    ("with_timestamp", "signature"),
    [
        (True, "v0=é"),  # non-ASCII: hmac.compare_digest raises TypeError on it
        (False, "v0=" + "0" * 64),
        (True, None),
    ],
    ids=["non-ascii-signature", "no-timestamp", "no-signature"],
)
async def test_odd_signature_headers_are_a_401_and_nothing_is_posted(
    bot: RunningBot, slack: FakeSlack, with_timestamp: bool, signature: str | None
) -> None:
    headers = {b"Content-Type": b"application/x-www-form-urlencoded"}
    if with_timestamp:
        headers[b"X-Slack-Request-Timestamp"] = str(int(time.time())).encode()
    if signature is not None:
        headers[b"X-Slack-Signature"] = signature.encode()
    response = await bot.sender.client.post(
        bot.sender.url, content=command_body(slack.response_url("forged")), headers=headers
    )
    assert response.status_code == 401
    await bot.settled()  # whatever the request set going has finished
    assert slack.calls_to("response_url") == []


async def test_bolt_given_an_unverified_body_directly_still_posts_nothing(
    sim: Simulator, slack: FakeSlack
) -> None:
    """Behind the front, too: the error hook never replies to a request Bolt did not verify."""
    runtime = build_runtime(make_settings(sim, slack))
    try:
        body = command_body(slack.response_url("forged"))
        request = AsyncBoltRequest(
            body=body,
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "x-slack-request-timestamp": "abc",
                "x-slack-signature": "v0=" + "0" * 64,
            },
        )
        await runtime.app.async_dispatch(request)
        # A refused request runs no listener: only Bolt's error path could post, and Bolt awaits
        # it inside async_dispatch, so once dispatch returns there is nothing left to wait for.
    finally:
        await runtime.aclose()
    assert slack.calls_to("response_url") == []


async def test_a_signed_request_cannot_send_the_bot_to_another_host(
    bot_factory: Callable[..., Any],
    slack: FakeSlack,
    recorder: tuple[str, list[str]],
    captured_log: io.StringIO,
) -> None:
    internal, seen = recorder
    bot: RunningBot = await bot_factory()
    secret_path = "/hooks/T0/secret-reply-token"
    response = await bot.sender.command("", internal + secret_path)
    assert response.status_code == 200
    await bot.settled()  # the listener has fetched the page and tried to post it
    assert seen == []
    # A normal command still gets its page on the stand-in.
    await bot.sender.command("", slack.response_url("ok"))
    await wait_for(slack, "response_url", 1, timeout=10)
    log = captured_log.getvalue()
    assert "refused a response_url" in log
    assert "secret-reply-token" not in log


# --- issue 10 item 7: resource abuse by unauthenticated peers ----------------------------------


async def test_refused_requests_cost_a_short_line_each_never_the_body(
    bot_factory: Callable[..., Any], captured_log: io.StringIO
) -> None:
    bot: RunningBot = await bot_factory()
    body = MARKER + "x" * (256 * 1024)
    for i in range(20):
        response = await bot.sender.client.post(
            bot.sender.url,
            content=f"{body}{i}",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": str(int(time.time())),
                "X-Slack-Signature": "v0=" + "1" * 64,
            },
        )
        assert response.status_code == 401
    log = captured_log.getvalue()
    assert MARKER not in log
    assert len(log.encode()) < 20 * 600, len(log.encode())


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


def _post_head(length: int, *, path: str = "/slack/events") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: bot\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0=00\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(bot: RunningBot) -> None:
    port = bot.settings.port
    reader, writer = await _raw(port, _post_head(64 * 1024 * 1024) + b"x" * 1024)
    try:
        status = await asyncio.wait_for(reader.readline(), 3)
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 413")


async def test_a_body_that_never_comes_is_answered_and_closed(bot: RunningBot) -> None:
    reader, writer = await _raw(bot.settings.port, _post_head(100))
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - started < 10


async def test_a_connection_that_sends_no_request_is_closed(bot: RunningBot) -> None:
    silent = await _raw(bot.settings.port, b"")
    partial = await _raw(bot.settings.port, b"POST /slack/events HTTP/1.1\r\nHost: b")
    started = time.monotonic()
    try:
        for reader, _ in (silent, partial):
            assert await asyncio.wait_for(reader.read(), 20) == b""
    finally:
        for _, writer in (silent, partial):
            writer.close()
    assert time.monotonic() - started < 15


async def test_a_flood_leaves_acks_fast_and_the_log_small(
    bot_factory: Callable[..., Any], slack: FakeSlack, captured_log: io.StringIO
) -> None:
    """From another process (an attacker does not share the bot's loop): 600 half-open
    connections, more than the bot keeps open, then 200 unsigned 64 KiB requests at once; a
    signed /kps meanwhile is acked quickly, and every half-open connection is closed."""
    bot: RunningBot = await bot_factory()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.flood",
        str(bot.settings.port),
        "--idle=600",
        "--unsigned=200",
        "--wait=25",
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    try:
        opened = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert opened == {"idle": 600}
        await asyncio.sleep(0.1)  # the unsigned requests are on their way
        started = time.monotonic()
        ack = await bot.sender.command("", slack.response_url("during-flood"))
        ack_seconds = time.monotonic() - started
        report = json.loads(await asyncio.wait_for(process.stdout.readline(), 90))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert ack.status_code == 200
    # The bound is Slack's own deadline, not a speed claim: bot, simulator, stand-in and test
    # share one loop on a shared machine. The 100 ms is measured from a separate process
    # by `python -m tests.flood` (figures in the issue note), not asserted here.
    assert ack_seconds < 3.0, ack_seconds
    await wait_for(slack, "response_url", 1, timeout=10)
    statuses = report["statuses"]
    assert set(statuses) <= {"401", "ConnectionResetError"}, statuses
    assert statuses.get("401", 0) >= 100, statuses
    # Closed by the bot within the header and body deadlines, none kept for an hour.
    assert report["idle_open_after_wait"] == 0, report
    log = captured_log.getvalue()
    assert MARKER not in log
    assert len(log.encode()) < 20_000, len(log.encode())
