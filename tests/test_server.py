"""The process around the app: readiness (Slack's verdict on the token, the store), Socket Mode's
probe server, the order of a shutdown, and the OAuth variables that would make Bolt ignore the
bot token."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot import readiness
from bot.readiness import Readiness
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Simulator
from bot.secret import Secret
from bot.server import serve
from bot.services import utc_now
from bot.store import Store
from tests.conftest import ALERTS, PROJECT, RunningBot, make_settings, until
from tests.standin import wait_for

WRONG_TOKEN = "xoxb-not-the-stand-ins-token"


async def ready(url: str, client: httpx.AsyncClient | None = None) -> tuple[int, Any]:
    """`GET /readyz`: the status and the JSON body."""
    if client is None:
        async with httpx.AsyncClient() as fresh:
            answer = await fresh.get(url + "/readyz")
    else:
        answer = await client.get(url + "/readyz")
    return answer.status_code, answer.json()


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record, raw (before the redaction filter), with its extra fields."""
    return "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)


@pytest.fixture
async def slack_web(slack: FakeSlack) -> AsyncIterator[AsyncWebClient]:
    """A Web API client for the stand-in, without retry handlers."""
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, timeout=10)
    yield client
    if client.session is not None:
        await client.session.close()


# --- /readyz in HTTP mode -------------------------------------------------------------------------


async def test_readyz_is_ready_once_slack_accepted_the_token_at_start(
    bot: RunningBot, slack: FakeSlack
) -> None:
    (call,) = slack.calls_to("auth.test")
    assert call.ok and call.token == slack.bot_token
    assert await ready(bot.url) == (200, {"status": "ready"})


async def test_a_rejected_token_is_one_log_line_and_readyz_503_while_healthz_stays_200(
    bot_factory: Callable[..., Any], slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bot = await bot_factory(slack_bot_token=Secret(WRONG_TOKEN))
    assert [c.error for c in slack.calls_to("auth.test")] == ["invalid_auth"]
    status, body = await ready(bot.url)
    assert (status, body) == (
        503,
        {"status": "not ready", "reason": "Slack rejected SLACK_BOT_TOKEN (invalid_auth)"},
    )
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Slack rejected SLACK_BOT_TOKEN (invalid_auth)" in line.getMessage()
    assert "/readyz" in line.getMessage() and "\n" not in line.getMessage()
    # Alive all the same: a platform that restarts on /healthz would only loop.
    assert (await bot.sender.client.get(bot.url + "/healthz")).status_code == 200
    assert (await bot.sender.command("help", slack.response_url())).status_code == 200
    assert WRONG_TOKEN not in logged(caplog)


async def test_slack_unreachable_at_start_keeps_readyz_503(
    bot_factory: Callable[..., Any], refused_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await bot_factory(slack_api_url=refused_url + "/api/")
    assert await ready(bot.url) == (503, {"status": "not ready", "reason": "Slack unreachable"})
    # A warning, not an error: a network fault usually heals, and auth.test is asked again.
    (line,) = [r for r in caplog.records if r.name == "bot.readiness"]
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith("Slack unreachable (ClientConnectorError)")


def _sqlite(path: str, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute(statement)


async def readyz_becomes(url: str, status: int, timeout: float = 5.0) -> Any:  # noqa: ASYNC109
    """The body of the first `/readyz` answer with `status` (the store probe is cached 1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            code, body = await ready(url, client)
            if code == status:
                return body
            if loop.time() > deadline:
                raise AssertionError(f"/readyz never answered {status}; last {code} {body}")
            await asyncio.sleep(0.05)


async def test_readyz_says_when_the_state_store_fails_and_when_it_answers_again(
    bot_factory: Callable[..., Any], state_url: str
) -> None:
    bot = await bot_factory(stale_channel_id=ALERTS, state_url=Secret(state_url))
    assert await ready(bot.url) == (200, {"status": "ready"})
    path = state_url.removeprefix("sqlite+aiosqlite:///")
    await asyncio.to_thread(_sqlite, path, "ALTER TABLE kps_lease RENAME TO kps_lease_away")
    failed = await readyz_becomes(bot.url, 503)
    assert failed == {"status": "not ready", "reason": "state store failed (OperationalError)"}
    await asyncio.to_thread(_sqlite, path, "ALTER TABLE kps_lease_away RENAME TO kps_lease")
    assert await readyz_becomes(bot.url, 200) == {"status": "ready"}


async def test_a_state_store_that_hangs_is_not_ready_within_the_probe_deadline(
    pg_url: str, slack: FakeSlack, slack_web: AsyncWebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg

    monkeypatch.setattr(readiness, "STORE_SECONDS", 0.5)
    store = Store.open(pg_url)
    await store.migrate()
    probe = Readiness(slack_web, store, clock=utc_now)
    dsn = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    locker = await asyncpg.connect(dsn)
    try:
        await probe.start()
        hold = locker.transaction()
        await hold.start()
        # A lock every reader waits for: the probe's query hangs as on a partitioned network.
        await locker.execute("LOCK TABLE kps_lease IN ACCESS EXCLUSIVE MODE")
        assert await probe.problem() == "state store did not answer within 0.5 s"
        await hold.rollback()
        # Answers are cached a second; the pool may also replace the connection it cancelled.
        answers = []
        for _ in range(50):
            answers.append(await probe.problem())
            if answers[-1] is None:
                break
            await asyncio.sleep(0.1)
        assert answers[-1] is None, answers
    finally:
        await locker.close()
        await probe.aclose()
        await store.close()


# --- Slack's verdict, retried -------------------------------------------------------------------


@pytest.mark.parametrize(
    "error", ["invalid_auth", "not_authed", "account_inactive", "token_revoked"]
)
async def test_each_token_refusal_is_named_and_asked_again_until_slack_accepts(
    slack: FakeSlack,
    slack_web: AsyncWebClient,
    caplog: pytest.LogCaptureFixture,
    error: str,
) -> None:
    slack.fail_next("auth.test", status=200, error=error, times=2)
    probe = Readiness(slack_web, None, clock=utc_now, first_retry=0.01, max_retry=0.02)
    try:
        await probe.start()
        assert await probe.problem() == f"Slack rejected SLACK_BOT_TOKEN ({error})"
        await wait_for(slack, "auth.test", 3, where=lambda c: c.ok or c.error == error)
        await until(lambda: probe.slack_problem is None)
        assert await probe.problem() is None
    finally:
        await probe.aclose()
    # One line when it broke (not one per retry), one when it healed.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and error in errors[0]
    assert any("accepts the bot token again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ({"status": 200, "body": "html"}, "HTTP 200, an answer that is not Slack's JSON"),
        ({"status": 200, "body": "garbage"}, "HTTP 200, an answer that is not Slack's JSON"),
        ({"status": 500, "body": "text"}, "HTTP 500, an answer that is not Slack's JSON"),
        ({"status": 200, "error": "fatal_error"}, "fatal_error"),
    ],
)
async def test_an_odd_auth_test_answer_is_not_ready_and_says_what_came(
    slack: FakeSlack, slack_web: AsyncWebClient, failure: dict[str, Any], reason: str
) -> None:
    slack.fail_next("auth.test", **failure)
    probe = Readiness(slack_web, None, clock=utc_now)
    try:
        await probe.start()
        assert await probe.problem() == f"Slack answered auth.test with {reason}"
    finally:
        await probe.aclose()


# --- shutting down: readiness first, then the drain ---------------------------------------------


async def test_readyz_says_stopping_before_work_in_flight_drains(
    bot: RunningBot, sim: Simulator, slack: FakeSlack
) -> None:
    sim.latency = 1.0
    client = bot.sender.client  # keeps its connection: the listener closes at stop
    assert (await bot.sender.command("", slack.response_url())).status_code == 200
    assert (await client.get(bot.url + "/healthz")).json()["in_flight"] == 1
    bot.stop.set()
    status, body = await ready(bot.url, client)
    assert (status, body) == (503, {"status": "not ready", "reason": "stopping"})
    # A slow KPS gets a "loading…" placeholder first; the page itself comes after the drain.
    assert not pages(slack), "the drain ended before readiness went"
    assert await asyncio.wait_for(bot.task, 30) == 0
    assert len(pages(slack)) == 1


def pages(slack: FakeSlack) -> list[Call]:
    """The response_url posts that are a page, not the loading placeholder."""
    return [c for c in slack.calls_to("response_url") if "loading" not in c.args.get("text", "")]


# --- Socket Mode serves the probes and nothing else ---------------------------------------------


async def test_socket_mode_serves_healthz_and_readyz_only_and_drains_after_readiness(
    sim: Simulator, slack: FakeSlack
) -> None:
    settings = make_settings(
        sim, slack, slack_app_token=Secret(slack.app_token), slack_signing_secret=None
    )
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings, stop=stop, handle_signals=False, host="127.0.0.1", listening=bound.set_result
        )
    )
    try:
        url = f"http://127.0.0.1:{await asyncio.wait_for(bound, 30)}"
        await slack.wait_socket_connected(timeout=10)
        async with httpx.AsyncClient() as client:
            health = await client.get(url + "/healthz")
            assert health.status_code == 200 and health.json()["mode"] == "socket"
            assert await ready(url, client) == (200, {"status": "ready"})
            assert (await client.post(url + "/slack/events", content=b"{}")).status_code == 404
            assert (await client.get(url + "/metrics")).status_code == 404

            sim.latency = 1.0
            payload = {
                "command": "/kps",
                "text": "",
                "user_id": "U0ALICE",
                "channel_id": "C0GENERAL",
                "team_id": "T0TEST",
                "api_app_id": "A0KPS",
                "response_url": slack.response_url("socket"),
                "trigger_id": "1.2.3",
            }
            await slack.send_socket_request("slash_commands", payload)
            in_flight = (await client.get(url + "/healthz")).json()["in_flight"]
            assert in_flight == 1
            stop.set()
            assert await ready(url, client) == (503, {"status": "not ready", "reason": "stopping"})
            assert not pages(slack), "the drain ended before readiness went"
        assert await asyncio.wait_for(task, 30) == 0
        assert len(pages(slack)) == 1
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 30)


# --- SLACK_CLIENT_ID and SLACK_CLIENT_SECRET ----------------------------------------------------


async def test_the_oauth_variables_in_the_environment_stop_the_start_with_one_line(
    sim: Simulator,
    slack: FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SLACK_CLIENT_ID", "1234.5678")
    monkeypatch.setenv("SLACK_CLIENT_SECRET", "an-oauth-client-secret")
    settings = make_settings(sim, slack)
    code = await asyncio.wait_for(serve(settings, stop=asyncio.Event(), handle_signals=False), 5)
    assert code == 2
    (line,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    text = line.getMessage()
    assert "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET" in text and "\n" not in text
    assert "an-oauth-client-secret" not in logged(caplog)
    assert not slack.calls, "nothing should have reached Slack"


async def test_one_oauth_variable_alone_starts_with_a_warning(
    bot_factory: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SLACK_CLIENT_ID", "1234.5678")
    bot = await bot_factory()
    assert await ready(bot.url) == (200, {"status": "ready"})
    (line,) = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "SLACK_CLIENT_ID" in r.getMessage()
    ]
    assert "harmless alone" in line.getMessage()


def test_python_m_bot_exits_2_when_the_oauth_variables_are_set() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "SLACK_BOT_TOKEN": "xoxb-secretvalue123",
        "SLACK_SIGNING_SECRET": "signing-secret-value",
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
        "HUAWEICLOUD_REGION": "cn-north-4",
        "KPS_AUTH_TOKEN": "kps-token-value",
        "SLACK_CLIENT_ID": "1234.5678",
        "SLACK_CLIENT_SECRET": "client-secret-value",
        "PORT": "1",  # never bound: the start ends before any port is
        # This worktree's bot, not whichever one the interpreter has installed.
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "bot"], env=env, capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET" in line
    for secret in ("secretvalue123", "signing-secret-value", "kps-token-value", "client-secret"):
        assert secret not in result.stderr
