"""The stale-task watcher's loop: it holds the lease, then runs a scan and delivers the outbox.

One replica at a time holds the lease and watches. Each step takes or renews the lease; the
leader scans when a scan is due (`bot.scan`) and then delivers the outbox (`bot.outbox`).

Delivery is at least once, and in practice exactly once: a row is written before Slack is
called and marked sent after Slack accepted it. A crash (or a lost database) in the moment
between Slack accepting a message and the mark being written is the one window in which a
message is sent twice; a timeout on a call Slack did in fact accept is the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from slack_sdk.web.async_client import AsyncWebClient

from bot.kps import KPSClient
from bot.outbox import Delivery, Outbox
from bot.scan import Notices, ScanLimits, Scanner, ScanResult
from bot.stale import lease_ttl as default_lease_ttl
from bot.store import Store, StoreError

log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def default_holder() -> str:
    """A lease holder id naming the host and process, unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Pace:
    """How often the watcher scans, and how long its lease lasts."""

    poll_interval: float  # seconds between scans
    lease_ttl: float | None = None  # seconds; None: `stale.lease_ttl(poll_interval)`

    def __post_init__(self) -> None:
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")


class Watcher:
    """Scans for stale tasks while it holds the lease; `start()` it, `stop()` it."""

    def __init__(
        self,
        *,
        store: Store,
        kps: KPSClient,
        slack: AsyncWebClient,
        notices: Notices,
        pace: Pace,
        limits: ScanLimits | None = None,
        delivery: Delivery | None = None,
        holder: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        limits = limits or ScanLimits()
        self._store = store
        self._channel = notices.channel
        self._poll = pace.poll_interval
        self._ttl = pace.lease_ttl if pace.lease_ttl is not None else default_lease_ttl(self._poll)
        self._impaired_after = limits.impaired_after
        self._clock = clock
        self.holder = holder or default_holder()
        self.role = "stopped"  # stopped, standby or leader
        self._scanner = Scanner(
            store=store,
            kps=kps,
            notices=notices,
            limits=limits,
            poll_interval=self._poll,
            clock=clock,
        )
        self._outbox = Outbox(
            store=store,
            slack=slack,
            config=delivery or Delivery(),
            holder=self.holder,
            render=self._scanner.render_notice,
            clock=clock,
        )
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_scan = 0.0
        self._step_failures = 0  # steps that raised, in a row
        self._step_error: str | None = None
        # Failed steps the store could not count (it was the thing failing): how many, since when.
        self._uncounted = 0
        self._uncounted_since: datetime | None = None

    def __repr__(self) -> str:
        return f"Watcher(channel={self._channel!r}, holder={self.holder!r}, role={self.role!r})"

    @property
    def problem(self) -> str | None:
        """Why this process's watching is impaired (its step keeps failing), else None."""
        if self._step_failures < self._impaired_after:
            return None
        return (
            f"the watcher's step failed {self._step_failures} times in a row"
            f" ({self._step_error}); see the log for the traceback"
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a task of the running event loop."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self.run(), name="kps-watcher")

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the current step (at most `grace` seconds), then give the lease up."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.role != "stopped":
            try:
                await self._store.release_lease(self.holder)
            except Exception:  # the lease then simply expires
                log.warning("could not release the watcher lease", exc_info=True)
            log.info("watcher %s stopped and gave its lease up", self.holder)
        self.role = "stopped"

    async def run(self) -> None:
        """Step until `stop()`; cancelling instead leaves the lease to expire, as a crash does."""
        log.info(
            "watcher %s started: scans every %g s, lease %g s",
            self.holder,
            self._poll,
            self._ttl,
        )
        while not self._stopping.is_set():
            try:
                delay = await self.step()
            except Exception as error:
                # A bug or a lost database must not end watching: log it whole, try again later.
                log.exception("watcher step failed; trying again in %g s", self._poll)
                await self._step_failed(error)
                delay = self._poll
            else:
                self._step_failures, self._step_error = 0, None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(delay, 0.01))

    async def step(self) -> float:
        """Hold the lease; if ours, scan when due and deliver the outbox. Seconds to the next."""
        loop = asyncio.get_running_loop()
        if not await self.hold_lease():
            return min(self._poll, self._ttl / 3)
        await self._count_late()
        async with self._keepalive():
            if loop.time() >= self._next_scan:
                self._next_scan = loop.time() + self._poll
                await self._scanner.scan()
            await self._outbox.deliver()
            await self._scanner.prune()
        wait = self._next_scan - loop.time()
        if self._outbox.next_due is not None:
            wait = min(wait, self._outbox.next_due)
        return max(0.0, min(wait, self._ttl / 3))

    async def scan(self) -> ScanResult:
        """One scan now, whatever the lease (tests and tools drive it directly)."""
        return await self._scanner.scan()

    async def deliver(self) -> int:
        """Deliver the outbox now; the number of calls Slack accepted."""
        return await self._outbox.deliver()

    async def hold_lease(self) -> bool:
        """Take or renew the lease; True while this watcher is the one that watches."""
        leader = await self._store.acquire_lease(self.holder, ttl=self._ttl, now=self._clock())
        if leader and self.role != "leader":
            log.info("this replica now watches for stale tasks (%s)", self.holder)
        elif not leader and self.role == "leader":
            log.warning("another replica took the watcher lease from %s", self.holder)
        elif not leader and self.role == "stopped":
            log.info("another replica watches for stale tasks; %s stands by", self.holder)
        self.role = "leader" if leader else "standby"
        return leader

    async def _step_failed(self, error: Exception) -> None:
        # A step that always raises (a poison record, a lost database) would otherwise watch
        # nothing while the channel and /healthz say all is well: it counts as a failed scan.
        # Only the type reaches the store and Slack; the message may hold data from anywhere.
        self._step_failures += 1
        self._step_error = type(error).__name__
        if isinstance(error, StoreError) and error.cause:
            self._step_error += f": {error.cause}"
        if self.role != "leader":
            return  # a standby's failure is its own: /healthz shows it, the channel need not
        now, why = self._clock(), f"the watcher failed ({self._step_error})"
        try:
            await self._scanner.failed(now, why)
        except Exception:  # most likely the same lost database: /healthz still says it
            log.warning("could not count the failed step; counting it once the store answers")
            self._uncounted += 1
            self._uncounted_since = self._uncounted_since or now
            return
        try:
            # The step may fail before delivery on every poll: what waits goes out regardless,
            # the impaired notice among it.
            await self._outbox.deliver()
        except Exception:
            log.warning("could not deliver after the failed step", exc_info=True)

    async def _count_late(self) -> None:
        # The store is back: the steps it could not count go into the streak now, so a long
        # outage still gets its impaired notice (then, as this step succeeds, the recovered one)
        # instead of passing unseen by the channel.
        if not self._uncounted or self._uncounted_since is None:
            return
        why = f"the watcher failed ({self._step_error or 'StoreError'})"
        if self._uncounted > 1:
            await self._store.count_failure(
                now=self._uncounted_since, error=why, count=self._uncounted - 1
            )
            # Counted: should the last one below fail, it alone is left for the next step.
            self._uncounted = 1
        await self._scanner.failed(self._clock(), why)
        self._uncounted, self._uncounted_since = 0, None

    @contextlib.asynccontextmanager
    async def _keepalive(self) -> AsyncIterator[None]:
        # A scan may take longer than the lease (KPS slow, retrying): renew it meanwhile.
        async def renew() -> None:
            while True:
                await asyncio.sleep(self._ttl / 3)
                try:
                    await self.hold_lease()
                except Exception:
                    log.warning("could not renew the watcher lease", exc_info=True)

        task = asyncio.create_task(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
