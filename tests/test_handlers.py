"""Listeners name what they use; Bolt can fill every name, with the type the middleware gives."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import pytest
from slack_bolt.context.ack.async_ack import AsyncAck

from bot import handlers
from bot.handlers import BOLT_ARGS, PROVIDED, check_injectable
from bot.inflight import InFlight
from bot.kps import KPSClient
from bot.services import Provided


class RecordingApp:
    """Keeps each listener `register` attaches, whatever it listens to."""

    def __init__(self) -> None:
        self.listeners: list[Callable[..., Any]] = []

    def _keep(self, _: object) -> Callable[[Callable[..., Any]], Any]:
        return self.listeners.append

    command = event = action = _keep


def registered() -> list[Callable[..., Any]]:
    app = RecordingApp()
    handlers.register(app)  # type: ignore[arg-type]
    return app.listeners


def test_no_provided_name_is_one_bolt_would_shadow() -> None:
    # Bolt prefers its own argument of a name over a context key of the same name.
    assert PROVIDED and not PROVIDED & BOLT_ARGS


def test_every_listener_asks_only_for_what_bolt_or_the_middleware_gives() -> None:
    listeners = registered()
    assert len(listeners) == 9
    for listener in listeners:
        names = set(inspect.signature(listener).parameters)
        assert names <= BOLT_ARGS | PROVIDED, listener.__qualname__


def test_provided_parameters_have_the_type_the_middleware_puts_in() -> None:
    given = get_type_hints(Provided)
    asked = 0
    for listener in registered():
        hints = get_type_hints(listener)
        for name in set(inspect.signature(listener).parameters) & PROVIDED:
            assert hints[name] == given[name], (listener.__qualname__, name)
            asked += 1
    assert asked >= 9 * 3  # each listener takes at least three of them


async def _typo(ack: AsyncAck, kpss: KPSClient) -> None:
    raise AssertionError("never called")


async def _keyword_only(ack: AsyncAck, *, kps: KPSClient) -> None:
    raise AssertionError("never called")


@pytest.mark.parametrize(("listener", "name"), [(_typo, "kpss"), (_keyword_only, "kps")])
def test_a_listener_bolt_could_not_fill_is_refused_at_registration(
    listener: Callable[..., Any], name: str
) -> None:
    # Bolt itself would pass None for an unknown name, or nothing for a keyword-only one.
    with pytest.raises(TypeError, match=name):
        check_injectable(listener)


async def test_drain_waits_for_a_hold_that_begins_as_the_last_one_ends() -> None:
    inflight = InFlight()
    first_done, second_done = asyncio.Event(), asyncio.Event()

    async def relay() -> None:
        async with inflight.hold():
            await first_done.wait()
        async with inflight.hold():  # no await between: the count never shows 0 for long
            await second_done.wait()

    running = asyncio.create_task(relay())
    await asyncio.sleep(0)
    draining = asyncio.create_task(inflight.drain(0.2))
    await asyncio.sleep(0)
    first_done.set()
    assert await draining is False and inflight.count == 1
    second_done.set()
    await running
    assert await inflight.drain(1) is True
