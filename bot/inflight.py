"""Counts work in progress so that shutdown can wait for it to finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class InFlight:
    """A counter of running handler bodies with a way to wait until it reaches zero."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """How many bodies are running now."""
        return self._count

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Mark the enclosed work as in flight."""
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def drain(self, seconds: float) -> bool:
        """Wait until nothing is in flight; False when `seconds` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        # Checked again on waking: a hold may begin in the same step as the last one ended
        # (an event's listener starts right after its request's middleware lets go).
        while self._count:
            try:
                await asyncio.wait_for(self._idle.wait(), deadline - loop.time())
            except TimeoutError:
                return False
        return True
