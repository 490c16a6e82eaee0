"""The bot with proposed hot-path changes patched in, to measure each proposal before it is made.

`python -m bench.variant --fixes sniffio,gate,flight` runs `python -m bot` unchanged except for
the fixes named:

- `sniffio`: httpcore calls `current_async_library()` for every lock, semaphore and shielded
  close, and that function does `import sniffio`; anyio >= 4.11 stopped installing sniffio and
  Python does not cache a failed import, so each call walks sys.path (encode/httpcore#1103).
  Installing sniffio fixes it; here a stand-in module answering "asyncio" is registered instead,
  which has the same effect on an asyncio-only process.
- `gate`: at most as many KPS GETs in flight as the httpx pool has connections, so waiting
  happens on an asyncio semaphore, not in httpcore's queue, which is scanned in full for every
  request it assigns (encode/httpcore#1035) and burns the CPU once thousands wait.
- `flight`: callers asking for the same page (limit, offset) while a GET for it is in flight
  share that GET's answer instead of queueing their own; nothing is cached after it returns.
- `ack`: with `process_before_response=False` Bolt runs the listener as a task and polls every
  10 ms for `ack()` (slack_bolt/listener/asyncio_runner.py), so no ack leaves in under ~10 ms
  and the polling loops cost CPU. Here the app runs with `process_before_response=True` and the
  `/kps` listener returns as soon as it has acked, its remaining work going on in a task.

The first three went into the bot in e63543e; applied to a bot that has them they do nothing
(the client's own gate is detected, and the real sniffio wins). `ack` is still a proposal. The
scan benchmark also uses `patch_parse`, a fast path for turning KPS items into tasks.

This is a benchmark experiment, not the shipped bot; RESULTS.md labels its rows `bot+fix`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

FIXES = ("sniffio", "gate", "flight", "ack")  # `parse` applies to the scan only
GATE = 50  # bot/app.py's httpx pool size


def fake_sniffio() -> None:
    """Register a `sniffio` that always answers "asyncio", unless the real one is installed."""
    if importlib.util.find_spec("sniffio") is None:
        module = types.ModuleType("sniffio")
        module.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
        sys.modules["sniffio"] = module


def patch_parse() -> None:
    """Give `bot.kps._task` a fast path for the common shape; anything else goes the old way.

    The fast path checks the same things (a non-empty task_id string, strings or nothing in the
    optional fields, task_time as a string of digits) with one dict lookup per field and no
    helper calls, then converts the time exactly as before.
    """
    import bot.kps
    from bot.tasks import Task

    careful = getattr(bot.kps, "_task")  # noqa: B009
    strings = (str, type(None))

    def fast(item: dict[str, Any], response: Any) -> Any:
        get = item.get
        task_id, raw = get("task_id"), get("task_time")
        operation, name = get("operate_type"), get("server_name")
        server, keypair = get("server_id"), get("keypair_name")
        if (
            type(task_id) is str
            and task_id
            and type(raw) is str
            and raw.isdigit()
            and type(operation) in strings
            and type(name) in strings
            and type(server) in strings
            and type(keypair) in strings
        ):
            started = datetime.fromtimestamp(int(raw) / 1000, tz=UTC)
            return Task(task_id, operation or "", started, name or "", server or "", keypair or "")
        return careful(item, response)

    setattr(bot.kps, "_task", fast)  # noqa: B010


def patch_kps(kps: Any, *, gate: bool, flight: bool, gate_size: int = GATE) -> None:
    """Wrap `kps.list_running_tasks` (an instance attribute shadows the method)."""
    original: Callable[[int, int], Awaitable[Any]] = kps.list_running_tasks
    semaphore = asyncio.Semaphore(gate_size)
    flights: dict[tuple[int, int], asyncio.Future[Any]] = {}

    async def fetch(limit: int, offset: int) -> Any:
        if not gate:
            return await original(limit, offset)
        async with semaphore:
            return await original(limit, offset)

    async def shared(limit: int = 1000, offset: int = 0) -> Any:
        key = (limit, offset)
        running = flights.get(key)
        if running is None:
            running = asyncio.ensure_future(fetch(limit, offset))
            flights[key] = running
            running.add_done_callback(lambda _: flights.pop(key, None))
        # shield: one caller being cancelled must not cancel the GET the others wait for.
        return await asyncio.shield(running)

    kps.list_running_tasks = shared if flight else fetch


def spawn_after_ack(
    handler: Callable[..., Coroutine[Any, Any, None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    """A listener that returns once `handler` has acked; the rest of `handler` runs on."""
    running: set[asyncio.Task[None]] = set()

    # Bolt reads the names a listener asks for through __wrapped__: the handler's own.
    @functools.wraps(handler)
    async def listener(**kwargs: Any) -> None:
        ack = kwargs["ack"]
        acked = asyncio.Event()

        async def ack_and_tell(*args: Any, **options: Any) -> Any:
            answer = await ack(*args, **options)
            acked.set()
            return answer

        work: asyncio.Task[None] = asyncio.create_task(handler(**{**kwargs, "ack": ack_and_tell}))
        running.add(work)
        work.add_done_callback(running.discard)
        told = asyncio.create_task(acked.wait())
        await asyncio.wait({work, told}, return_when=asyncio.FIRST_COMPLETED)
        told.cancel()
        if work.done():
            work.result()  # an error before the ack reaches Bolt's error hook as before

    return listener


def install(fixes: set[str]) -> None:
    """Apply `fixes` to every runtime `bot.server` builds."""
    if "sniffio" in fixes:
        fake_sniffio()
    import bot.app
    import bot.handlers
    import bot.server

    # setattr: these rebind names other bot modules looked up from these modules at import.
    if "ack" in fixes:
        make_app = getattr(bot.app, "AsyncApp")  # noqa: B009

        def eager_app(*args: Any, **kwargs: Any) -> Any:
            kwargs["process_before_response"] = True
            return make_app(*args, **kwargs)

        setattr(bot.app, "AsyncApp", eager_app)  # noqa: B010
        handler = getattr(bot.handlers, "handle_kps")  # noqa: B009
        setattr(bot.handlers, "handle_kps", spawn_after_ack(handler))  # noqa: B010

    build = getattr(bot.server, "build_runtime")  # noqa: B009

    def build_patched(*args: Any, **kwargs: Any) -> Any:
        runtime = build(*args, **kwargs)
        kps = runtime.kps
        # Since e63543e the client gates and shares its GETs itself: wrapping again adds nothing.
        wanted = fixes & {"gate", "flight"}
        if wanted and not hasattr(kps, "_flights"):
            patch_kps(kps, gate="gate" in wanted, flight="flight" in wanted)
        return runtime

    setattr(bot.server, "build_runtime", build_patched)  # noqa: B010


def main(argv: list[str] | None = None) -> int:
    """Parse `--fixes`, patch, then run the bot exactly as `python -m bot` does."""
    parser = argparse.ArgumentParser(prog="python -m bench.variant")
    parser.add_argument("--fixes", default=",".join(FIXES), help=f"any of {', '.join(FIXES)}")
    args = parser.parse_args(argv)
    fixes = {name for name in args.fixes.split(",") if name}
    unknown = fixes - set(FIXES)
    if unknown:
        parser.error(f"unknown fixes: {', '.join(sorted(unknown))}")
    install(fixes)
    print(f"bench.variant: fixes {', '.join(sorted(fixes))} (those already in the bot: no-ops)")
    from bot.__main__ import main as bot_main

    return bot_main([])


if __name__ == "__main__":
    sys.exit(main())
