"""The stale-task watcher: the loop around `bot.stale`, with the lease, the scans and the outbox.

One replica at a time holds the lease and watches. Each scan walks the running tasks, records
what `bot.stale` decides (new notices, endings, reminders, the failure streak) in the store
together with the Slack calls they need, and then the outbox is delivered.

Delivery is at least once, and in practice exactly once: a row is written before Slack is
called and marked sent after Slack accepted it. A crash (or a lost database) in the moment
between Slack accepting a message and the mark being written is the one window in which a
message is sent twice; a timeout on a call Slack did in fact accept is the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.alerts import Alert
from bot.blockkit import ViewContext
from bot.errors import KPSAPIError, KPSError
from bot.kps import MAX_LIMIT, KPSClient, Snapshot
from bot.notices import (
    build_detail_replies,
    build_ending_replies,
    build_impaired,
    build_recovered,
    build_reminder,
    build_stale_notice,
    watch_problem,
)
from bot.stale import (
    Finding,
    as_alert,
    decide_endings,
    due_reminders,
    newly_impaired,
    newly_stale,
    reconcile,
    stale_tasks,
)
from bot.stale import lease_ttl as default_lease_ttl
from bot.store import POST, REPLY, UPDATE, OutboxItem, Store
from bot.tasks import TaskStatus

log = logging.getLogger(__name__)

IMPAIRED_AFTER: Final = 3  # failed scans in a row before the channel hears about it
# Slack errors that no retry heals: the channel or the token must be fixed by a person.
REFUSALS: Final = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "restricted_action",
        "team_access_not_granted",
    }
)
_HINTS: Final = {
    "channel_not_found": "check STALE_CHANNEL_ID (a channel ID such as C0123456789)",
    "not_in_channel": "a private channel: /invite @kps-bot there",
    "is_archived": "the channel is archived: unarchive it or choose another",
    "invalid_auth": "SLACK_BOT_TOKEN was refused",
    "not_authed": "SLACK_BOT_TOKEN is missing",
    "token_revoked": "SLACK_BOT_TOKEN was revoked: reinstall the app",
    "missing_scope": "the app lacks a scope: reinstall it from manifest.yml",
}
_LOOKUP_CONCURRENCY: Final = 4  # KPS is served by KMS, limited to ~20 requests/s per user
_FAILED_PAGES: Final = 20
_MAX_PASSES: Final = 20
_PRUNE_EVERY: Final = timedelta(hours=1)
_KEEP: Final = timedelta(days=30)
_MAX_BACKOFF: Final = 300.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def default_holder() -> str:
    """A lease holder id naming the host and process, unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one scan did."""

    ok: bool  # a complete, successful scan
    announced: int = 0
    ended: int = 0
    reminded: int = 0
    error: str | None = None


class _Sent:
    pass


class _Stop:
    pass


class _Skip:
    pass


_SENT, _STOP, _SKIP = _Sent(), _Stop(), _Skip()


class Watcher:
    """Scans for stale tasks while it holds the lease; `start()` it, `stop()` it."""

    def __init__(
        self,
        *,
        store: Store,
        kps: KPSClient,
        slack: AsyncWebClient,
        channel: str,
        project_id: str,
        region: str | None,
        stale_after: timedelta,
        poll_interval: float,
        renotify_after: timedelta | None = None,
        lease_ttl: float | None = None,
        claim_ttl: float = 120.0,
        impaired_after: int = IMPAIRED_AFTER,
        refused_retry: float = 600.0,
        running_grace: timedelta | None = None,
        lookups_per_scan: int = 100,
        page_size: int = MAX_LIMIT,
        holder: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._store = store
        self._kps = kps
        self._slack = slack
        self._channel = channel
        self._project_id = project_id
        self._region = region
        self._stale_after = stale_after
        self._poll = poll_interval
        self._renotify = renotify_after
        self._ttl = lease_ttl if lease_ttl is not None else default_lease_ttl(poll_interval)
        self._claim_ttl = claim_ttl
        self._impaired_after = impaired_after
        self._refused_retry = refused_retry
        self._grace = running_grace or timedelta(seconds=3 * poll_interval)
        self._lookups = lookups_per_scan
        self._page_size = page_size
        self._clock = clock
        self.holder = holder or default_holder()
        self.role = "stopped"  # stopped, standby or leader
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_scan = 0.0
        self._next_due: float | None = None
        self._paused_until: datetime | None = None
        self._slack_ok = False  # unknown at start, so the first success clears a stale problem
        self._next_prune: datetime | None = None

    def __repr__(self) -> str:
        return f"Watcher(channel={self._channel!r}, holder={self.holder!r}, role={self.role!r})"

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
            except Exception:
                # A bug or a lost database must not end watching: log it whole, try again later.
                log.exception("watcher step failed; trying again in %g s", self._poll)
                delay = self._poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), max(delay, 0.01))

    async def step(self) -> float:
        """Hold the lease; if ours, scan when due and deliver the outbox. Seconds to the next."""
        loop = asyncio.get_running_loop()
        if not await self.hold_lease():
            return min(self._poll, self._ttl / 3)
        async with self._keepalive():
            if loop.time() >= self._next_scan:
                self._next_scan = loop.time() + self._poll
                await self.scan()
            await self.deliver()
            await self._prune()
        wait = self._next_scan - loop.time()
        if self._next_due is not None:
            wait = min(wait, self._next_due)
        return max(0.0, min(wait, self._ttl / 3))

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

    # -- scanning -----------------------------------------------------------------------------

    async def scan(self) -> ScanResult:
        """One scan: announce newly stale tasks, record endings, queue reminders."""
        now = self._clock()
        try:
            snapshot = await self._kps.walk_running_tasks(page_size=self._page_size)
        except KPSError as error:
            log.warning("scan of running tasks failed: %s", error, extra={"error": str(error)})
            await self._failed(now, str(error))
            return ScanResult(ok=False, error=str(error))
        announced = await self._announce(snapshot, now)
        if not snapshot.complete:
            # An ended task and a skipped one look the same in a partial list (kps.py), so a
            # partial scan ends nothing.
            why = (
                "the running-task list changed while it was read, on every attempt,"
                " so no task was taken as ended"
            )
            log.warning(
                "scan was incomplete (%d tasks seen, the list kept changing); nothing ends",
                len(snapshot.tasks),
                extra={"seen": len(snapshot.tasks)},
            )
            await self._failed(now, why)
            return ScanResult(ok=False, announced=announced, error=why)
        ended = await self._end(snapshot, now)
        await self._succeeded(now)
        reminded = await self._remind(now)
        return ScanResult(ok=True, announced=announced, ended=ended, reminded=reminded)

    def context(self, now: datetime) -> ViewContext:
        """What the notice builders need to know, at `now`."""
        return ViewContext(
            project_id=self._project_id,
            region=self._region,
            stale_after=self._stale_after,
            now=now,
            renotify_after=self._renotify,
        )

    async def _announce(self, snapshot: Snapshot, now: datetime) -> int:
        stale = stale_tasks(snapshot.tasks, now=now, stale_after=self._stale_after)
        if not stale:
            return 0
        known = await self._store.announced(task.task_id for task in stale)
        fresh = newly_stale(stale, known)
        if not fresh:
            return 0
        tasks = [as_alert(task, now=now) for task in fresh]
        replies = [m.as_payload() for m in build_detail_replies(tasks, self.context(now))]
        notice_id = await self._store.announce(
            channel=self._channel, now=now, tasks=tasks, replies=replies
        )
        if notice_id is None:
            return 0
        log.info(
            "%d newly stale task(s) to announce (notice %d)",
            len(tasks),
            notice_id,
            extra={"tasks": len(tasks), "notice": notice_id},
        )
        return len(tasks)

    async def _end(self, snapshot: Snapshot, now: datetime) -> int:
        listed = {task.task_id for task in snapshot.tasks}
        found = reconcile(await self._store.open_alerts(), listed)
        if not found.gone and not found.back:
            return 0
        looked = found.gone[: self._lookups]
        findings = await self._look_up(looked, now)
        endings = decide_endings(looked, findings, now=now, grace=self._grace)
        # A lookup that failed waits, as a task KPS still calls running does: its grace starts.
        missing = [*endings.missing, *(a.task_id for a in looked if a.task_id not in findings)]
        by_id = {alert.task_id: alert for alert in looked}
        grouped: dict[int, list[Alert]] = defaultdict(list)
        for ending in endings.ended:
            alert = by_id[ending.task_id]
            grouped[alert.notice_id].append(
                replace(
                    alert,
                    finished_at=ending.finished_at,
                    outcome=ending.outcome,
                    error_code=ending.error_code,
                    error_msg=ending.error_msg,
                )
            )
        ctx = self.context(now)
        replies = {
            notice_id: [m.as_payload() for m in build_ending_replies(ended, ctx)]
            for notice_id, ended in grouped.items()
        }
        recorded = await self._store.record_endings(
            endings.ended, now=now, replies=replies, missing=missing, back=found.back
        )
        if recorded and endings.ended:
            log.info(
                "%d stale task(s) ended", len(endings.ended), extra={"tasks": len(endings.ended)}
            )
        return len(endings.ended) if recorded else 0

    async def _look_up(self, gone: Sequence[Alert], now: datetime) -> dict[str, Finding]:
        """What KPS says of each gone task; a failed lookup is left out until its grace ends."""
        gate = asyncio.Semaphore(_LOOKUP_CONCURRENCY)

        async def one(alert: Alert) -> tuple[str, TaskStatus | None, bool]:
            async with gate:
                try:
                    return alert.task_id, await self._kps.get_task_status(alert.task_id), True
                except KPSAPIError as error:
                    if error.status == 404:  # KPS does not know the task: asking again won't help
                        return alert.task_id, None, True
                    log.warning("task status lookup failed: %s", error)
                except KPSError as error:
                    log.warning("task status lookup failed: %s", error)
                except ValueError as error:  # an id KPS cannot be asked about
                    log.warning("task status lookup failed: %s", error)
                    return alert.task_id, None, True
                # A transient failure says nothing of how the task ended: the next scan asks
                # again, and only after the grace period is the outcome reported as unknown.
                since = alert.missing_since
                return alert.task_id, None, since is not None and now - since >= self._grace

        answers = await asyncio.gather(*(one(alert) for alert in gone))
        statuses = {tid: status for tid, status, settled in answers if settled}
        failed = {tid for tid, status in statuses.items() if status and status.phase == "FAILED"}
        reasons = await self._failure_reasons(failed) if failed else {}
        return {
            tid: Finding(tid, status, *reasons.get(tid, (None, None)))
            for tid, status in statuses.items()
        }

    async def _failure_reasons(self, wanted: set[str]) -> dict[str, tuple[str | None, str | None]]:
        """KPS's error code and message for failed tasks, from its failed-tasks list."""
        found: dict[str, tuple[str | None, str | None]] = {}
        offset = 0
        try:
            for _ in range(_FAILED_PAGES):
                page = await self._kps.list_failed_tasks(offset=offset)
                for failed in page.tasks:
                    if failed.task.task_id in wanted:
                        found[failed.task.task_id] = (failed.error_code, failed.error_msg)
                offset += len(page.tasks)
                if not page.tasks or offset >= page.total or len(found) == len(wanted):
                    break
        except KPSError as error:
            log.warning("could not read failed tasks for their errors: %s", error)
        return found

    async def _remind(self, now: datetime) -> int:
        if self._renotify is None:
            return 0
        due = due_reminders(await self._store.reminder_candidates(), now=now, every=self._renotify)
        ctx = self.context(now)
        sent = 0
        for state in due:
            body = build_reminder(state, ctx).as_payload()
            if await self._store.remind(
                state.notice.id, due_before=now - self._renotify, now=now, body=body
            ):
                sent += 1
        return sent

    async def _failed(self, now: datetime, error: str) -> None:
        state = await self._store.count_failure(now=now, error=error)
        if not newly_impaired(state, after=self._impaired_after):
            return
        body = build_impaired(state, self.context(now), poll_interval=self._poll).as_payload()
        if await self._store.mark_impaired(
            channel=self._channel, now=now, body=body, problem=watch_problem(state)
        ):
            log.error(
                "watching is impaired: %d scans failed in a row; last error: %s",
                state.failures,
                error,
                extra={"failures": state.failures, "error": error},
            )

    async def _succeeded(self, now: datetime) -> None:
        before = await self._store.count_success(now=now)
        if not before.impaired:
            return
        body = build_recovered(before, self.context(now)).as_payload()
        if await self._store.mark_recovered(channel=self._channel, now=now, body=body):
            log.info("watching works again after %d failed scans", before.failures)

    async def _prune(self) -> None:
        now = self._clock()
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY
        dropped = await self._store.prune(before=now - _KEEP)
        if dropped:
            log.info("pruned %d old notice(s)", dropped)

    # -- delivering ---------------------------------------------------------------------------

    async def deliver(self) -> int:
        """Send what the outbox holds, oldest first; a thread reply waits for its notice."""
        sent = 0
        self._next_due = None
        for _ in range(_MAX_PASSES):
            progress, stop = await self._deliver_pass()
            sent += progress
            if stop or not progress:
                break
        return sent

    async def _deliver_pass(self) -> tuple[int, bool]:
        now = self._clock()
        if self._paused_until is not None and now < self._paused_until:
            self._note_due(self._paused_until, now)
            return 0, True
        blocked: set[int] = set()  # notices whose earlier thread reply has to go first
        sent = 0
        for item in await self._store.pending():
            if item.kind == REPLY and item.notice_id in blocked:
                continue
            if item.kind != POST and item.notice_ts is None:
                blocked.add(item.notice_id)  # its notice is not posted yet
                continue
            if item.due_at > now:
                self._note_due(item.due_at, now)
                blocked.add(item.notice_id)
                continue
            if not await self._store.claim(item.id, self.holder, now=now, ttl=self._claim_ttl):
                blocked.add(item.notice_id)
                continue
            outcome = await self._send(item)
            if outcome is _SENT:
                sent += 1
            elif outcome is _STOP:
                return sent, True
            else:
                blocked.add(item.notice_id)
        return sent, False

    def _note_due(self, due: datetime, now: datetime) -> None:
        wait = max((due - now).total_seconds(), 0.0)
        self._next_due = wait if self._next_due is None else min(self._next_due, wait)

    async def _send(self, item: OutboxItem) -> object:
        payload = await self._payload(item)
        if payload is None:
            await self._store.give_up(item, error="the notice is gone from the store")
            return _SKIP
        try:
            if item.kind == UPDATE:
                response = await self._slack.chat_update(
                    channel=item.channel, ts=item.notice_ts or "", **payload
                )
            else:
                response = await self._slack.chat_postMessage(
                    channel=item.channel,
                    thread_ts=item.notice_ts if item.kind == REPLY else None,
                    unfurl_links=False,
                    unfurl_media=False,
                    **payload,
                )
        except SlackApiError as error:
            return await self._refused(item, error)
        except (aiohttp.ClientError, TimeoutError) as error:
            await self._retry_later(item, f"{type(error).__name__} talking to Slack", None)
            return _STOP
        ts, channel = response.get("ts"), response.get("channel")
        await self._store.mark_sent(
            item,
            now=self._clock(),
            ts=ts if isinstance(ts, str) else None,
            channel=channel if isinstance(channel, str) else None,
        )
        if not self._slack_ok:
            self._slack_ok = True
            if await self._store.clear_problem(_problem_key(self._channel)):
                log.info("Slack accepts stale notices for %s again", self._channel)
        return _SENT

    async def _payload(self, item: OutboxItem) -> dict[str, Any] | None:
        if item.body is not None:
            return item.body
        state = await self._store.notice_state(item.notice_id)
        if state is None or not state.alerts:
            return None
        return build_stale_notice(state, self.context(self._clock())).as_payload()

    async def _refused(self, item: OutboxItem, error: SlackApiError) -> object:
        response = error.response
        code = str(response.get("error") or "unknown_error")
        status = int(response.status_code)
        if status == 429 or code == "ratelimited":
            # Slack warns that posting on while rate-limited can get an app disabled: pause all.
            wait = _retry_after(response.headers) or 1.0
            self._paused_until = self._clock() + timedelta(seconds=wait)
            await self._retry_later(item, "ratelimited", wait)
            return _STOP
        if status >= 500:
            await self._retry_later(item, f"HTTP {status} {code}", None)
            return _STOP
        if code in REFUSALS:
            await self._channel_refused(item, code)
            return _STOP
        # Refused for this message alone (invalid_blocks, message_not_found, …): retrying the
        # same call cannot help, and other messages may still go through.
        log.error(
            "Slack refused a stale-notice %s for good: %s (notice %d)",
            item.kind,
            code,
            item.notice_id,
            extra={"error": code, "kind": item.kind, "notice": item.notice_id, "row": item.id},
        )
        await self._store.give_up(item, error=code)
        return _SKIP

    async def _channel_refused(self, item: OutboxItem, code: str) -> None:
        now = self._clock()
        self._slack_ok = False
        hint = _HINTS.get(code, "see the Slack API docs for this error")
        text = f"Stale notices cannot be posted to {self._channel}: Slack says {code} ({hint})"
        if await self._store.set_problem(_problem_key(self._channel), text, now=now):
            log.error(
                "Slack refuses stale notices for %s: %s (%s); they wait until this is fixed",
                self._channel,
                code,
                hint,
                extra={"channel": self._channel, "error": code, "hint": hint},
            )
        self._paused_until = now + timedelta(seconds=self._refused_retry)
        await self._store.defer(
            item, until=now + timedelta(seconds=self._refused_retry), error=code
        )

    async def _retry_later(self, item: OutboxItem, why: str, wait: float | None) -> None:
        delay = wait if wait is not None else min(2.0**item.attempts, _MAX_BACKOFF)
        log.warning(
            "Slack %s failed (%s); retrying in %.1f s",
            item.kind,
            why,
            delay,
            extra={"why": why, "kind": item.kind, "row": item.id, "in_s": round(delay, 1)},
        )
        await self._store.defer(item, until=self._clock() + timedelta(seconds=delay), error=why)


def _problem_key(channel: str) -> str:
    return f"slack:{channel}"


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    for name, value in dict(headers).items():
        if str(name).lower() == "retry-after":
            try:
                seconds = float(value if not isinstance(value, list) else value[0])
            except (TypeError, ValueError):
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
