"""One scan of the running tasks: what `bot.stale` decides, written to the store with its notices.

A scan walks the running tasks, announces newly stale ones, records endings, queues reminders
and keeps the failure streak that leads to the impaired notice. It only writes the store; the
Slack calls it needs wait in the outbox (`bot.outbox`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from bot.alerts import Alert, NoticeState
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
from bot.store import Store
from bot.tasks import BadRecord, Task, TaskStatus

log = logging.getLogger(__name__)

IMPAIRED_AFTER: Final = 3  # failed scans in a row before the channel hears about it
_LOOKUP_CONCURRENCY: Final = 4  # KPS is served by KMS, limited to ~20 requests/s per user
_FAILED_PAGES: Final = 20
_PRUNE_EVERY: Final = timedelta(hours=1)
_KEEP: Final = timedelta(days=30)  # the README: "Ended notices are pruned after 30 days"
# Unusable records already logged, so a record that stays bad is told once, not every scan. The
# bound keeps a KPS that sends a new bad record each scan from growing the set without end; a
# record pushed out is simply told again if it comes back.
_REMEMBERED_REJECTS: Final = 10_000
_TOLD_PER_SCAN: Final = 20  # new unusable records logged one by one; the rest in one line
# KPS task ids are UUIDs; one this long is not an id the status path (URL line limits) or a
# notice could carry.
_MAX_ID_LENGTH: Final = 255


@dataclass(frozen=True, slots=True)
class Notices:
    """Where stale notices go and what they say of the project."""

    channel: str
    project_id: str
    region: str | None
    stale_after: timedelta
    renotify_after: timedelta | None = None  # None: no reminders

    def context(self, now: datetime) -> ViewContext:
        """What the notice builders need to know, at `now`."""
        return ViewContext(
            project_id=self.project_id,
            region=self.region,
            stale_after=self.stale_after,
            now=now,
            renotify_after=self.renotify_after,
        )


@dataclass(frozen=True, slots=True)
class ScanLimits:
    """How much one scan asks of KPS, and how long it waits before it calls something over."""

    page_size: int = MAX_LIMIT
    lookups_per_scan: int = 100  # status lookups of gone tasks; the rest wait for the next scan
    running_grace: timedelta | None = None  # before an unknown ending is told; None: 3 scans
    impaired_after: int = IMPAIRED_AFTER


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one scan did."""

    ok: bool  # a complete, successful scan
    announced: int = 0
    ended: int = 0
    reminded: int = 0
    rejected: int = 0  # records KPS listed that the scan could not use (left out, not ended)
    error: str | None = None


class Scanner:
    """Runs scans against KPS and records what they find; the watcher calls it on its lease."""

    def __init__(
        self,
        *,
        store: Store,
        kps: KPSClient,
        notices: Notices,
        limits: ScanLimits,
        poll_interval: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._kps = kps
        self._notices = notices
        self._limits = limits
        self._poll = poll_interval
        self._grace = limits.running_grace or timedelta(seconds=3 * poll_interval)
        self._clock = clock
        self._next_prune: datetime | None = None
        self._told: dict[tuple[str | None, str], None] = {}  # insertion-ordered, oldest first

    async def scan(self) -> ScanResult:
        """One scan: announce newly stale tasks, record endings, queue reminders.

        A record KPS sent that cannot be used is left out, logged once and counted; it never
        stops the scan, and a task whose record turned bad is not taken as ended.
        """
        now = self._clock()
        try:
            snapshot = await self._kps.walk_running_tasks(page_size=self._limits.page_size)
        except KPSError as error:
            log.warning("scan of running tasks failed: %s", error, extra={"error": str(error)})
            await self.failed(now, str(error))
            return ScanResult(ok=False, error=str(error))
        tasks, rejected = usable(snapshot)
        self._tell_rejected(rejected)
        # A recovering scan queues "works again" before its own notices, so the channel reads it
        # first; any other counts its success only once all of it succeeded.
        recovering = snapshot.complete and (await self._store.watch_state()).impaired
        if recovering:
            await self._succeeded(now)
        announced = await self._announce(tasks, now)
        if not snapshot.complete:
            # An ended task and a skipped one look the same in a partial list (kps.py), so a
            # partial scan ends nothing.
            why = _incomplete(snapshot)
            log.warning(
                "scan was incomplete (%d tasks seen); nothing ends: %s",
                len(tasks),
                why,
                extra={"seen": len(tasks), "rejected": len(rejected)},
            )
            await self.failed(now, why)
            return ScanResult(ok=False, announced=announced, rejected=len(rejected), error=why)
        listed = {task.task_id for task in tasks}
        # A record KPS still lists is a running task, however bad its fields: its notice must
        # not be told it ended because the record stopped parsing.
        listed.update(record.task_id for record in rejected if record.task_id is not None)
        ended = await self._end(listed, now)
        if not recovering:
            await self._succeeded(now)
        reminded = await self._remind(now)
        return ScanResult(
            ok=True,
            announced=announced,
            ended=ended,
            reminded=reminded,
            rejected=len(rejected),
        )

    def render_notice(self, state: NoticeState) -> dict[str, Any]:
        """A stale notice as it looks now, ready for chat.postMessage or chat.update."""
        return build_stale_notice(state, self._notices.context(self._clock())).as_payload()

    async def failed(self, now: datetime, error: str) -> None:
        """Count a failed scan; the one that reaches the limit queues the impaired notice."""
        state = await self._store.count_failure(now=now, error=error)
        if not newly_impaired(state, after=self._limits.impaired_after):
            return
        ctx = self._notices.context(now)
        body = build_impaired(state, ctx, poll_interval=self._poll).as_payload()
        if await self._store.mark_impaired(
            channel=self._notices.channel, now=now, body=body, problem=watch_problem(state)
        ):
            log.error(
                "watching is impaired: %d scans failed in a row; last error: %s",
                state.failures,
                error,
                extra={"failures": state.failures, "error": error},
            )

    async def prune(self) -> None:
        """Drop notices that ended long ago, at most once an hour."""
        now = self._clock()
        if self._next_prune is not None and now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY
        dropped = await self._store.prune(before=now - _KEEP)
        if dropped:
            log.info("pruned %d old notice(s)", dropped)

    def _tell_rejected(self, rejected: Sequence[BadRecord]) -> None:
        """Log each unusable record the first time it is seen; count them all."""
        new: list[BadRecord] = []
        for record in rejected:
            key = (record.task_id, record.reason)
            if key in self._told:
                continue
            self._told[key] = None
            new.append(record)
        while len(self._told) > _REMEMBERED_REJECTS:
            del self._told[next(iter(self._told))]
        for record in new[:_TOLD_PER_SCAN]:
            log.warning(
                "left out a task record KPS sent: %s (task %s); told once per record",
                _printable(record.reason),
                shown_id(record.task_id),
                extra={"task_id": shown_id(record.task_id), "rejected": len(rejected)},
            )
        if len(new) > _TOLD_PER_SCAN:
            log.warning(
                "left out %d more new unusable task records, not listed one by one",
                len(new) - _TOLD_PER_SCAN,
                extra={"rejected": len(rejected)},
            )

    async def _announce(self, running: Sequence[Task], now: datetime) -> int:
        stale = stale_tasks(running, now=now, stale_after=self._notices.stale_after)
        if not stale:
            return 0
        known = await self._store.announced(task.task_id for task in stale)
        fresh = newly_stale(stale, known)
        if not fresh:
            return 0
        tasks = [as_alert(task, now=now) for task in fresh]
        ctx = self._notices.context(now)
        replies = [m.as_payload() for m in build_detail_replies(tasks, ctx)]
        notice_id = await self._store.announce(
            channel=self._notices.channel, now=now, tasks=tasks, replies=replies
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

    async def _end(self, listed: set[str], now: datetime) -> int:
        found = reconcile(await self._store.open_alerts(), listed)
        if not found.gone and not found.back:
            return 0
        looked = found.gone[: self._limits.lookups_per_scan]
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
        ctx = self._notices.context(now)
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
                except Exception:
                    # Anything else (a bug, an id some layer chokes on) is this task's alone:
                    # the other lookups and the scan go on, and this one is asked again.
                    log.warning(
                        "task status lookup failed; asking again next scan",
                        exc_info=True,
                        extra={"task_id": shown_id(alert.task_id)},
                    )
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
        every = self._notices.renotify_after
        if every is None:
            return 0
        due = due_reminders(await self._store.reminder_candidates(), now=now, every=every)
        ctx = self._notices.context(now)
        sent = 0
        for state in due:
            body = build_reminder(state, ctx).as_payload()
            notice_id = state.notice.id
            if await self._store.remind(notice_id, due_before=now - every, now=now, body=body):
                sent += 1
        return sent

    async def _succeeded(self, now: datetime) -> None:
        before = await self._store.count_success(now=now)
        if not before.impaired:
            return
        body = build_recovered(before, self._notices.context(now)).as_payload()
        if await self._store.mark_recovered(channel=self._notices.channel, now=now, body=body):
            log.info("watching works again after %d failed scans", before.failures)


def usable(snapshot: Snapshot) -> tuple[list[Task], list[BadRecord]]:
    """The tasks a scan can track, and every record it cannot (the client's and its own)."""
    tasks: list[Task] = []
    rejected = list(snapshot.rejected)
    for task in snapshot.tasks:
        why = untrackable(task.task_id)
        if why is None:
            tasks.append(task)
        else:
            rejected.append(BadRecord(task.task_id, why))
    return tasks, rejected


def untrackable(task_id: str) -> str | None:
    """Why a task id cannot be kept as a key and asked about as sent; None when it can.

    The id is the key of "announced once" and goes back to KPS in a path: a NUL (PostgreSQL
    text refuses it) or a lone surrogate (no encoding holds it) would fail or change on the way.
    """
    if len(task_id) > _MAX_ID_LENGTH:
        return f"'task_id' is {len(task_id)} characters long, not a KPS task id"
    if "\x00" in task_id:
        return "'task_id' holds a NUL character"
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:
        return "'task_id' is not valid Unicode (it holds a lone surrogate)"
    return None


def shown_id(task_id: str | None) -> str:
    """A task id as a log line may show it: control characters escaped, clipped."""
    if task_id is None:
        return "without a usable id"
    return _printable(task_id[:80]) + ("…" if len(task_id) > 80 else "")


def _printable(text: str) -> str:
    # A newline or a bidi override from KPS must not forge or reorder a log line.
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _incomplete(snapshot: Snapshot) -> str:
    """Why a scan's list was not complete, in words for the log and the impaired notice."""
    if snapshot.cut_short is not None:
        return (
            f"the running-task list was not read to its end (the walk stopped at its"
            f" {snapshot.cut_short.value} after {len(snapshot.tasks)} of {snapshot.total} tasks),"
            " so no task was taken as ended"
        )
    return (
        "the running-task list changed while it was read, on every attempt,"
        " so no task was taken as ended"
    )
