"""Shared fixtures: the KPS simulator, the Slack stand-in, and a bot running against both."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from bot.config import Settings, TokenAuthSettings
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator, seed_tasks
from bot.secret import Secret
from bot.server import serve
from bot.store import Store
from tests.signed import SlackSender

TOKEN = "sim-static-token"
SIGNING_SECRET = "test-signing-secret"
PROJECT = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def free_port() -> int:
    """A port free a moment ago, for a bot in another process only: it may be taken before
    that process binds it. In-process servers bind port 0 and report the port they got."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait until `condition()` holds, polling: for state the code under test signals no other
    way. A barrier for something to have happened, never proof that something did not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def _secrets_registered_per_test() -> Iterator[None]:
    """Secrets a test registers for redaction are forgotten after it.

    The redactor is process-wide: without this, a bot started by an earlier test in the same
    worker keeps its secrets registered, and a test that a bot registers its own would pass
    even if it no longer did.
    """
    from bot.logs import _redactor

    counts, state = dict(_redactor._counts), _redactor._state
    yield
    _redactor._counts, _redactor._state = counts, state


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL that refuses connections: its port stays bound but never listens, so no
    other server can take it while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A KPS/IAM simulator holding 37 running tasks, accepting one static token."""
    simulator = Simulator(
        project_id=PROJECT, tasks=seed_tasks(37, now=time.time()), static_tokens=[TOKEN]
    )
    async with simulator:
        yield simulator


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    """The Slack Web API stand-in."""
    async with FakeSlack() as fake:
        yield fake


def make_settings(sim: Simulator, slack: FakeSlack, **changes: Any) -> Settings:
    """Settings for a bot wired to the simulator and the stand-in, in HTTP mode, on port 0."""
    if "stale_channel_id" in changes and "state_url" not in changes:
        # Otherwise the store opens the default STATE_URL: kps-bot.db in the working tree.
        raise TypeError("a bot with notices needs state_url (the state_url fixture)")
    settings = Settings(
        slack_bot_token=Secret("xoxb-test"),
        project_id=PROJECT,
        auth=TokenAuthSettings(Secret(TOKEN)),
        kps_endpoint=sim.url,
        iam_endpoint=sim.url,
        region="cn-north-4",
        slack_signing_secret=Secret(SIGNING_SECRET),
        slack_api_url=slack.api_url,
        port=0,
        stale_after=timedelta(minutes=30),
        kps_timeout=10.0,
        kps_max_attempts=3,
        # No "Loading…" placeholder unless a test asks for one: a loaded machine's slow page
        # must not change what a test sees (the loading tests set it low).
        loading_after=60.0,
    )
    return replace(settings, **changes)


@dataclass
class RunningBot:
    """A bot process-in-a-task serving HTTP on loopback."""

    settings: Settings
    url: str
    sender: SlackSender
    stop: asyncio.Event
    task: asyncio.Task[int]

    async def shutdown(self) -> int:
        self.stop.set()
        return await asyncio.wait_for(self.task, 30)

    async def settled(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until no listener is running: whatever the requests sent so far were going to
        do, they have done (`/healthz` counts listener bodies in flight).

        A listener starts holding before the HTTP answer reaches the sender: Bolt acks a
        command inside the listener's hold, and schedules an event's listener before it
        answers, on the same event loop as this test."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            health = (await self.sender.client.get(self.url + "/healthz")).json()
            if health["in_flight"] == 0:
                return
            if loop.time() > deadline:
                raise AssertionError(f"still {health['in_flight']} in flight after {timeout} s")
            await asyncio.sleep(0.01)


async def start_bot(settings: Settings) -> RunningBot:
    """Serve `settings` on loopback, on the port the system gives; return once listening."""
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(
            settings, stop=stop, handle_signals=False, host="127.0.0.1", listening=bound.set_result
        )
    )
    await asyncio.wait({task, bound}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not bound.done():
        bound.cancel()
        if task.done():
            task.result()  # raises what stopped it
            raise AssertionError(f"the bot exited with {task.result()} while starting")
        raise AssertionError("bot did not come up")
    settings = replace(settings, port=bound.result())
    url = f"http://127.0.0.1:{settings.port}"
    return RunningBot(settings, url, SlackSender(url, SIGNING_SECRET), stop, task)


@pytest.fixture
async def bot_factory(sim: Simulator, slack: FakeSlack) -> AsyncIterator[Callable[..., Any]]:
    """Start bots with settings changes; all are stopped at the end."""
    running: list[RunningBot] = []

    async def start(**changes: Any) -> RunningBot:
        bot = await start_bot(make_settings(sim, slack, **changes))
        running.append(bot)
        return bot

    yield start
    for bot in running:
        if not bot.task.done():
            await bot.shutdown()
        await bot.sender.aclose()


@pytest.fixture
async def bot(bot_factory: Callable[..., Any]) -> RunningBot:
    """One bot with default test settings."""
    started: RunningBot = await bot_factory()
    return started


# --- stale-notice fixtures: a state file, the local PostgreSQL, clients for in-process watchers ---

ALERTS = "C0ALERTS"  # the stand-in's alerts channel


@pytest.fixture
def state_url(tmp_path: Any) -> str:
    """A SQLite state file of this test's own."""
    return f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
async def store(state_url: str) -> AsyncIterator[Store]:
    """An alert state store on this test's own SQLite file, migrated, closed afterwards."""
    opened = Store.open(state_url)
    await opened.migrate()
    yield opened
    await opened.close()


@pytest.fixture
def empty_sim(sim: Simulator) -> Simulator:
    """The simulator with no tasks, so each test says exactly which run."""
    sim.tasks = []
    return sim


async def _pg_admin() -> tuple[Any, str]:
    """A connection to the `test` database as `postgres`, else as the current user."""
    import getpass

    import asyncpg

    last: BaseException | None = None
    for user in ("postgres", getpass.getuser()):
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=5432, user=user, database="test", timeout=3
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            last = error
            continue
        return conn, user
    raise ConnectionError(f"{type(last).__name__}: {last}")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards.

    Skips when no server answers on 127.0.0.1:5432, unless REQUIRE_POSTGRES=1 (set by .ci/run),
    where that is a failure. A database per test keeps parallel runs from sharing tables.
    """
    import os
    import secrets

    try:
        admin, user = await _pg_admin()
    except ConnectionError as error:
        why = f"no PostgreSQL answers at 127.0.0.1:5432 database test ({error})"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but {why}")
        pytest.skip(f"{why}; set REQUIRE_POSTGRES=1 to fail instead")
    name = f"kps_test_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://{user}@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def kps_client(sim: Simulator) -> AsyncIterator[Any]:
    """A KPS client for the simulator, retrying once, quickly."""
    from bot.auth import StaticTokenAuth
    from bot.kps import KPSClient, RetryPolicy

    async with httpx.AsyncClient(auth=StaticTokenAuth(Secret(TOKEN)), timeout=10) as http:
        yield KPSClient(
            http,
            endpoint=sim.url,
            project_id=PROJECT,
            retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05),
        )


@pytest.fixture
async def slack_client(slack: FakeSlack) -> AsyncIterator[Any]:
    """A Slack Web API client for the stand-in, without retry handlers: failures reach the
    outbox directly (the runtime's client retries 429/5xx twice first)."""
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url, timeout=10)
    yield client
    if client.session is not None:
        await client.session.close()
