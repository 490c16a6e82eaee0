"""Shared fixtures: the KPS simulator, the Slack stand-in, and a bot running against both."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest

from bot.config import Settings, TokenAuthSettings
from bot.fakeslack import FakeSlack
from bot.secret import Secret
from bot.server import serve
from bot.simulator import Simulator, seed_tasks
from tests.signed import SlackSender

TOKEN = "sim-static-token"
SIGNING_SECRET = "test-signing-secret"
PROJECT = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    """Settings for a bot wired to the simulator and the stand-in, in HTTP mode."""
    settings = Settings(
        slack_bot_token=Secret("xoxb-test"),
        project_id=PROJECT,
        auth=TokenAuthSettings(Secret(TOKEN)),
        kps_endpoint=sim.url,
        iam_endpoint=sim.url,
        region="cn-north-4",
        slack_signing_secret=Secret(SIGNING_SECRET),
        slack_api_url=slack.api_url,
        port=free_port(),
        stale_after=timedelta(minutes=30),
        kps_timeout=10.0,
        kps_max_attempts=3,
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


async def start_bot(settings: Settings) -> RunningBot:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop=stop, handle_signals=False))
    url = f"http://127.0.0.1:{settings.port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if task.done():
                task.result()
            try:
                if (await client.get(url + "/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("bot did not come up")
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
