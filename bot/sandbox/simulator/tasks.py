"""The task model: tasks, a list that notices every change, sorted views, seed data."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Self, SupportsIndex

_RUNNING_PREFIXES: Final = ("RUNNING", "READY")
_LISTING_FIELDS: Final = frozenset({"task_id", "status", "task_time_ms"})


class Revision:
    """Counters that one task list bumps on every change to its members or their listing fields.

    Each list has its own, so editing one simulator's tasks never makes another rebuild its views.
    """

    __slots__ = ("listing", "members", "order")

    def __init__(self) -> None:
        self.listing = 0  # anything a listing shows: membership, ids, task_time, status
        self.order = 0  # the listing order: membership, ids, task_time
        self.members = 0  # which tasks exist and under which ids

    def field_changed(self, name: str) -> None:
        """Count a change to the listing field `name` of one of the list's tasks."""
        self.listing += 1
        if name != "status":
            self.order += 1
            if name == "task_id":
                self.members += 1

    def members_changed(self) -> None:
        """Count a change to which tasks the list holds."""
        self.listing += 1
        self.order += 1
        self.members += 1


class _Watched:
    # A slot outside the dataclass fields, so asdict() and fields() never see it: the revisions
    # of the lists holding the task (usually one; a task shared between lists tells each).
    __slots__ = ("_revisions",)


@dataclass(slots=True)
class SimTask(_Watched):
    """One key-pair task as the simulator holds it; mutable, tests edit it freely."""

    task_id: str
    operate_type: str
    task_time_ms: int | None
    server_name: str
    server_id: str
    keypair_name: str
    status: str = ""  # e.g. RUNNING_RESET; SUCCESS_RESET/FAILED_RESET when finished
    error_code: str | None = None
    error_msg: str | None = None
    # Listing fields sent as given instead of the task's own: a wrong type, a null, a time in
    # seconds. The task keeps its own values for ordering, lookups and the admin API, so a
    # hostile record can be served without breaking the simulator itself.
    raw: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.status:
            self.status = self.operate_type

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _LISTING_FIELDS:
            for revision in getattr(self, "_revisions", ()):
                revision.field_changed(name)

    @property
    def running(self) -> bool:
        """True while KPS lists it under running-tasks (READY counts: it is queued to run)."""
        return self.status.startswith(_RUNNING_PREFIXES)

    @property
    def failed(self) -> bool:
        """True when KPS lists it under failed-tasks."""
        return self.status.startswith("FAILED")

    def watch(self, revision: Revision) -> None:
        """Report later changes of a listing field to `revision` too."""
        known: tuple[Revision, ...] = getattr(self, "_revisions", ())
        if not any(r is revision for r in known):
            object.__setattr__(self, "_revisions", (*known, revision))


@dataclass(frozen=True, slots=True)
class TaskView:
    """The tasks in listing order, and the running and failed ones among them."""

    listing: int  # the Revision counters it was built at
    order: int
    members: int
    ordered: list[SimTask]
    running: list[SimTask]
    failed: list[SimTask]


def _order(task: SimTask) -> tuple[int, str]:
    # Oldest first, the task id breaking ties, so paging is stable between requests.
    return (task.task_time_ms if task.task_time_ms is not None else -1, task.task_id)


class TaskList(list[SimTask]):
    """A list of tasks that notices every change, to itself or to a task in it.

    Tests edit a simulator's tasks in place; the list keeps sorted views for 100,000-task pages
    and an id index, and rebuilds each only when its own revision has moved.
    """

    def __init__(self, tasks: Iterable[SimTask] = ()) -> None:
        super().__init__(tasks)
        self.revision = Revision()
        self._view: TaskView | None = None
        self._index: tuple[int, dict[str, SimTask]] | None = None  # members revision, by id
        for task in self:
            task.watch(self.revision)

    def _changed(self, added: Iterable[SimTask] = ()) -> None:
        for task in added:
            task.watch(self.revision)
        self.revision.members_changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        values = list(value) if isinstance(index, slice) else [value]
        super().__setitem__(index, values if isinstance(index, slice) else value)
        self._changed(values)

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, values: Iterable[SimTask]) -> Self:  # type: ignore[override,misc]
        added = list(values)
        result = super().__iadd__(added)
        self._changed(added)
        return result

    def __imul__(self, times: SupportsIndex) -> Self:
        result = super().__imul__(times)
        self._changed()
        return result

    def append(self, task: SimTask) -> None:
        super().append(task)
        self._changed([task])

    def extend(self, tasks: Iterable[SimTask]) -> None:
        added = list(tasks)
        super().extend(added)
        self._changed(added)

    def insert(self, index: SupportsIndex, task: SimTask) -> None:
        super().insert(index, task)
        self._changed([task])

    def pop(self, index: SupportsIndex = -1) -> SimTask:
        task = super().pop(index)
        self._changed()
        return task

    def remove(self, task: SimTask) -> None:
        super().remove(task)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()

    def view(self) -> TaskView:
        """Every task in listing order, and the running and failed ones, as of now."""
        view = self._view
        revision = self.revision
        listing, order, members = revision.listing, revision.order, revision.members
        if view is not None and view.listing == listing:
            return view
        if view is not None and view.order == order:
            ordered = view.ordered  # only statuses changed
        elif view is not None and view.members == members:
            # Same tasks, some start time changed: the old order is nearly right, and timsort
            # re-sorts a nearly sorted list in about linear time.
            ordered = sorted(view.ordered, key=_order)
        else:
            ordered = sorted(self, key=_order)
        view = TaskView(
            listing=listing,
            order=order,
            members=members,
            ordered=ordered,
            running=[task for task in ordered if task.status.startswith(_RUNNING_PREFIXES)],
            failed=[task for task in ordered if task.status.startswith("FAILED")],
        )
        self._view = view
        return view

    def find(self, task_id: str) -> SimTask | None:
        """The task with this id, running or not."""
        members = self.revision.members
        if self._index is None or self._index[0] != members:
            self._index = (members, {task.task_id: task for task in self})
        return self._index[1].get(task_id)


# ---------------------------------------------------------------------------------------------
# Realistic seed data


_SERVER_TEMPLATES = (
    "web-prod-{n:02d}",
    "db-replica-{zone}-{m}",
    "bastion-{m:02d}",
    "k8s-node-{hex}",
    "api-gw-{colour}-{m}",
    "ci-runner-{n:02d}",
    "redis-cache-{m}",
    "batch-worker-{hex}",
)
_ZONES = ("eu", "ap", "cn", "la", "af")
_KEYPAIRS = (
    "KeyPair-ops-2024",
    "KeyPair-ops-2025",
    "kp-deploy-ci",
    "team-sre-ed25519",
    "team-data-ed25519",
    "kp-bastion-rsa4096",
    "kp-k8s-nodes",
    "KeyPair-legacy-2019",
    "kp-dr-drill",
    "KeyPair-xt",
)
# Resets dominate in practice; replace and unbind are rarer.
_OPERATIONS = ("RUNNING_RESET",) * 6 + ("RUNNING_REPLACE",) * 3 + ("RUNNING_UNBIND",)
_STALE_AFTER = 30 * 60


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def seed_tasks(
    n: int,
    *,
    now: float | None = None,
    rng: random.Random | None = None,
    stale_fraction: float = 0.2,
) -> list[SimTask]:
    """`n` realistic running tasks over the last hours, about `stale_fraction` older than 30 min.

    The same `rng` state and `now` give the same tasks.
    """
    rng = rng if rng is not None else random.Random()
    now = time.time() if now is None else now
    tasks: list[SimTask] = []
    for _ in range(n):
        if rng.random() < stale_fraction:
            age = rng.uniform(_STALE_AFTER + 60, 6 * 3600)
        else:
            age = rng.uniform(5, _STALE_AFTER - 60)
        server_name = rng.choice(_SERVER_TEMPLATES).format(
            n=rng.randint(1, 40),
            m=rng.randint(1, 4),
            zone=rng.choice(_ZONES),
            hex=f"{rng.getrandbits(16):04x}",
            colour=rng.choice(("blue", "green")),
        )
        operation = rng.choice(_OPERATIONS)
        tasks.append(
            SimTask(
                task_id=_uuid(rng),
                operate_type=operation,
                task_time_ms=int((now - age) * 1000),
                server_name=server_name,
                server_id=_uuid(rng),
                keypair_name=rng.choice(_KEYPAIRS),
                status=operation,
            )
        )
    return tasks
