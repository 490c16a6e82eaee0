"""The async KPS client: typed pages of running tasks, retries, and one error family."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from bot.errors import (
    KPSAPIError,
    KPSBadResponse,
    KPSConnectionError,
    KPSError,
    KPSTimeout,
    decode_error,
    request_id_of,
)
from bot.tasks import FailedTask, Page, Task, TaskStatus

log = logging.getLogger(__name__)

# The docs give 1000 as the default and name no maximum; 1000 is also what Terraform and the SDK
# page with, so it is the largest page we ask for.
MAX_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter, for idempotent GETs only.

    Written here rather than taken from a retry library because it must read `Retry-After` from
    the failed response and cap it, which is a few lines of our own either way.
    """

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_retry_after: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(ceiling * rand)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every running task from one walk, and whether the walk saw a consistent list."""

    tasks: tuple[Task, ...]
    total: int
    complete: bool  # False when the list changed under the walk or it was cut short
    requests: int


@dataclass(frozen=True, slots=True)
class FailedPage:
    """One page of failed tasks."""

    total: int
    offset: int
    limit: int
    tasks: tuple[FailedTask, ...]


Sleep = Callable[[float], Awaitable[None]]
_FlightKey = tuple[str, tuple[tuple[str, int], ...]]


class KPSClient:
    """Calls KPS v3 on a shared `httpx.AsyncClient`; authentication is that client's `auth`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        endpoint: str,
        project_id: str,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        max_in_flight: int = 50,
    ) -> None:
        self._http = http
        self._base = f"{endpoint.rstrip('/')}/v3/{project_id}"
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._jitter = jitter
        # Requests beyond the connection pool wait here rather than in httpcore's queue, which is
        # scanned in full for every request it assigns (encode/httpcore#1035): with hundreds
        # waiting that scan, not KPS, used most of the CPU (bench/RESULTS.md, profiles).
        self._gate = asyncio.Semaphore(max_in_flight)
        self._flights: dict[_FlightKey, asyncio.Future[tuple[Any, httpx.Response]]] = {}

    def __repr__(self) -> str:
        return f"KPSClient(base={self._base!r})"

    async def list_running_tasks(self, limit: int = MAX_LIMIT, offset: int = 0) -> Page:
        """One page of running tasks, `limit` (1–1000) from `offset` (≥ 0)."""
        _check_paging(limit, offset)
        data, response = await self._get("/running-tasks", {"limit": limit, "offset": offset})
        total, items = _page_parts(data, response)
        tasks = tuple(_task(item, response) for item in items)
        return Page(total=total, offset=offset, limit=limit, tasks=tasks)

    async def list_failed_tasks(self, limit: int = MAX_LIMIT, offset: int = 0) -> FailedPage:
        """One page of failed tasks with KPS's reason for each."""
        _check_paging(limit, offset)
        data, response = await self._get("/failed-tasks", {"limit": limit, "offset": offset})
        total, items = _page_parts(data, response)
        tasks = tuple(
            FailedTask(
                task=_task(item, response),
                error_code=_optional_str(item, "task_error_code", response),
                error_msg=_optional_str(item, "task_error_msg", response),
            )
            for item in items
        )
        return FailedPage(total=total, offset=offset, limit=limit, tasks=tasks)

    async def get_task_status(self, task_id: str) -> TaskStatus:
        """What KPS says of one task: `RUNNING_RESET`, `SUCCESS_REPLACE`, `FAILED_UNBIND`…"""
        if not task_id or "/" in task_id:
            raise ValueError("task_id must be a non-empty id without '/'")
        data, response = await self._get(f"/tasks/{task_id}", {})
        if not isinstance(data, dict):
            raise _bad(response, "the task status is not a JSON object")
        return TaskStatus(
            task_id=_required_str(data, "task_id", response),
            server_id=_optional_str(data, "server_id", response) or "",
            task_status=_required_str(data, "task_status", response),
        )

    async def walk_running_tasks(
        self, *, page_size: int = MAX_LIMIT, concurrency: int = 1, attempts: int = 2
    ) -> Snapshot:
        """All running tasks, page by page until `total`, never the same task twice.

        KPS pages by item offset (research/kps-api.md §2), so a task that ends mid-walk shifts the
        rest left and one still running could be skipped. A walk therefore counts as complete only
        when every page reported the same total and that many distinct tasks were seen; otherwise
        it is repeated, up to `attempts` times, and the last result is returned marked incomplete.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        _check_paging(page_size, 0)
        snapshot = await self._walk_once(page_size, concurrency)
        for _ in range(attempts - 1):
            if snapshot.complete:
                break
            retry = await self._walk_once(page_size, concurrency)
            snapshot = Snapshot(
                retry.tasks, retry.total, retry.complete, snapshot.requests + retry.requests
            )
        return snapshot

    async def _walk_once(self, page_size: int, concurrency: int) -> Snapshot:
        first = await self.list_running_tasks(page_size, 0)
        pages = [first]
        requests = 1
        if concurrency > 1 and first.total > len(first.tasks) > 0:
            offsets = range(len(first.tasks), first.total, page_size)
            gate = asyncio.Semaphore(concurrency)

            async def fetch(offset: int) -> Page:
                async with gate:
                    return await self.list_running_tasks(page_size, offset)

            pages.extend(await asyncio.gather(*(fetch(o) for o in offsets)))
            requests += len(offsets)
        else:
            # Sequential: follow the item offset until the reported total; the page cap keeps a
            # list that grows faster than we read from turning this into an endless loop.
            cap = 2 * math.ceil(first.total / page_size) + 2
            offset = len(first.tasks)
            page = first
            while page.tasks and offset < page.total and requests < cap:
                page = await self.list_running_tasks(page_size, offset)
                pages.append(page)
                requests += 1
                offset += len(page.tasks)
        seen: dict[str, Task] = {}
        for page in pages:
            for task in page.tasks:
                seen.setdefault(task.task_id, task)
        totals = {page.total for page in pages}
        total = pages[-1].total
        complete = len(totals) == 1 and len(seen) == total
        if not complete:
            log.info(
                "running-tasks list changed during the walk",
                extra={"totals": sorted(totals), "seen": len(seen)},
            )
        return Snapshot(tuple(seen.values()), total, complete, requests)

    async def _get(self, path: str, params: Mapping[str, int]) -> tuple[Any, httpx.Response]:
        """One GET, shared with every caller asking for the same thing while it is in flight.

        Fifty users typing `/kps` at once want the same first page: one request answers them
        all. Nothing is kept once it returns, so no caller ever sees an older answer than a
        request started after its own.
        """
        key: _FlightKey = (path, tuple(sorted(params.items())))
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._fetch(path, params))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._land(key, done))
        # shield: one caller giving up must not cancel the request the others wait for.
        return await asyncio.shield(flight)

    def _land(self, key: _FlightKey, done: asyncio.Future[tuple[Any, httpx.Response]]) -> None:
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so a flight whose callers all left logs nothing

    async def _fetch(self, path: str, params: Mapping[str, int]) -> tuple[Any, httpx.Response]:
        url = self._base + path
        # The SDK sends this on GETs too; AK/SK signatures include it (research/kps-api.md §2).
        headers = {"Content-Type": "application/json"}
        attempts = self._retry.attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                async with self._gate:
                    response = await self._http.get(url, params=dict(params), headers=headers)
            except httpx.TimeoutException:
                error: KPSError = KPSTimeout(f"KPS did not answer in time ({path})")
            except httpx.TransportError as exc:
                error = KPSConnectionError(f"KPS could not be reached: {type(exc).__name__}")
            except KPSError as exc:  # raised by an auth flow, e.g. IAM refusing a token
                error = exc
            else:
                if response.is_success:
                    return _json(response), response
                error = decode_error(
                    response.status_code,
                    response.headers,
                    response.content,
                    reason=response.reason_phrase,
                )
                retry_after = _retry_after(response.headers)
            if not error.retryable or attempt == attempts:
                raise error
            wait = self._retry.delay(attempt, retry_after, self._jitter())
            log.warning(
                "KPS call failed, retrying",
                extra={
                    "path": path,
                    "attempt": attempt,
                    "wait_s": round(wait, 3),
                    "error": str(error),
                },
            )
            await self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def _check_paging(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("offset must be an integer of at least 0")


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
        except (TypeError, ValueError):  # neither seconds nor an HTTP date: ignore the header
            return None
        if parsed is None or parsed.tzinfo is None:
            return None
        seconds = (parsed - datetime.now(UTC)).total_seconds()
    # "nan" parses as a float, and asyncio.sleep(nan) returns at once: use the backoff instead.
    return None if math.isnan(seconds) else max(seconds, 0.0)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _bad(response, "the body is not JSON") from None


def _bad(response: httpx.Response, detail: str) -> KPSBadResponse:
    return KPSBadResponse(
        detail, status=response.status_code, request_id=request_id_of(response.headers)
    )


def _page_parts(data: Any, response: httpx.Response) -> tuple[int, list[dict[str, Any]]]:
    if not isinstance(data, dict):
        raise _bad(response, "the body is not a JSON object")
    total = data.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise _bad(response, "'total' is not a non-negative integer")
    items = data.get("tasks")
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _bad(response, "'tasks' is not a list of objects")
    return total, items


def _task(item: Mapping[str, Any], response: httpx.Response) -> Task:
    return Task(
        task_id=_required_str(item, "task_id", response),
        operate_type=_optional_str(item, "operate_type", response) or "",
        started_at=_task_time(item.get("task_time"), response),
        server_name=_optional_str(item, "server_name", response) or "",
        server_id=_optional_str(item, "server_id", response) or "",
        keypair_name=_optional_str(item, "keypair_name", response) or "",
    )


def _task_time(value: Any, response: httpx.Response) -> datetime | None:
    """Epoch milliseconds, as a string (the docs) or a number (older Go SDKs typed it int64)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _bad(response, "'task_time' is neither a string nor a number")
    try:
        millis = float(value)
        return datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise _bad(response, "'task_time' is not epoch milliseconds") from None


def _required_str(item: Mapping[str, Any], key: str, response: httpx.Response) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(response, f"'{key}' is missing or not a string")
    return value


def _optional_str(item: Mapping[str, Any], key: str, response: httpx.Response) -> str | None:
    value = item.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _bad(response, f"'{key}' is not a string")


__all__ = [
    "MAX_LIMIT",
    "FailedPage",
    "KPSAPIError",
    "KPSBadResponse",
    "KPSClient",
    "KPSConnectionError",
    "KPSError",
    "KPSTimeout",
    "RetryPolicy",
    "Snapshot",
]
