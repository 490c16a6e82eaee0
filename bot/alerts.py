"""Alert state as plain values: the stale tasks announced, their notices, endings, the watch streak.

The store persists these, the decisions in `bot.stale` and the renderers in `bot.notices` read
them; this module imports no database or HTTP library so the pure modules stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bot.tasks import Task

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Alert:
    """One stale task as it was announced, and how it ended once it did."""

    task_id: str
    notice_id: int
    server_name: str
    server_id: str
    keypair_name: str
    operate_type: str
    started_at: datetime | None
    announced_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None
    error_code: str | None = None
    error_msg: str | None = None
    missing_since: datetime | None = None

    @property
    def running(self) -> bool:
        """True until a complete scan found the task gone and its ending was recorded."""
        return self.finished_at is None


@dataclass(frozen=True, slots=True)
class Notice:
    """One channel message: a stale-task notice, or an impaired/recovered notice."""

    id: int
    kind: str
    channel: str
    ts: str | None
    created_at: datetime
    posted_at: datetime | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None
    snoozed_by: str | None = None
    snoozed_until: datetime | None = None
    reminded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class NoticeState:
    """A notice with every task it announced."""

    notice: Notice
    alerts: tuple[Alert, ...]


@dataclass(frozen=True, slots=True)
class Ending:
    """How a task ended, as the watcher learned it from KPS (`outcome` None: unknown)."""

    task_id: str
    finished_at: datetime
    outcome: str | None
    error_code: str | None = None
    error_msg: str | None = None


@dataclass(frozen=True, slots=True)
class WatchState:
    """The watcher's failure streak, shared by every replica."""

    failures: int = 0
    failing_since: datetime | None = None
    last_error: str | None = None
    impaired: bool = False
    last_ok_at: datetime | None = None


def task_order(task: Task | Alert) -> tuple[bool, datetime, str]:
    """Oldest first, tasks without a start last, the id breaking ties: one order everywhere."""
    started = task.started_at
    if started is not None and started.tzinfo is None:  # KPS times are UTC
        started = started.replace(tzinfo=UTC)
    return (started is None, started or _EPOCH, task.task_id)
