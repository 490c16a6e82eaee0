"""A local stand-in for Huawei Cloud KPS and IAM: real HTTP, real auth checks, injectable faults.

Tests, the demo, benchmarks and the fault soak all talk to it over loopback, some from another
process through the `/_sim/` admin API. It imports nothing from `bot`, so it builds every JSON
body itself, following research/kps-api.md §2-§5. Production code never imports it.

Authentication: when none of `static_tokens`, `users` or `aksk` is configured, every KPS request
is accepted without credentials (handy for quick tests) and IAM issues a token for any password.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import random
import re
import secrets
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Self, SupportsIndex
from urllib.parse import quote, unquote

from aiohttp import web
from aiohttp.typedefs import Handler

FAULT_KINDS = frozenset(
    {"status", "latency", "garbage", "wrong_types", "retry_after", "disconnect", "html"}
)
ERROR_SHAPES = frozenset({"flat", "nested", "apig", "keystone", "text"})

_IAM_PREFIX = "/v3/auth"
_ADMIN_PREFIX = "/_sim/"
_DEFAULT_LIMIT = 1000  # the running-tasks page documents 1000 as the default limit
_SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_MAX_CLOCK_SKEW = 15 * 60  # APIG refuses an X-Sdk-Date more than 15 min off (kps-api.md §5)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_DIGITS = re.compile(r"[0-9]+")
_JSON = "application/json"
_REQUEST_ID = web.RequestKey("request_id", str)


class _Revision:
    """Counters every change to a task list or to a SimTask's listing fields bumps.

    Tests edit `Simulator.tasks` and its tasks in place; the simulator keeps sorted views for
    100,000-task pages and an id index, and rebuilds each only when its counter has moved.
    """

    listing = 0  # anything a listing shows: membership, ids, task_time, status
    order = 0  # the listing order: membership, ids, task_time
    members = 0  # which tasks exist and under which ids


def _members_changed() -> None:
    _Revision.listing += 1
    _Revision.order += 1
    _Revision.members += 1


_RUNNING_PREFIXES = ("RUNNING", "READY")
_LISTING_FIELDS = frozenset({"task_id", "status", "task_time_ms"})


@dataclass(slots=True)
class SimTask:
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

    def __post_init__(self) -> None:
        if not self.status:
            self.status = self.operate_type

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _LISTING_FIELDS:
            _Revision.listing += 1
            if name != "status":
                _Revision.order += 1
                if name == "task_id":
                    _Revision.members += 1

    @property
    def running(self) -> bool:
        """True while KPS lists it under running-tasks (READY counts: it is queued to run)."""
        return self.status.startswith(_RUNNING_PREFIXES)

    @property
    def failed(self) -> bool:
        """True when KPS lists it under failed-tasks."""
        return self.status.startswith("FAILED")


class _TaskList(list[SimTask]):
    """A list of tasks that bumps the revision on every in-place change."""

    def __setitem__(self, index: Any, value: Any) -> None:
        _members_changed()
        super().__setitem__(index, value)

    def __delitem__(self, index: Any) -> None:
        _members_changed()
        super().__delitem__(index)

    def __iadd__(self, values: Iterable[SimTask]) -> Self:  # type: ignore[override,misc]
        _members_changed()
        return super().__iadd__(values)

    def __imul__(self, times: SupportsIndex) -> Self:
        _members_changed()
        return super().__imul__(times)

    def append(self, task: SimTask) -> None:
        _members_changed()
        super().append(task)

    def extend(self, tasks: Iterable[SimTask]) -> None:
        _members_changed()
        super().extend(tasks)

    def insert(self, index: SupportsIndex, task: SimTask) -> None:
        _members_changed()
        super().insert(index, task)

    def pop(self, index: SupportsIndex = -1) -> SimTask:
        _members_changed()
        return super().pop(index)

    def remove(self, task: SimTask) -> None:
        _members_changed()
        super().remove(task)

    def clear(self) -> None:
        _members_changed()
        super().clear()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        _members_changed()
        super().sort(*args, **kwargs)

    def reverse(self) -> None:
        _members_changed()
        super().reverse()


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour to inject into the next `times` requests whose path starts with `path`."""

    kind: str  # one of FAULT_KINDS
    status: int = 500
    shape: str = "flat"  # error body shape, one of ERROR_SHAPES
    error_code: str = "KPS.0500"
    error_msg: str = "Internal error"
    delay: float = 0.0  # latency: seconds before the normal answer; retry_after: the header value
    path: str = "/v3/"
    times: int = 1  # -1: until cleared

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {sorted(FAULT_KINDS)}")
        if self.shape not in ERROR_SHAPES:
            raise ValueError(
                f"unknown error shape {self.shape!r}; use one of {sorted(ERROR_SHAPES)}"
            )
        if self.times == 0 or self.times < -1:
            raise ValueError("times must be at least 1, or -1 for until cleared")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One KPS or IAM request as it arrived (admin `/_sim/` calls are not recorded)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)  # lowercased names; holds the credentials sent
    time: float  # clock() on arrival


@dataclass(slots=True)
class _ArmedFault:
    fault: Fault
    remaining: int  # -1: until cleared


@dataclass(frozen=True, slots=True)
class _View:
    listing: int  # the _Revision counters it was built at
    order: int
    members: int
    ordered: list[SimTask]  # every task, in listing order
    running: list[SimTask]
    failed: list[SimTask]


def _order(task: SimTask) -> tuple[int, str]:
    # Oldest first, the task id breaking ties, so paging is stable between requests.
    return (task.task_time_ms if task.task_time_ms is not None else -1, task.task_id)


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


# ---------------------------------------------------------------------------------------------
# SDK-HMAC-SHA256, recomputed from the published algorithm (kps-api.md §5), not from a client


def _canonical_uri(raw_path: str) -> str:
    """The signed form of a path: each segment RFC 3986-quoted, always ending in `/`."""
    uri = "/".join(quote(segment, safe="~") for segment in unquote(raw_path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def _canonical_query(raw_query: str) -> str:
    """The signed form of a query string: decoded pairs sorted, re-quoted with safe='~'."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    pairs.sort()
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)


def expected_signature(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    body: bytes,
    secret_key: str,
) -> str:
    """The hex signature the API gateway expects; `headers` keyed by lowercased name.

    Raises KeyError when a signed header (or X-Sdk-Date) is missing.
    """
    names = list(signed_headers)
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
    if not body:
        payload_hash = _EMPTY_SHA256
    else:
        # The SDK signs this header's value instead of the body for non-JSON content types.
        payload_hash = headers.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        (
            method.upper(),
            _canonical_uri(raw_path),
            _canonical_query(raw_query),
            canonical_headers,
            ";".join(names),
            payload_hash,
        )
    )
    string_to_sign = "\n".join(
        (
            "SDK-HMAC-SHA256",
            headers["x-sdk-date"],
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        )
    )
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def _parse_authorization(value: str) -> dict[str, str] | None:
    # "SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex": a space after the algorithm,
    # ", " between the fields.
    algorithm, _, rest = value.partition(" ")
    if algorithm != "SDK-HMAC-SHA256":
        return None
    parts = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= parts.keys():
        return None
    return parts


# ---------------------------------------------------------------------------------------------
# Response bodies


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json_response(
    status: int, body: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=_JSON,
        headers=dict(headers or {}),
    )


def _kps_error(status: int, code: str, message: str) -> web.Response:
    return _json_response(status, {"error_code": code, "error_msg": message})


def _apig_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    body = {"error_code": code, "error_msg": message, "request_id": request[_REQUEST_ID]}
    return _json_response(status, body)


def _keystone_error(status: int, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "title": _phrase(status)}}
    return _json_response(status, body)


def _error_body(shape: str, status: int, code: str, message: str, request_id: str) -> Any:
    if shape == "nested":
        return {"error": {"error_code": code, "error_msg": message}}
    if shape == "apig":
        return {"error_code": code, "error_msg": message, "request_id": request_id}
    if shape == "keystone":
        return {"error": {"code": status, "message": message, "title": _phrase(status)}}
    return {"error_code": code, "error_msg": message}


def _task_json(task: SimTask) -> dict[str, Any]:
    # task_time is epoch milliseconds as a JSON string, as the docs' example shows (§2).
    return {
        "task_id": task.task_id,
        "operate_type": task.operate_type,
        "task_time": None if task.task_time_ms is None else str(task.task_time_ms),
        "server_name": task.server_name,
        "server_id": task.server_id,
        "keypair_name": task.keypair_name,
    }


def _failed_task_json(task: SimTask) -> dict[str, Any]:
    body = _task_json(task)
    body["task_error_code"] = task.error_code
    body["task_error_msg"] = task.error_msg
    return body


def _wrong_types_body() -> dict[str, Any]:
    return {
        "total": "1",
        "tasks": [
            {
                "task_id": str(uuid.uuid4()),
                "operate_type": "RUNNING_RESET",
                "task_time": {"$date": 1523342130000},
                "server_name": "wrong-types-01",
                "server_id": str(uuid.uuid4()),
                "keypair_name": "KeyPair-xt",
            }
        ],
    }


def _iso(epoch: float) -> str:
    # IAM's format: microseconds and a Z, e.g. 2020-01-04T09:05:22.701000Z (kps-api.md §4).
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _paging_value(raw: str | None, default: int, minimum: int) -> int | None:
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw):
        return None
    number = int(raw)
    return number if number >= minimum else None


class _BadAdminRequest(Exception):
    pass


async def _admin_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadAdminRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadAdminRequest("body must be a JSON object")
    return body


def _check_task_fields(body: Mapping[str, Any]) -> None:
    # A wrong type here would only surface later, as a failed sort in some listing.
    known = {f.name for f in fields(SimTask)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _BadAdminRequest(f"unknown task fields: {', '.join(unknown)}")
    for name, value in body.items():
        if name == "task_time_ms":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        elif name in ("error_code", "error_msg"):
            ok = value is None or isinstance(value, str)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise _BadAdminRequest(f"{name} has the wrong type")


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadAdminRequest(f"{key} must be a number")
    return float(value)


# ---------------------------------------------------------------------------------------------
# The server


class Simulator:
    """KPS (running, failed and task-status APIs) and IAM password tokens on one loopback port."""

    def __init__(
        self,
        *,
        project_id: str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        project_name: str = "cn-north-4",
        tasks: Iterable[SimTask] = (),
        latency: float = 0.0,
        token_lifetime: float = 86400.0,
        users: Mapping[tuple[str, str], str] | None = None,
        static_tokens: Iterable[str] = (),
        aksk: Mapping[str, str] | None = None,
        security_tokens: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.project_id = project_id
        self.project_name = project_name
        self.latency = latency
        self.token_lifetime = token_lifetime
        self.clock = clock
        self.requests: list[RecordedRequest] = []
        self.after_request: Callable[[RecordedRequest], None] | None = None
        # Asked on each KPS request that no queued fault matched; a Fault it returns is applied
        # to that request (the fault soak draws faults at random this way).
        self.pick_fault: Callable[[RecordedRequest], Fault | None] | None = None
        self._tasks = _TaskList(tasks)
        self._users = dict(users or {})
        self._static_tokens = frozenset(static_tokens)
        self._aksk = dict(aksk or {})
        self._security_tokens = frozenset(security_tokens)
        self._open = not (self._static_tokens or self._users or self._aksk)
        self._issued: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self._faults: list[_ArmedFault] = []
        self._view: _View | None = None
        self._index: tuple[int, dict[str, SimTask]] | None = None  # members revision, by id
        self._last_default_ms = 0
        self._by_route: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (port 0 picks a free one); `url` is set afterwards."""
        app = web.Application(middlewares=[self._gateway])
        kps = "/v3/{project_id}"
        app.router.add_get(f"{kps}/running-tasks", self._running_tasks)
        app.router.add_get(f"{kps}/failed-tasks", self._failed_tasks)
        app.router.add_get(f"{kps}/tasks/{{task_id}}", self._task_status)
        app.router.add_post(f"{_IAM_PREFIX}/tokens", self._issue_token)
        app.router.add_get("/_sim/tasks", self._admin_list_tasks)
        app.router.add_post("/_sim/tasks", self._admin_add_task)
        app.router.add_post("/_sim/tasks/{task_id}/finish", self._admin_finish_task)
        app.router.add_post("/_sim/tasks/{task_id}/age", self._admin_age_task)
        app.router.add_post("/_sim/faults", self._admin_inject)
        app.router.add_delete("/_sim/faults", self._admin_clear_faults)
        app.router.add_put("/_sim/latency", self._admin_latency)
        app.router.add_put("/_sim/token-lifetime", self._admin_token_lifetime)
        app.router.add_post("/_sim/tokens/expire", self._admin_expire_tokens)
        app.router.add_get("/_sim/stats", self._admin_stats)
        # handler_cancellation: a client that gives up on a slow answer frees its handler, so
        # stop() does not wait out an injected delay.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://{bound_host}:{bound_port}"

    async def stop(self) -> None:
        """Close the listener and any open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """Base URL for both KPS and IAM, e.g. http://127.0.0.1:40123."""
        if self._url is None:
            raise RuntimeError("the simulator has not been started")
        return self._url

    # -- tasks ----------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[SimTask]:
        """Every task, running or finished, in insertion order; edit it in place or replace it."""
        return self._tasks

    @tasks.setter
    def tasks(self, tasks: list[SimTask]) -> None:
        self._tasks = _TaskList(tasks)
        _members_changed()

    def add_task(self, **fields: Any) -> SimTask:
        """Add a task; missing fields get a running reset started now with fresh uuids.

        A default start time is at least 1 ms after the previous default one, so tasks added in
        a row list in the order they were added rather than by their random ids.
        """
        if "task_time_ms" not in fields:
            self._last_default_ms = max(int(self.clock() * 1000), self._last_default_ms + 1)
        defaults: dict[str, Any] = {
            "task_id": str(uuid.uuid4()),
            "operate_type": "RUNNING_RESET",
            "task_time_ms": self._last_default_ms,
            "server_name": f"ecs-{secrets.token_hex(2)}",
            "server_id": str(uuid.uuid4()),
            "keypair_name": "KeyPair-demo",
        }
        task = SimTask(**{**defaults, **fields})
        self._tasks.append(task)
        return task

    def find_task(self, task_id: str) -> SimTask | None:
        """The task with this id, running or not."""
        return self._ids().get(task_id)

    def finish_task(
        self,
        task_id: str,
        *,
        failed: bool = False,
        error_code: str | None = None,
        error_msg: str | None = None,
    ) -> None:
        """Mark a task SUCCESS_x or FAILED_x (x kept from its status); KeyError if unknown."""
        task = self.find_task(task_id)
        if task is None:
            raise KeyError(task_id)
        _, sep, action = task.status.partition("_")
        outcome = "FAILED" if failed else "SUCCESS"
        task.status = f"{outcome}{sep}{action}"
        task.error_code = error_code
        task.error_msg = error_msg

    def running(self) -> list[SimTask]:
        """Running (and queued) tasks in the order KPS pages them."""
        return list(self._current_view().running)

    def failed(self) -> list[SimTask]:
        """Failed tasks in the order KPS pages them."""
        return list(self._current_view().failed)

    def _current_view(self) -> _View:
        view = self._view
        listing, order, members = _Revision.listing, _Revision.order, _Revision.members
        if view is not None and view.listing == listing:
            return view
        if view is not None and view.order == order:
            ordered = view.ordered  # only statuses changed
        elif view is not None and view.members == members:
            # Same tasks, some start time changed: the old order is nearly right, and timsort
            # re-sorts a nearly sorted list in about linear time.
            ordered = sorted(view.ordered, key=_order)
        else:
            ordered = sorted(self._tasks, key=_order)
        view = _View(
            listing=listing,
            order=order,
            members=members,
            ordered=ordered,
            running=[task for task in ordered if task.status.startswith(_RUNNING_PREFIXES)],
            failed=[task for task in ordered if task.status.startswith("FAILED")],
        )
        self._view = view
        return view

    def _ids(self) -> dict[str, SimTask]:
        if self._index is None or self._index[0] != _Revision.members:
            self._index = (_Revision.members, {task.task_id: task for task in self._tasks})
        return self._index[1]

    # -- faults and recording -------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Queue a fault; the first queued fault matching a request is used first."""
        self._faults.append(_ArmedFault(fault, fault.times))

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    def count(self, method: str, path_prefix: str) -> int:
        """How many recorded requests used `method` on a path starting with `path_prefix`."""
        method = method.upper()
        return sum(
            1 for r in self.requests if r.method == method and r.path.startswith(path_prefix)
        )

    def expire_tokens(self) -> None:
        """Make every token IAM has issued so far expired (static tokens are unaffected)."""
        past = self.clock() - 1
        self._issued = dict.fromkeys(self._issued, past)

    def _take_fault(self, path: str) -> Fault | None:
        iam = path.startswith(_IAM_PREFIX)
        for armed in self._faults:
            fault = armed.fault
            if not path.startswith(fault.path):
                continue
            if iam and not fault.path.startswith(_IAM_PREFIX):
                continue  # the default "/v3/" means KPS; IAM faults must name /v3/auth
            if armed.remaining > 0:
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._faults.remove(armed)
            return fault
        return None

    def _record(self, request: web.Request) -> RecordedRequest:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query.items()),
            headers={name.lower(): value for name, value in request.headers.items()},
            time=self.clock(),
        )
        self.requests.append(record)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(unknown)"
        self._by_route[f"{request.method} {route}"] += 1
        return record

    # -- the gateway: recording, latency, faults, auth, project check ---------------------------

    @web.middleware
    async def _gateway(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request_id = uuid.uuid4().hex
        request[_REQUEST_ID] = request_id
        path = request.path
        if path.startswith(_ADMIN_PREFIX):
            answer = await self._dispatch(request, handler)
            answer.headers["X-Request-Id"] = request_id
            return answer

        record = self._record(request)
        kps = path.startswith("/v3/") and not path.startswith(_IAM_PREFIX)
        if kps and self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(path)
        if fault is None and kps and self.pick_fault is not None:
            fault = self.pick_fault(record)
        response: web.StreamResponse | None = None
        if fault is not None:
            if fault.kind == "disconnect":
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)  # never reaches the client
            if fault.kind == "latency":
                await asyncio.sleep(fault.delay)
            else:
                response = self._fault_response(fault, request_id)
        if response is None and kps:
            response = await self._authenticate(request)
            if response is None:
                response = self._check_project(request)
        if response is None:
            response = await self._dispatch(request, handler)
        response.headers["X-Request-Id"] = request_id
        self._by_status[response.status] += 1
        if kps and self.after_request is not None:
            self.after_request(record)
        return response

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                # APIG answers an unknown path or method with APIG.0101 (kps-api.md §3.3).
                return _apig_error(
                    request,
                    404,
                    "APIG.0101",
                    "The API does not exist or has not been published in the environment.",
                )
            return web.Response(status=exc.status, text=exc.text)

    def _fault_response(self, fault: Fault, request_id: str) -> web.Response:
        kind = fault.kind
        if kind == "garbage":
            # Claims JSON, is not: a client must not trust the Content-Type.
            return web.Response(
                status=200, text="upstream said: <<ok>> {truncated", content_type=_JSON
            )
        if kind == "wrong_types":
            return _json_response(200, _wrong_types_body())
        if kind == "retry_after":
            body = {
                "error_code": "APIG.0308",
                "error_msg": "The throttling threshold has been reached: "
                "policy user over ratelimit,limit:200,time:1 second",
                "request_id": request_id,
            }
            return _json_response(429, body, {"Retry-After": f"{fault.delay:g}"})
        if kind == "html":
            html = f"<html><body><h1>{fault.status} {_phrase(fault.status)}</h1></body></html>"
            return web.Response(status=fault.status, text=html, content_type="text/html")
        headers = {}
        if fault.status == 429 and fault.delay > 0:
            headers["Retry-After"] = f"{fault.delay:g}"
        if fault.shape == "text":
            return web.Response(
                status=fault.status,
                text=fault.error_msg,
                content_type="text/plain",
                headers=headers,
            )
        body = _error_body(fault.shape, fault.status, fault.error_code, fault.error_msg, request_id)
        return _json_response(fault.status, body, headers)

    async def _authenticate(self, request: web.Request) -> web.Response | None:
        if self._open:
            return None
        token = request.headers.get("X-Auth-Token")
        if token:
            if token in self._static_tokens:
                return None
            expires = self._issued.get(token)
            if expires is None:
                return _apig_error(
                    request,
                    401,
                    "APIG.0301",
                    "Incorrect IAM authentication information: decrypt token fail",
                )
            if self.clock() >= expires:
                return _apig_error(request, 401, "APIG.0307", "The token must be updated.")
            return None
        authorization = request.headers.get("Authorization")
        if authorization:
            return await self._check_signature(request, authorization)
        return _apig_error(
            request,
            401,
            "APIG.0301",
            "Incorrect IAM authentication information: x-auth-token not found",
        )

    async def _check_signature(
        self, request: web.Request, authorization: str
    ) -> web.Response | None:
        def refuse(detail: str) -> web.Response:
            return _apig_error(
                request, 401, "APIG.0301", f"Incorrect IAM authentication information: {detail}"
            )

        parts = _parse_authorization(authorization)
        if parts is None:
            return refuse("verify aksk signature fail")
        secret_key = self._aksk.get(parts["Access"])
        if secret_key is None:
            return refuse("verify aksk signature fail")
        sdk_date = request.headers.get("X-Sdk-Date", "")
        try:
            signed_at = datetime.strptime(sdk_date, _SDK_DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return refuse("verify aksk signature fail")
        if abs(signed_at.timestamp() - self.clock()) > _MAX_CLOCK_SKEW:
            return _apig_error(
                request,
                401,
                "APIG.0303",
                "Incorrect app authentication information: signature expired",
            )
        if self._security_tokens and (
            request.headers.get("X-Security-Token") not in self._security_tokens
        ):
            return refuse("verify security token fail")
        headers = {name.lower(): ",".join(request.headers.getall(name)) for name in request.headers}
        try:
            expected = expected_signature(
                method=request.method,
                raw_path=request.rel_url.raw_path,
                raw_query=request.rel_url.raw_query_string,
                headers=headers,
                signed_headers=[h for h in parts["SignedHeaders"].split(";") if h],
                body=await request.read(),
                secret_key=secret_key,
            )
        except KeyError:
            return refuse("verify aksk signature fail")
        if not hmac.compare_digest(expected, parts["Signature"]):
            return refuse("verify aksk signature fail")
        return None

    def _check_project(self, request: web.Request) -> web.Response | None:
        segments = request.path.split("/")
        if len(segments) > 2 and segments[2] != self.project_id:
            return _apig_error(
                request, 403, "APIG.0302", "The IAM user is not authorized to access the API."
            )
        return None

    # -- KPS ------------------------------------------------------------------------------------

    async def _running_tasks(self, request: web.Request) -> web.Response:
        return self._page(request, self._current_view().running, _task_json)

    async def _failed_tasks(self, request: web.Request) -> web.Response:
        return self._page(request, self._current_view().failed, _failed_task_json)

    def _page(
        self,
        request: web.Request,
        tasks: list[SimTask],
        render: Callable[[SimTask], dict[str, Any]],
    ) -> web.Response:
        limit = _paging_value(request.query.get("limit"), _DEFAULT_LIMIT, 1)
        if limit is None:
            return _kps_error(400, "KPS.0002", "Invalid parameter: limit must be an integer >= 1")
        offset = _paging_value(request.query.get("offset"), 0, 0)
        if offset is None:
            return _kps_error(400, "KPS.0002", "Invalid parameter: offset must be an integer >= 0")
        page = tasks[offset : offset + limit]
        return _json_response(200, {"total": len(tasks), "tasks": [render(t) for t in page]})

    async def _task_status(self, request: web.Request) -> web.Response:
        task = self.find_task(request.match_info["task_id"])
        if task is None:
            return _kps_error(404, "KPS.0404", "task not found")
        body = {"server_id": task.server_id, "task_id": task.task_id, "task_status": task.status}
        return _json_response(200, body)

    # -- IAM ------------------------------------------------------------------------------------

    async def _issue_token(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _keystone_error(400, "The request body is not valid JSON.")
        identity = _dig(body, "auth", "identity")
        methods = _dig(identity, "methods")
        user = _dig(identity, "password", "user")
        name, password = _dig(user, "name"), _dig(user, "password")
        domain = _dig(user, "domain", "name")
        project = _dig(body, "auth", "scope", "project")
        if not (
            isinstance(methods, list)
            and "password" in methods
            and all(isinstance(v, str) and v for v in (name, password, domain))
            and isinstance(project, dict)
            and (isinstance(project.get("id"), str) or isinstance(project.get("name"), str))
        ):
            return _keystone_error(
                400,
                "Invalid request body: expected password identity (user name, password, "
                "domain name) and a project scope (id or name).",
            )
        if not self._password_ok(domain, name, password):
            return _keystone_error(401, "The username or password is wrong.")
        if (
            project.get("id", self.project_id) != self.project_id
            or project.get("name", self.project_name) != self.project_name
        ):
            # A simulator choice: it hosts one project, so any other scope is refused.
            return _keystone_error(400, "The project in the scope does not exist.")
        return self._token_response(request, domain, name)

    def _password_ok(self, domain: str, name: str, password: str) -> bool:
        if self._open:
            return True
        known = self._users.get((domain, name))
        return known is not None and hmac.compare_digest(known.encode(), password.encode())

    def _token_response(self, request: web.Request, domain: str, name: str) -> web.Response:
        issued = self.clock()
        expires = issued + self.token_lifetime
        # Real tokens are long opaque strings starting "MII"; nothing may parse them.
        token = "MII" + secrets.token_urlsafe(48)
        self._issued[token] = expires
        domain_ref = {"id": uuid.uuid5(uuid.NAMESPACE_DNS, domain).hex, "name": domain}
        body: dict[str, Any] = {
            "token": {
                "expires_at": _iso(expires),
                "issued_at": _iso(issued),
                "methods": ["password"],
                "project": {
                    "id": self.project_id,
                    "name": self.project_name,
                    "domain": domain_ref,
                },
                "user": {
                    "id": uuid.uuid5(uuid.NAMESPACE_DNS, f"{domain}/{name}").hex,
                    "name": name,
                    "domain": domain_ref,
                    "password_expires_at": "",
                },
                "roles": [{"id": "0", "name": "op_fine_grained"}],
            }
        }
        if request.query.get("nocatalog") != "true":
            endpoint = {"url": self.url, "region": self.project_name, "interface": "public"}
            body["token"]["catalog"] = [
                {"type": "kms", "name": "kms", "endpoints": [endpoint]},
                {"type": "identity", "name": "iam", "endpoints": [endpoint]},
            ]
        return _json_response(201, body, {"X-Subject-Token": token})

    # -- admin API (no auth; for a demo, soak or benchmark in another process) -----------------

    async def _admin_list_tasks(self, request: web.Request) -> web.Response:
        return _json_response(200, {"tasks": [asdict(t) for t in self._tasks]})

    async def _admin_add_task(self, request: web.Request) -> web.Response:
        try:
            body = await _admin_json(request)
            _check_task_fields(body)
            task = self.add_task(**body)
        except _BadAdminRequest as exc:
            return _json_response(400, {"error": str(exc)})
        return _json_response(201, asdict(task))

    async def _admin_finish_task(self, request: web.Request) -> web.Response:
        try:
            body = await _admin_json(request)
        except _BadAdminRequest as exc:
            return _json_response(400, {"error": str(exc)})
        task_id = request.match_info["task_id"]
        try:
            self.finish_task(
                task_id,
                failed=bool(body.get("failed", False)),
                error_code=body.get("error_code"),
                error_msg=body.get("error_msg"),
            )
        except KeyError:
            return _json_response(404, {"error": f"no task {task_id}"})
        task = self.find_task(task_id)
        return _json_response(200, asdict(task) if task else {})

    async def _admin_age_task(self, request: web.Request) -> web.Response:
        try:
            minutes = _number(await _admin_json(request), "minutes")
        except _BadAdminRequest as exc:
            return _json_response(400, {"error": str(exc)})
        task = self.find_task(request.match_info["task_id"])
        if task is None:
            return _json_response(404, {"error": "no such task"})
        start = task.task_time_ms if task.task_time_ms is not None else int(self.clock() * 1000)
        task.task_time_ms = start - int(minutes * 60_000)
        return _json_response(200, asdict(task))

    async def _admin_inject(self, request: web.Request) -> web.Response:
        try:
            body = await _admin_json(request)
            fault = Fault(**body)
        except (_BadAdminRequest, TypeError, ValueError) as exc:
            return _json_response(400, {"error": str(exc)})
        self.inject(fault)
        return _json_response(201, asdict(fault))

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return _json_response(200, {"faults": 0})

    async def _admin_latency(self, request: web.Request) -> web.Response:
        try:
            seconds = _number(await _admin_json(request), "seconds")
        except _BadAdminRequest as exc:
            return _json_response(400, {"error": str(exc)})
        self.latency = max(0.0, seconds)
        return _json_response(200, {"seconds": self.latency})

    async def _admin_token_lifetime(self, request: web.Request) -> web.Response:
        try:
            seconds = _number(await _admin_json(request), "seconds")
        except _BadAdminRequest as exc:
            return _json_response(400, {"error": str(exc)})
        self.token_lifetime = seconds
        return _json_response(200, {"seconds": self.token_lifetime})

    async def _admin_expire_tokens(self, request: web.Request) -> web.Response:
        self.expire_tokens()
        return _json_response(200, {"expired": len(self._issued)})

    async def _admin_stats(self, request: web.Request) -> web.Response:
        view = self._current_view()
        body = {
            "requests": len(self.requests),
            "by_route": dict(self._by_route),
            "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
            "tasks": {
                "total": len(self._tasks),
                "running": len(view.running),
                "failed": len(view.failed),
            },
            "faults_pending": len(self._faults),
            "tokens_issued": len(self._issued),
            "latency": self.latency,
        }
        return _json_response(200, body)


# ---------------------------------------------------------------------------------------------
# Standalone: python -m bot.simulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot.simulator",
        description="Run the KPS/IAM simulator until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--tasks", type=int, default=37, help="running tasks to seed")
    parser.add_argument("--token", help="a static X-Auth-Token that never expires")
    parser.add_argument("--user", metavar="DOMAIN:USER:PASSWORD", help="an IAM password user")
    parser.add_argument("--aksk", metavar="AK:SK", help="an AK/SK pair for request signing")
    parser.add_argument("--seed", type=int, help="random seed for reproducible tasks")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per KPS answer")
    parser.add_argument("--token-lifetime", type=float, default=86400.0)
    parser.add_argument("--project-id", default="0f1e2d3c4b5a69788796a5b4c3d2e1f0")
    parser.add_argument("--project-name", default="cn-north-4")
    return parser


def _build(args: argparse.Namespace) -> Simulator:
    users: dict[tuple[str, str], str] = {}
    if args.user:
        domain, _, rest = args.user.partition(":")
        name, _, password = rest.partition(":")
        if not (domain and name and password):
            raise SystemExit("--user must look like DOMAIN:USER:PASSWORD")
        users[(domain, name)] = password
    aksk: dict[str, str] = {}
    if args.aksk:
        ak, _, sk = args.aksk.partition(":")
        if not (ak and sk):
            raise SystemExit("--aksk must look like AK:SK")
        aksk[ak] = sk
    return Simulator(
        project_id=args.project_id,
        project_name=args.project_name,
        tasks=seed_tasks(args.tasks, rng=random.Random(args.seed)),
        latency=args.latency,
        token_lifetime=args.token_lifetime,
        users=users,
        static_tokens=[args.token] if args.token else [],
        aksk=aksk,
    )


def _banner(sim: Simulator, args: argparse.Namespace) -> str:
    lines = [
        f"KPS/IAM simulator listening on {sim.url}",
        f"  KPS_ENDPOINT={sim.url}",
        f"  IAM_ENDPOINT={sim.url}",
        f"  HUAWEICLOUD_SDK_PROJECT_ID={sim.project_id}",
        f"  HUAWEICLOUD_REGION={sim.project_name}",
    ]
    # These are the simulator's own throwaway credentials, given on its command line.
    if args.token:
        lines.append(f"  auth: KPS_AUTH_TOKEN={args.token}  (static token, never expires)")
    if args.user:
        domain, name, password = args.user.split(":", 2)
        lines.append(
            f"  auth: HUAWEICLOUD_DOMAIN={domain} HUAWEICLOUD_USERNAME={name} "
            f"HUAWEICLOUD_PASSWORD={password}"
        )
    if args.aksk:
        ak, sk = args.aksk.split(":", 1)
        lines.append(f"  auth: HUAWEICLOUD_SDK_AK={ak} HUAWEICLOUD_SDK_SK={sk}")
    if not (args.token or args.user or args.aksk):
        lines.append("  auth: none configured, every request is accepted")
    lines.append(f"{len(sim.running())} running tasks; admin API under {sim.url}/_sim/")
    lines.append("Ctrl-C or SIGTERM stops it.")
    return "\n".join(lines)


async def _serve(args: argparse.Namespace) -> None:
    sim = _build(args)
    await sim.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(_banner(sim, args), flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator standalone with seeded tasks; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # e.g. the port is taken
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
