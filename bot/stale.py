"""Pure decisions for the watcher: newly stale, ended and how, due a reminder, impaired (no I/O)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from bot.alerts import Alert, Ending, NoticeState, WatchState, task_order
from bot.tasks import Task, TaskStatus, is_stale

# KPS counts a READY_x task as queued and lists it under running-tasks; both mean "not ended".
_NOT_ENDED: Final = frozenset({"RUNNING", "READY"})


def stale_tasks(tasks: Iterable[Task], *, now: datetime, stale_after: timedelta) -> list[Task]:
    """Tasks running at least `stale_after`, oldest first; a task without a start time is not."""
    found = [task for task in tasks if is_stale(task, now=now, stale_after=stale_after)]
    return sorted(found, key=task_order)


def newly_stale(stale: Sequence[Task], announced: Collection[str]) -> list[Task]:
    """The stale tasks no notice has named yet, in the order given, each once."""
    seen: set[str] = set()
    fresh = []
    for task in stale:
        if task.task_id not in announced and task.task_id not in seen:
            seen.add(task.task_id)
            fresh.append(task)
    return fresh


def as_alert(task: Task, *, now: datetime) -> Alert:
    """What the store keeps of a task when it is announced."""
    return Alert(
        task_id=task.task_id,
        notice_id=0,
        server_name=task.server_name,
        server_id=task.server_id,
        keypair_name=task.keypair_name,
        operate_type=task.operate_type,
        started_at=task.started_at,
        announced_at=now,
    )


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """Open alerts against one complete scan: which are gone, which came back."""

    gone: tuple[Alert, ...]  # not listed: look up how they ended
    back: tuple[str, ...]  # listed again after a scan had missed them


def reconcile(open_alerts: Iterable[Alert], listed: Collection[str]) -> Reconciliation:
    """Compare announced, unfinished tasks with the ids a COMPLETE scan listed."""
    gone: list[Alert] = []
    back: list[str] = []
    for alert in open_alerts:
        if alert.task_id in listed:
            if alert.missing_since is not None:
                back.append(alert.task_id)
        else:
            gone.append(alert)
    return Reconciliation(tuple(sorted(gone, key=task_order)), tuple(back))


@dataclass(frozen=True, slots=True)
class Finding:
    """What KPS said of a task that left the running list; `status` None: it could not say."""

    task_id: str
    status: TaskStatus | None
    error_code: str | None = None
    error_msg: str | None = None


@dataclass(frozen=True, slots=True)
class Endings:
    """What to record after looking up the gone tasks."""

    ended: tuple[Ending, ...]
    missing: tuple[str, ...]  # KPS still calls them running: start (or keep) their grace period


def decide_endings(
    gone: Sequence[Alert],
    findings: Mapping[str, Finding],
    *,
    now: datetime,
    grace: timedelta,
) -> Endings:
    """How each gone task ended; "unknown" (outcome None) rather than a guess.

    A task missing from a complete list while its own status still reads RUNNING_x or READY_x
    is given `grace` (the two KPS views may briefly disagree); after that it is reported as no
    longer running. A task that was not looked up this scan (`findings` lacks it) waits.
    """
    ended: list[Ending] = []
    missing: list[str] = []
    for alert in gone:
        finding = findings.get(alert.task_id)
        if finding is None:
            continue
        status = finding.status
        if status is not None and status.phase in _NOT_ENDED:
            since = alert.missing_since
            if since is None or now - since < grace:
                missing.append(alert.task_id)
                continue
            ended.append(Ending(alert.task_id, now, None))
            continue
        if status is None:
            ended.append(Ending(alert.task_id, now, None))
            continue
        failed = status.phase == "FAILED"
        ended.append(
            Ending(
                alert.task_id,
                now,
                status.task_status,
                error_code=finding.error_code if failed else None,
                error_msg=finding.error_msg if failed else None,
            )
        )
    return Endings(tuple(ended), tuple(missing))


def due_reminders(
    candidates: Iterable[NoticeState], *, now: datetime, every: timedelta | None
) -> list[NoticeState]:
    """Posted notices with running tasks, not acknowledged, not snoozed, quiet for `every`."""
    if every is None:
        return []
    due = []
    for state in candidates:
        notice = state.notice
        if notice.ts is None or notice.acked_by is not None:
            continue
        if notice.snoozed_until is not None and notice.snoozed_until > now:
            continue
        if not any(alert.running for alert in state.alerts):
            continue
        last = notice.reminded_at or notice.posted_at or notice.created_at
        if now - last >= every:
            due.append(state)
    return due


def newly_impaired(state: WatchState, *, after: int) -> bool:
    """True when the failure streak just reached `after` scans and no notice went out yet."""
    return not state.impaired and state.failures >= after


def lease_ttl(poll_interval: float) -> float:
    """How long a lease lasts: three scans, never under 5 s.

    The holder renews it every third of that even during a long scan, and every decision is
    guarded in the store, so a short lease only makes take-over quicker, never duplicates.
    """
    return max(3 * poll_interval, 5.0)
