"""The async KPS client: typed pages of running tasks, retries, and one error family."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar
from urllib.parse import quote

import httpx

from bot.body import ACCEPT_ENCODING, BodyTooLarge, BodyUndecodable, parse_json, read_body
from bot.errors import (
    KPSAPIError,
    KPSBadResponse,
    KPSConnectionError,
    KPSError,
    KPSResponseTooLarge,
    KPSThrottled,
    KPSTimeout,
    decode_error,
    request_id_of,
)
from bot.retryafter import retry_after as retry_after_header
from bot.tasks import BadRecord, FailedTask, Page, Task, TaskStatus

log = logging.getLogger(__name__)

# The docs give 1000 as the default and name no maximum; 1000 is also what Terraform and the SDK
# page with, so it is the largest page we ask for.
MAX_LIMIT: Final = 1000

# The most of one answer the bot reads, decoded. A page of 1,000 tasks is about 250 KB, well
# under 1 MB; 16 MB leaves room for long names and a gateway's padding, and is still parsed in
# about 2 s off the loop. Past it the answer is refused: a 1 GiB gzip bomb once took the bot to
# 4.7 GB of memory, and a 60 MB page blocked the loop for 5 s.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024

# A walk reads at most this many pages: 100 pages of 1,000 is 100,000 running tasks, far past
# any real project, while a KPS reporting a total of 10**12 once made 7,521 requests in 30 s.
MAX_WALK_PAGES: Final = 100

# task_time outside these bounds is not a start time: 1700000000 (seconds, not milliseconds)
# reads as 20 January 1970 and was shown as "running 20,769 d". KPS did not exist before 2010,
# and a clock a day ahead of ours is not a clock we can reason with.
_EARLIEST_TASK_TIME: Final = datetime(2010, 1, 1, tzinfo=UTC)
_FUTURE_SLACK: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter, for idempotent GETs only.

    Written here rather than taken from a retry library because it must read `Retry-After` from
    the failed response and cap it, which is a few lines of our own either way.
    """

    attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 8.0
    # The longest Retry-After the bot waits out. KPS asking for longer (a 429 once said 99999)
    # ends the call at once with the error, rather than keep a user waiting in silence.
    max_retry_after: float = 10.0

    def delay(self, attempt: int, retry_after: float | None, rand: float) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return float(ceiling * rand)


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long KPS may take, in seconds, however slowly it sends its bytes.

    httpx's timeouts bound each read, so a body trickling a byte every 2 s never trips them;
    these bound the whole exchange.
    """

    attempt: float  # one request, any IAM token request included, from send to last byte
    call: float  # every attempt and wait of one call
    walk: float  # every page of one walk, repeats included
    join: float  # a caller shares an identical in-flight call only while it is this young

    @classmethod
    def from_timeout(cls, timeout: float) -> Deadlines:
        """Deadlines for httpx's per-read `timeout` (KPS_TIMEOUT_SECONDS, 10 s by default).

        An attempt gets two timeouts (the token request, then KPS), a call three (a timed-out
        attempt still leaves time to retry), a walk six (a scan every POLL_INTERVAL_SECONDS).
        A stampede of identical requests arrives within a second or two; a later caller starts
        its own call rather than wait on one that is already slow (users once waited 105 s on a
        call that had stalled before KPS recovered).
        """
        return cls(attempt=2 * timeout, call=3 * timeout, walk=6 * timeout, join=min(2.0, timeout))


class WalkLimit(enum.Enum):
    """Why a walk stopped before the end of the list."""

    PAGES = "page limit"
    TIME = "time limit"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every running task from one walk, and whether the walk saw a consistent list."""

    tasks: tuple[Task, ...]
    total: int
    complete: bool  # False when the list changed under the walk or it was cut short
    requests: int
    cut_short: WalkLimit | None = None  # set when the walk stopped at its page or time limit
    rejected: tuple[BadRecord, ...] = ()  # records seen but unusable; not in `tasks`


@dataclass(frozen=True, slots=True)
class FailedPage:
    """One page of failed tasks."""

    total: int
    offset: int
    limit: int
    tasks: tuple[FailedTask, ...]
    rejected: tuple[BadRecord, ...] = ()  # records on this page left out as unusable


Sleep = Callable[[float], Awaitable[None]]
_FlightKey = tuple[str, tuple[tuple[str, int], ...]]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the parsers need to know of the response a body came from."""

    status: int
    request_id: str | None


@dataclass(frozen=True, slots=True)
class _Flight:
    future: asyncio.Future[tuple[Any, _Answer]]
    started: float  # loop time


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        deadlines: Deadlines | None = None,
        max_body: int = MAX_BODY_BYTES,
        clock: Callable[[], datetime] = _utc_now,
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
        self._flights: dict[_FlightKey, _Flight] = {}
        self._deadlines = deadlines or Deadlines.from_timeout(http.timeout.read or 10.0)
        self._max_body = max_body
        self._clock = clock

    def __repr__(self) -> str:
        return f"KPSClient(base={self._base!r})"

    async def list_running_tasks(self, limit: int = MAX_LIMIT, offset: int = 0) -> Page:
        """One page of running tasks, `limit` (1–1000) from `offset` (≥ 0).

        A record that cannot be used (no id, a wrong type, an implausible time) is left out and
        listed in `Page.rejected`; the rest of the page stands.
        """
        _check_paging(limit, offset)
        data, answer = await self._get("/running-tasks", {"limit": limit, "offset": offset})
        total, items = _page_parts(data, answer)
        now = self._clock()
        tasks, rejected = _records(items[:limit], lambda item: parse_task(item, now=now))
        return Page(total=total, offset=offset, limit=limit, tasks=tasks, rejected=rejected)

    async def list_failed_tasks(self, limit: int = MAX_LIMIT, offset: int = 0) -> FailedPage:
        """One page of failed tasks with KPS's reason for each; unusable records are left out."""
        _check_paging(limit, offset)
        data, answer = await self._get("/failed-tasks", {"limit": limit, "offset": offset})
        total, items = _page_parts(data, answer)
        now = self._clock()

        def failed(item: Mapping[str, Any]) -> FailedTask:
            return FailedTask(
                task=parse_task(item, now=now),
                error_code=_optional_str(item, "task_error_code"),
                error_msg=_optional_str(item, "task_error_msg"),
            )

        tasks, rejected = _records(items[:limit], failed)
        return FailedPage(total, offset, limit, tasks, rejected)

    async def get_task_status(self, task_id: str) -> TaskStatus:
        """What KPS says of one task: `RUNNING_RESET`, `SUCCESS_REPLACE`, `FAILED_UNBIND`…

        Any id but an empty one can be asked about: it goes into the path escaped, so a newline,
        `/`, `?` or `#` from KPS reaches KPS as sent (issue 10, item 2).
        """
        if not task_id:
            raise ValueError("task_id must not be empty")
        data, answer = await self._get(f"/tasks/{_path_segment(task_id)}", {})
        if not isinstance(data, dict):
            raise _bad(answer, "the task status is not a JSON object")
        try:
            return TaskStatus(
                task_id=_required_str(data, "task_id"),
                server_id=_optional_str(data, "server_id") or "",
                task_status=_required_str(data, "task_status"),
            )
        except BadTaskRecord as error:
            raise _bad(answer, error.reason) from None

    async def walk_running_tasks(
        self,
        *,
        page_size: int = MAX_LIMIT,
        concurrency: int = 1,
        attempts: int = 2,
        max_pages: int = MAX_WALK_PAGES,
        time_limit: float | None = None,
    ) -> Snapshot:
        """All running tasks, page by page until `total`, never the same task twice.

        KPS pages by item offset (../shared/research/kps-api.md §2), so a task that ends
        mid-walk shifts the rest left and one still running could be skipped. A walk therefore
        counts as complete only when every page reported the same total and that many distinct
        tasks were seen (readable or rejected); otherwise it is repeated, up to `attempts`
        times, and the last result is returned marked incomplete. A walk reads at most
        `max_pages` pages each time and stops after `time_limit` seconds (default
        `Deadlines.walk`); stopped early, it returns what it read, incomplete, with `cut_short`
        saying which limit it met.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        _check_paging(page_size, 0)
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + (self._deadlines.walk if time_limit is None else time_limit)
        requests = 0
        snapshot: Snapshot | None = None
        for _ in range(max(attempts, 1)):
            pages: list[Page] = []
            try:
                async with asyncio.timeout_at(ends_at):
                    limit = await self._walk_once(page_size, concurrency, max_pages, pages)
            except TimeoutError:
                if not pages:
                    if snapshot is not None:
                        break  # the earlier attempt stands, marked as it was
                    raise KPSTimeout(
                        "KPS did not list the running tasks within the walk's time limit"
                    ) from None
                limit = WalkLimit.TIME
            requests += len(pages)
            snapshot = _summarize(pages, limit, requests)
            if snapshot.complete or snapshot.cut_short is not None:
                break  # complete, or a limit that a repeat would meet again
        if snapshot is None:  # pragma: no cover - attempts ≥ 1 and every path sets it
            raise AssertionError("unreachable")
        if snapshot.cut_short is not None:
            log.warning(
                "running-tasks walk stopped at its %s",
                snapshot.cut_short.value,
                extra={"seen": len(snapshot.tasks), "total": snapshot.total, "requests": requests},
            )
        return snapshot

    async def _walk_once(
        self, page_size: int, concurrency: int, max_pages: int, pages: list[Page]
    ) -> WalkLimit | None:
        """Append the pages of one walk to `pages`; the limit it stopped at, if any."""
        first = await self.list_running_tasks(page_size, 0)
        pages.append(first)
        width = len(first.tasks) + len(first.rejected)
        if concurrency > 1 and first.total > width > 0:
            offsets = range(width, first.total, page_size)
            gate = asyncio.Semaphore(concurrency)

            async def fetch(offset: int) -> None:
                async with gate:
                    pages.append(await self.list_running_tasks(page_size, offset))

            await asyncio.gather(*(fetch(o) for o in offsets[: max_pages - 1]))
            return WalkLimit.PAGES if len(offsets) > max_pages - 1 else None
        # Sequential: follow the item offset until the reported total; the cap of twice the pages
        # promised keeps a list that grows faster than we read from making this endless.
        cap = 2 * math.ceil(first.total / page_size) + 2
        offset = width
        page = first
        while (page.tasks or page.rejected) and offset < page.total and len(pages) < cap:
            if len(pages) >= max_pages:
                return WalkLimit.PAGES
            page = await self.list_running_tasks(page_size, offset)
            pages.append(page)
            offset += len(page.tasks) + len(page.rejected)
        return None

    async def _get(self, path: str, params: Mapping[str, int]) -> tuple[Any, _Answer]:
        """One GET, shared with every caller asking for the same thing while it is young.

        Fifty users typing `/kps` at once want the same first page: one request answers them
        all. Nothing is kept once it returns, so no caller ever sees an older answer than a
        request started after its own; and a call older than `Deadlines.join` is not joined, so
        a stalled one cannot hold up callers who come later.
        """
        key: _FlightKey = (path, tuple(sorted(params.items())))
        now = asyncio.get_running_loop().time()
        flight = self._flights.get(key)
        if flight is None or now - flight.started > self._deadlines.join:
            flight = _Flight(asyncio.ensure_future(self._fetch(path, params)), now)
            self._flights[key] = flight
            flight.future.add_done_callback(lambda done: self._land(key, done))
        # shield: one caller giving up must not cancel the request the others wait for.
        return await asyncio.shield(flight.future)

    def _land(self, key: _FlightKey, done: asyncio.Future[tuple[Any, _Answer]]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.future is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()  # retrieved here, so a flight whose callers all left logs nothing

    async def _fetch(self, path: str, params: Mapping[str, int]) -> tuple[Any, _Answer]:
        limit = self._deadlines.call
        ends_at = asyncio.get_running_loop().time() + limit
        try:
            async with asyncio.timeout_at(ends_at):
                return await self._attempts(path, params, ends_at)
        except TimeoutError:
            raise KPSTimeout(f"KPS did not answer within {limit:g} s ({path})") from None

    async def _attempts(
        self, path: str, params: Mapping[str, int], ends_at: float
    ) -> tuple[Any, _Answer]:
        attempts = self._retry.attempts
        for attempt in range(1, attempts + 1):
            retry_after: float | None = None
            try:
                async with self._gate, asyncio.timeout(self._deadlines.attempt):
                    response, body = await self._exchange(path, params)
            except TimeoutError:
                limit = self._deadlines.attempt
                error: KPSError = KPSTimeout(f"KPS did not answer within {limit:g} s ({path})")
            except httpx.TimeoutException:
                error = KPSTimeout(f"KPS did not answer in time ({path})")
            except httpx.TransportError as exc:
                error = KPSConnectionError(f"KPS could not be reached: {type(exc).__name__}")
            except KPSError as exc:  # an auth flow's (IAM refusing a token), or a body refused
                error = exc
            else:
                answer = _Answer(response.status_code, request_id_of(response.headers))
                if response.is_success:
                    return await _json(body, answer), answer
                error = decode_error(
                    response.status_code,
                    response.headers,
                    response.content,
                    reason=response.reason_phrase,
                )
                retry_after = retry_after_header(response.headers)
            wait = self._retry.delay(attempt, retry_after, self._jitter())
            if (
                not error.retryable
                or attempt == attempts
                # KPS asks for a longer wait than the bot spends on one request: stop now.
                or (retry_after is not None and retry_after > self._retry.max_retry_after)
                # A wait that ends past the call's deadline would only delay the same error.
                or asyncio.get_running_loop().time() + wait >= ends_at
            ):
                raise _final(error, retry_after)
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

    async def _exchange(self, path: str, params: Mapping[str, int]) -> tuple[httpx.Response, bytes]:
        """One request, its body read within the cap and decoded; the response is closed."""
        # The SDK sends Content-Type on GETs too; AK/SK signatures include it (kps-api.md §2).
        headers = {"Content-Type": "application/json", "Accept-Encoding": ACCEPT_ENCODING}
        request = self._http.stream("GET", self._base + path, params=dict(params), headers=headers)
        async with request as response:
            try:
                body = await read_body(response, self._max_body)
            except BodyTooLarge as exc:
                raise KPSResponseTooLarge(
                    exc.limit,
                    status=response.status_code,
                    request_id=request_id_of(response.headers),
                ) from None
            except BodyUndecodable as exc:
                raise KPSBadResponse(
                    str(exc),
                    status=response.status_code,
                    request_id=request_id_of(response.headers),
                ) from None
        return response, body


def _check_paging(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("offset must be an integer of at least 0")


def _path_segment(value: str) -> str:
    """`value` as one path segment, escaped as Huawei Cloud's SDK escapes path parameters.

    `quote(value, safe="")` leaves `.` alone, and httpx then removes `.` and `..` segments as
    RFC 3986 says; escaped, they reach KPS as the ids they are.
    """
    escaped = quote(value, safe="")
    return escaped.replace(".", "%2E") if escaped in (".", "..") else escaped


def _final(error: KPSError, retry_after: float | None) -> KPSError:
    """The error the caller gets once the bot stops asking; a 429 says who is throttling."""
    if isinstance(error, KPSAPIError) and error.status == 429:
        return KPSThrottled(error, retry_after)
    return error


def _summarize(pages: Sequence[Page], limit: WalkLimit | None, requests: int) -> Snapshot:
    ordered = sorted(pages, key=lambda page: page.offset)
    seen: dict[str, Task] = {}
    rejected: dict[str | int, BadRecord] = {}
    for page in ordered:
        for task in page.tasks:
            seen.setdefault(task.task_id, task)
        for index, record in enumerate(page.rejected):
            # A rejected record without an id counts once per place it was seen.
            rejected.setdefault(record.task_id or page.offset + index, record)
    unusable = [record for key, record in rejected.items() if key not in seen]
    totals = {page.total for page in ordered}
    total = ordered[-1].total
    # A record that could not be read is still a running task KPS counted: it is part of a
    # complete list, or one bad record would make every scan incomplete.
    complete = limit is None and len(totals) == 1 and len(seen) + len(unusable) == total
    if not complete and limit is None:
        log.info(
            "running-tasks list changed during the walk",
            extra={"totals": sorted(totals), "seen": len(seen), "rejected": len(unusable)},
        )
    return Snapshot(tuple(seen.values()), total, complete, requests, limit, tuple(unusable))


async def _json(body: bytes, answer: _Answer) -> Any:
    try:
        return await parse_json(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise _bad(answer, "the body is not JSON") from None


def _bad(answer: _Answer, detail: str) -> KPSBadResponse:
    return KPSBadResponse(detail, status=answer.status, request_id=answer.request_id)


def _page_parts(data: Any, answer: _Answer) -> tuple[int, list[Any]]:
    if not isinstance(data, dict):
        raise _bad(answer, "the body is not a JSON object")
    total = data.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise _bad(answer, "'total' is not a non-negative integer")
    items = data.get("tasks")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise _bad(answer, "'tasks' is not a list")
    return total, items


class BadTaskRecord(ValueError):
    """One task record is unusable; the page it came in is not (see `Page.rejected`)."""

    def __init__(self, reason: str, task_id: str | None = None) -> None:
        self.reason = reason
        self.task_id = task_id
        super().__init__(reason)


def _records(
    items: Sequence[Any], parse: Callable[[Mapping[str, Any]], _T]
) -> tuple[tuple[_T, ...], tuple[BadRecord, ...]]:
    """Each item parsed; one that raises `BadTaskRecord` is set aside, and the rest are kept."""
    kept: list[_T] = []
    rejected: list[BadRecord] = []
    for item in items:
        if not isinstance(item, dict):
            rejected.append(BadRecord(None, "the record is not a JSON object"))
            continue
        try:
            kept.append(parse(item))
        except BadTaskRecord as error:
            task_id = item.get("task_id")
            rejected.append(BadRecord(task_id if isinstance(task_id, str) else None, error.reason))
    return tuple(kept), tuple(rejected)


def parse_task(item: Mapping[str, Any], *, now: datetime) -> Task:
    """One task record as KPS sends it; `BadTaskRecord` when it cannot be used as it is."""
    return Task(
        task_id=_required_str(item, "task_id"),
        operate_type=_optional_str(item, "operate_type") or "",
        started_at=_task_time(item.get("task_time"), now),
        server_name=_optional_str(item, "server_name") or "",
        server_id=_optional_str(item, "server_id") or "",
        keypair_name=_optional_str(item, "keypair_name") or "",
    )


def _task_time(value: Any, now: datetime) -> datetime | None:
    """Epoch milliseconds, as a string (the docs) or a number (older Go SDKs typed it int64)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadTaskRecord("'task_time' is neither a string nor a number")
    try:
        moment = datetime.fromtimestamp(float(value) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise BadTaskRecord("'task_time' is not epoch milliseconds") from None
    if not _EARLIEST_TASK_TIME <= moment <= now + _FUTURE_SLACK:
        shown = str(value)[:24]
        raise BadTaskRecord(
            f"'task_time' {shown} is not a plausible start time in epoch milliseconds"
            f" (it reads as {moment:%Y-%m-%d})"
        )
    return moment


def _required_str(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadTaskRecord(f"'{key}' is missing or not a string")
    return value


def _optional_str(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadTaskRecord(f"'{key}' is not a string")


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LIMIT",
    "MAX_WALK_PAGES",
    "BadTaskRecord",
    "Deadlines",
    "FailedPage",
    "KPSAPIError",
    "KPSBadResponse",
    "KPSClient",
    "KPSConnectionError",
    "KPSError",
    "KPSResponseTooLarge",
    "KPSThrottled",
    "KPSTimeout",
    "RetryPolicy",
    "Snapshot",
    "WalkLimit",
    "parse_task",
]
