"""KPS task data: the typed values the client returns, the words shown for them, and staleness."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

# The running-tasks page lists FAILED_RESET/FAILED_REPLACE/FAILED_UNBIND, its own example shows
# RUNNING_RESET, Terraform documents a bare RUNNING, and the task-status API uses
# {READY|RUNNING|FAILED|SUCCESS}_{RESET|REPLACE|UNBIND|BIND}. So the value stays an open string and
# only the known pattern gets words (../shared/research/kps-api.md §2).
_PATTERN = re.compile(r"^(READY|RUNNING|FAILED|SUCCESS)_(RESET|REPLACE|UNBIND|BIND)$")
_ACTIONS = {
    "RESET": "Reset key pair",
    "REPLACE": "Replace key pair",
    "UNBIND": "Unbind key pair",
    "BIND": "Bind key pair",
}
_PHASES = {"READY": "queued", "RUNNING": "running", "FAILED": "failed", "SUCCESS": "succeeded"}
# Clock skew between KPS and the bot: a start this little in the future counts as "just started".
_SKEW: Final = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Task:
    """One running key-pair task as KPS reports it."""

    task_id: str
    operate_type: str
    started_at: datetime | None  # aware UTC; None when KPS sent no task_time
    server_name: str
    server_id: str
    keypair_name: str

    @property
    def queued(self) -> bool:
        """True for a READY_x task: KPS lists it under running-tasks, but it waits to start."""
        return phase(self.operate_type) == "READY"


@dataclass(frozen=True, slots=True)
class FailedTask:
    """A task KPS lists under failed-tasks, with the reason it gives."""

    task: Task
    error_code: str | None
    error_msg: str | None


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A task record KPS sent that the bot cannot use, and why; the rest of its page is kept.

    `reason` names the field and what is wrong with it; values in it come from KPS and must be
    escaped like any KPS text before they are shown.
    """

    task_id: str | None  # None when the id itself is what could not be read
    reason: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of running tasks: the tasks at `offset` and the total KPS reports."""

    total: int
    offset: int
    limit: int
    tasks: tuple[Task, ...]
    rejected: tuple[BadRecord, ...] = ()  # records on this page left out as unusable


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What `GET /v3/{project_id}/tasks/{task_id}` says of one task."""

    task_id: str
    server_id: str
    task_status: str

    @property
    def phase(self) -> str | None:
        """READY, RUNNING, FAILED or SUCCESS; None when the value is not in the known pattern."""
        return phase(self.task_status)


def phase(value: str) -> str | None:
    """READY, RUNNING, FAILED or SUCCESS from a status or operate_type; None when unknown."""
    match = _PATTERN.match(value)
    return match.group(1) if match else None


def operation_label(operate_type: str) -> str:
    """The operation in words ("Reset key pair"); the raw value when the pattern is unknown."""
    match = _PATTERN.match(operate_type)
    if match:
        return _ACTIONS[match.group(2)]
    if operate_type == "RUNNING":
        return "Key pair operation"
    return operate_type


def status_label(task_status: str) -> str:
    """A task status in words ("Reset key pair succeeded"); the raw value when unknown."""
    match = _PATTERN.match(task_status)
    if not match:
        return task_status
    return f"{_ACTIONS[match.group(2)]} {_PHASES[match.group(1)]}"


def as_utc(moment: datetime | None) -> datetime | None:
    """The moment in UTC (naive times are taken as UTC, as KPS sends them); None if unusable."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # KPS times are UTC; a naive one was parsed without its zone
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def elapsed(started_at: datetime | None, now: datetime) -> timedelta | None:
    """How long since `started_at`, never negative; None without a start or past the skew."""
    start, end = as_utc(started_at), as_utc(now)
    if start is None or end is None:
        return None
    try:
        age = end - start
    except OverflowError:
        return None
    if age < -_SKEW:
        return None
    return max(age, timedelta(0))


def is_stale(task: Task, *, now: datetime, stale_after: timedelta) -> bool:
    """True when a task has run `stale_after` or longer.

    A task without a usable start is not stale, and neither is a queued (READY_x) one: it has
    not started, so its wait says nothing of a stuck key-pair operation.
    """
    # The one rule the watcher, the pages and the Home tab apply, so they never disagree.
    if task.queued:
        return False
    age = elapsed(task.started_at, now)
    return age is not None and age >= stale_after
