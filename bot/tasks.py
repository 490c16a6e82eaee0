"""KPS task data: the typed values the client returns and the words shown for them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

# The running-tasks page lists FAILED_RESET/FAILED_REPLACE/FAILED_UNBIND, its own example shows
# RUNNING_RESET, Terraform documents a bare RUNNING, and the task-status API uses
# {READY|RUNNING|FAILED|SUCCESS}_{RESET|REPLACE|UNBIND|BIND}. So the value stays an open string and
# only the known pattern gets words (research/kps-api.md §2).
_PATTERN = re.compile(r"^(READY|RUNNING|FAILED|SUCCESS)_(RESET|REPLACE|UNBIND|BIND)$")
_ACTIONS = {
    "RESET": "Reset key pair",
    "REPLACE": "Replace key pair",
    "UNBIND": "Unbind key pair",
    "BIND": "Bind key pair",
}
_PHASES = {"READY": "queued", "RUNNING": "running", "FAILED": "failed", "SUCCESS": "succeeded"}


@dataclass(frozen=True, slots=True)
class Task:
    """One running key-pair task as KPS reports it."""

    task_id: str
    operate_type: str
    started_at: datetime | None  # aware UTC; None when KPS sent no task_time
    server_name: str
    server_id: str
    keypair_name: str


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
        match = _PATTERN.match(self.task_status)
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
