"""Waiting on the Slack stand-in's record, failing the test with what did arrive instead."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable

from bot.sandbox.fakeslack import Call, FakeSlack


async def wait_for(
    slack: FakeSlack,
    method: str,
    count: int = 1,
    *,
    timeout: float = 5.0,  # noqa: ASYNC109 - a test's deadline, not a client's
    where: Callable[[Call], bool] | None = None,
) -> list[Call]:
    """Wait until `count` calls of `method` matching `where` arrived, refused ones included."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        changed = slack.next_change()
        found = [c for c in slack.calls_to(method) if where is None or where(c)]
        if len(found) >= count:
            changed.close()
            return found
        remaining = deadline - loop.time()
        if remaining <= 0:
            changed.close()
            raise AssertionError(
                f"expected {count} matching {method} call(s) within {timeout}s, "
                f"got {len(found)}; arrived: {summary(slack)}"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed, remaining)


def summary(slack: FakeSlack) -> str:
    """The calls the stand-in recorded, counted by method and error."""
    seen = Counter(c.method if c.ok else f"{c.method} ({c.error})" for c in slack.calls)
    return ", ".join(f"{name} x{n}" for name, n in seen.items()) or "nothing"
