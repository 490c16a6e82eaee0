"""Which tasks a page shows: KPS paging for the plain list, a filtered walk for a query."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from bot.alerts import task_order
from bot.blocks import PageRef
from bot.kps import KPSClient
from bot.tasks import Task, is_stale


@dataclass(frozen=True, slots=True)
class Listing:
    """The tasks on one page, the total they come from, and the page actually shown."""

    tasks: tuple[Task, ...]
    total: int
    ref: PageRef
    rejected: int = 0  # task records KPS sent for this page that could not be read


async def fetch_page(kps: KPSClient, ref: PageRef) -> Listing:
    """The page `ref` asks for; when the list shrank under the user, its last page instead."""
    if ref.query:
        snapshot = await kps.walk_running_tasks()
        found = filter_tasks(snapshot.tasks, ref.query)
        shown = clamp(ref, len(found))
        end = shown.offset + shown.page_size
        # An unreadable record has no name to filter by: it is counted as left out of any page.
        rejected = len(snapshot.rejected)
        return Listing(tuple(found[shown.offset : end]), len(found), shown, rejected)
    page = await kps.list_running_tasks(ref.page_size, ref.offset)
    shown = clamp(ref, page.total)
    if shown != ref:
        page = await kps.list_running_tasks(shown.page_size, shown.offset)
    return Listing(page.tasks[: shown.page_size], page.total, shown, len(page.rejected))


def clamp(ref: PageRef, total: int) -> PageRef:
    """`ref` moved back to the last page that exists for `total` tasks."""
    if ref.offset < total or ref.offset == 0:
        return ref
    last = max(0, (total - 1) // ref.page_size * ref.page_size)
    return replace(ref, offset=last)


def filter_tasks(tasks: Iterable[Task], query: str) -> list[Task]:
    """Tasks whose server or key pair name contains every word of `query`, ignoring case."""
    words = query.casefold().split()
    return [
        task
        for task in tasks
        if all(w in task.server_name.casefold() or w in task.keypair_name.casefold() for w in words)
    ]


@dataclass(frozen=True, slots=True)
class Census:
    """How many tasks run, how many of them are stale, how many wait queued, and the oldest."""

    running: int  # started and not ended; queued tasks are counted apart
    stale: int
    oldest: Task | None  # the oldest running one; a queued task has not started
    queued: int = 0


def census(tasks: Sequence[Task], *, now: datetime, stale_after: timedelta) -> Census:
    """Counts for the Home tab, from one walk."""
    running = [t for t in tasks if not t.queued]
    stale = sum(1 for t in running if is_stale(t, now=now, stale_after=stale_after))
    dated = [t for t in running if t.started_at is not None]
    oldest = min(dated, key=task_order, default=None)
    return Census(
        running=len(running), stale=stale, oldest=oldest, queued=len(tasks) - len(running)
    )
