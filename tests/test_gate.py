"""The HTTP front (bot/gate.py): its pure checks, and its server under small limits."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.app import Runtime, build_runtime
from bot.gate import GATE, Limits, Refusal, ResponseUrls, Tally, check_signature, connection_cap
from bot.logs import RedactionFilter, TextFormatter
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from bot.server import build_web_app
from tests.conftest import SIGNING_SECRET, make_settings
from tests.signed import SlackSender
from tests.standin import wait_for

SECRET = b"test-signing-secret"
NOW = 1_700_000_000.0


def sign(body: bytes, timestamp: str, secret: bytes = SECRET) -> str:
    digest = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    return "v0=" + digest.hexdigest()


# --- check_signature --------------------------------------------------------------------------


def test_a_fresh_signature_over_the_exact_bytes_passes() -> None:
    body = b"command=%2Fkps&text="
    stamp = str(int(NOW))
    assert check_signature(SECRET, stamp, sign(body, stamp), body, NOW) is None
    assert check_signature(SECRET, stamp, sign(body, stamp), body, NOW + 300) is None


@pytest.mark.parametrize(
    ("timestamp", "signature", "refusal"),
    [
        (None, "v0=" + "0" * 64, Refusal.UNSIGNED),
        ("1700000000", None, Refusal.UNSIGNED),
        ("abc", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("1.5", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("0x10", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        (" 1700000000", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("+1700000000", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("1_700_000_000", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("١٧٠٠٠٠٠٠٠٠", "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("9" * 400, "v0=" + "0" * 64, Refusal.BAD_TIMESTAMP),
        ("1699999699", "v0=" + "0" * 64, Refusal.EXPIRED),
        ("1700000301", "v0=" + "0" * 64, Refusal.EXPIRED),
        ("1700000000", "v0=é", Refusal.BAD_SIGNATURE),
        ("1700000000", "v0=" + "0" * 64, Refusal.BAD_SIGNATURE),
        ("1700000000", "v1=" + "0" * 64, Refusal.BAD_SIGNATURE),
    ],
)
def test_each_refusal_is_named(
    timestamp: str | None, signature: str | None, refusal: Refusal
) -> None:
    assert check_signature(SECRET, timestamp, signature, b"x", NOW) is refusal


def test_an_uppercase_or_wrong_key_signature_is_refused() -> None:
    body, stamp = b"payload=%7B%7D", "1700000000"
    assert check_signature(SECRET, stamp, sign(body, stamp).upper(), body, NOW) is not None
    assert check_signature(SECRET, stamp, sign(body, stamp, b"other"), body, NOW) is not None
    assert check_signature(SECRET, stamp, sign(body + b" ", stamp), body, NOW) is not None


@settings(max_examples=300, deadline=None)
@given(
    timestamp=st.one_of(
        st.integers(int(NOW) - 400, int(NOW) + 400).map(str),
        st.text(max_size=12),
        st.just("1700000000"),
    ),
    signature=st.one_of(st.text(max_size=70), st.just("v0=" + "a" * 64)),
    body=st.text(max_size=40).map(str.encode),  # is_valid raises on non-UTF-8 bodies, too
    genuine=st.booleans(),
)
def test_agrees_with_slack_sdk_wherever_its_verifier_answers(
    timestamp: str, signature: str, body: bytes, genuine: bool
) -> None:
    """slack_sdk's SignatureVerifier.is_valid raises on what it cannot parse; elsewhere the two
    agree (so the front refuses nothing Bolt would have let through)."""

    class Clock:
        def now(self) -> float:
            return NOW

    if genuine and timestamp.isascii() and timestamp.isdigit():
        signature = sign(body, timestamp)
    verifier = SignatureVerifier(SECRET.decode(), clock=Clock())  # type: ignore[arg-type]
    try:
        theirs = verifier.is_valid(body, timestamp, signature)
    except (ValueError, TypeError):  # the upstream defect: a 500 in Bolt
        assert check_signature(SECRET, timestamp, signature, body, NOW) is not None
        return
    ours = check_signature(SECRET, timestamp, signature, body, NOW) is None
    assert ours == theirs


def test_the_signature_covers_bytes_that_are_not_utf8() -> None:
    body, stamp = b"\x80\xff payload", "1700000000"
    assert check_signature(SECRET, stamp, sign(body, stamp), body, NOW) is None


# --- response_url hosts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.slack.com/commands/T0/1/abc", True),
        ("https://HOOKS.slack.com/actions/T0/1/abc", True),
        ("https://hooks.slack.com:443/commands/T0/1/abc", True),
        ("http://hooks.slack.com/commands/T0/1/abc", False),
        ("https://hooks.slack.com:8443/commands/T0/1/abc", False),
        ("https://hooks.slack.com.evil.example/x", False),
        ("https://hooks.slack.com@169.254.169.254/latest", False),
        ("https://user:pw@hooks.slack.com/commands/x", False),
        ("https://slack.com/api/chat.postMessage", False),
        ("http://127.0.0.1:8080/response/1", False),
        ("http://169.254.169.254/latest/meta-data", False),
        ("file:///etc/passwd", False),
        ("https://[::1/x", False),
        ("https://hooks.slack.com:99999/x", False),
        ("", False),
    ],
)
def test_production_posts_only_to_slack_hooks(url: str, allowed: bool) -> None:
    assert ResponseUrls.for_api("https://slack.com/api/").allows(url) is allowed


def test_a_stand_in_api_adds_its_own_origin_only() -> None:
    urls = ResponseUrls.for_api("http://127.0.0.1:8123/api/")
    assert urls.allows("http://127.0.0.1:8123/response/cmd-1")
    assert urls.allows("https://hooks.slack.com/commands/T0/1/abc")
    assert not urls.allows("http://127.0.0.1:8124/response/cmd-1")
    assert not urls.allows("https://127.0.0.1:8123/response/cmd-1")
    assert not urls.allows("http://localhost:8123/response/cmd-1")


# --- Tally and the connection cap -----------------------------------------------------------


def test_a_tally_logs_the_first_lines_of_an_interval_then_counts() -> None:
    tally = Tally(interval=60, lines=2)
    assert [tally.note("bad_signature", t) for t in (0, 1, 2, 3)] == [True, True, False, False]
    assert tally.window_end == 60
    assert tally.note("expired", 59) is False
    assert tally.drain() == {"bad_signature": 2, "expired": 1}
    assert tally.drain() == {}
    assert tally.note("bad_signature", 60) is True  # a new interval
    assert tally.window_end == 120


def test_connection_cap_leaves_half_the_descriptors() -> None:
    assert connection_cap(512, 1024) == 512
    assert connection_cap(512, 256) == 128
    assert connection_cap(512, 10) == 16
    assert connection_cap(512, 1_048_576) == 512


# --- the error hook only replies to verified requests --------------------------------------


@pytest.fixture
async def runtime(sim: Simulator, slack: FakeSlack) -> AsyncIterator[Runtime]:
    """The bot's runtime with one extra command whose listener always fails."""
    built = build_runtime(make_settings(sim, slack))

    @built.app.command("/boom")
    async def boom(ack: Any) -> None:
        await ack()
        raise RuntimeError("a listener bug")

    yield built
    await built.aclose()


def boom_request(response_url: str, timestamp: str, signature: str | None = None) -> Any:
    body = urlencode({"command": "/boom", "text": "", "response_url": response_url})
    headers: dict[str, str | Sequence[str]] = {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": timestamp,
        "x-slack-signature": signature or sign(body.encode(), timestamp, SIGNING_SECRET.encode()),
    }
    return AsyncBoltRequest(body=body, headers=headers)


async def test_the_error_hook_answers_a_verified_request_and_not_a_forged_one(
    runtime: Runtime, slack: FakeSlack
) -> None:
    stamp = str(int(time.time()))
    forged = boom_request(slack.response_url("forged"), "abc", "v0=" + "0" * 64)
    await runtime.app.async_dispatch(forged)
    # Bolt awaits its error path inside async_dispatch: whatever the forged request could make
    # the hook send has been sent by now.
    assert slack.calls_to("response_url") == []
    await runtime.app.async_dispatch(boom_request(slack.response_url("real"), stamp))
    (reply,) = await wait_for(slack, "response_url", 1, timeout=10)
    assert len(slack.calls_to("response_url")) == 1
    assert "/real-" in reply.path
    assert "Something went wrong" in reply.args["text"]


# --- the server under small limits --------------------------------------------------------------


class Records(logging.Handler):
    """Keeps every record, and the bot's text line for each."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.text = io.StringIO()
        self.addFilter(RedactionFilter())
        self.setFormatter(TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.text.write(self.format(record) + "\n")

    def saying(self, words: str) -> list[logging.LogRecord]:
        return [r for r in self.records if words in r.getMessage()]


@pytest.fixture
def log_lines() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


SMALL = Limits(max_connections=16, header_seconds=30, body_seconds=1, log_interval=3600)


@pytest.fixture
async def served(runtime: Runtime) -> AsyncIterator[tuple[web.Application, SlackSender]]:
    """The gated app for `runtime`, as _serve_http serves it, under SMALL limits."""
    web_app = build_web_app(runtime, asyncio.Event(), SMALL)
    gate = web_app[GATE]
    runner = web.AppRunner(web_app, access_log=None, **gate.runner_options())
    await runner.setup()
    await gate.listen(runner, "127.0.0.1", 0)
    sender = SlackSender(f"http://127.0.0.1:{gate.port}", SIGNING_SECRET)
    try:
        yield web_app, sender
    finally:
        gate.close()
        await sender.aclose()
        await runner.cleanup()


async def _open(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def test_at_the_cap_the_oldest_idle_connection_makes_room_and_is_logged_once(
    served: tuple[web.Application, SlackSender], slack: FakeSlack, log_lines: Records
) -> None:
    web_app, sender = served
    gate = web_app[GATE]
    idle = [await _open(gate.port, b"POST /slack/events HTTP/1.1\r\nHost: b") for _ in range(40)]
    await asyncio.sleep(0.1)
    try:
        assert gate.guard.count <= 16
        # The oldest were closed to make room; the newest are still open.
        assert await asyncio.wait_for(idle[0][0].read(), 5) == b""
        assert not idle[-1][0].at_eof()
        response = await sender.command("", slack.response_url("at-cap"))
        assert response.status_code == 200
        await wait_for(slack, "response_url", 1, timeout=10)
    finally:
        for _, writer in idle:
            writer.close()
    assert len(log_lines.saying("connection limit reached")) == 1
    gate.close()  # the summary of the interval is written at the latest on close
    (summary,) = log_lines.saying("more connections")
    assert vars(summary)["evicted_idle"] >= 23  # 40 opened, 16 kept, one of the evictions logged


async def test_malformed_requests_are_logged_briefly_without_tracebacks(
    served: tuple[web.Application, SlackSender], log_lines: Records
) -> None:
    web_app, _ = served
    gate = web_app[GATE]
    for _ in range(50):
        reader, writer = await _open(
            gate.port, b"POST /slack/events HTTP/1.1\r\nContent-Length: abc\r\n\r\n"
        )
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.0 400")
        writer.close()
    gate.close()
    assert "Traceback" not in log_lines.text.getvalue()
    assert len(log_lines.saying("refused a malformed")) == SMALL.refusals_logged_per_interval
    (summary,) = log_lines.saying("more Slack requests refused")
    assert vars(summary)["malformed_http"] == 50 - SMALL.refusals_logged_per_interval


async def test_a_chunked_body_over_the_limit_is_refused(
    served: tuple[web.Application, SlackSender],
) -> None:
    web_app, _ = served
    gate = web_app[GATE]
    chunk = b"x" * 65536
    head = b"POST /slack/events HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
    reader, writer = await _open(gate.port, head)
    try:
        for _ in range(20):  # 1.25 MiB, past the 1 MiB limit, announced by no Content-Length
            writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await writer.drain()
            if reader.at_eof():
                break
        status = await asyncio.wait_for(reader.readline(), 5)
    except ConnectionError:
        status = b"reset"
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 413"), status
