"""Simulated KPS and IAM over HTTP: the gateway (recording, latency, faults, auth), the routes.

Tests, the demo, benchmarks and the fault soak all talk to it over loopback, some from another
process through the `/_sim/` admin API. It imports nothing from the bot, so the bot's client and
this server are two readings of the same documents (../shared/research/kps-api.md).

Authentication: when none of `static_tokens`, `users` or `aksk` is configured, every KPS request
is accepted without credentials (handy for quick tests) and IAM issues a token for any password.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Self

from aiohttp import web
from aiohttp.typedefs import Handler

from bot.sandbox.simulator import admin
from bot.sandbox.simulator.answers import (
    REQUEST_ID,
    apig_error,
    failed_task_json,
    iso,
    json_response,
    keystone_error,
    kps_error,
    task_json,
)
from bot.sandbox.simulator.faults import (
    IAM_PREFIX,
    Fault,
    FaultQueue,
    echo_response,
    fault_response,
)
from bot.sandbox.simulator.signing import check_signature
from bot.sandbox.simulator.tasks import SimTask, TaskList

_DEFAULT_LIMIT: Final = 1000  # the running-tasks page documents 1000 as the default limit
_DIGITS: Final = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One KPS or IAM request as it arrived (admin `/_sim/` calls are not recorded)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)  # lowercased names; holds the credentials sent
    time: float  # clock() on arrival


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
        self._tasks = TaskList(tasks)
        self._users = dict(users or {})
        self._static_tokens = frozenset(static_tokens)
        self._aksk = dict(aksk or {})
        self._security_tokens = frozenset(security_tokens)
        self._open = not (self._static_tokens or self._users or self._aksk)
        self._issued: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self._faults = FaultQueue()
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
        app.router.add_post(f"{IAM_PREFIX}/tokens", self._issue_token)
        admin.register(app.router, self)
        # handler_cancellation: a client that gives up on a slow answer frees its handler, so
        # stop() does not wait out an injected delay.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:  # the port is taken: leave nothing half-started behind
            await runner.cleanup()
            raise
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
        # A fresh list: its views and index start empty, so nothing stale can be served.
        self._tasks = TaskList(tasks)

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
        return self._tasks.find(task_id)

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
        return list(self._tasks.view().running)

    def failed(self) -> list[SimTask]:
        """Failed tasks in the order KPS pages them."""
        return list(self._tasks.view().failed)

    # -- faults and recording -------------------------------------------------------------------

    def inject(self, fault: Fault) -> None:
        """Queue a fault; the first queued fault matching a request is used first."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self._faults.clear()

    def count(self, method: str, path_prefix: str) -> int:
        """How many recorded requests used `method` on a path starting with `path_prefix`."""
        method = method.upper()
        return sum(
            1 for r in self.requests if r.method == method and r.path.startswith(path_prefix)
        )

    def expire_tokens(self) -> int:
        """Make every token IAM has issued so far expired (static tokens are unaffected).

        Returns how many tokens IAM has issued.
        """
        past = self.clock() - 1
        self._issued = dict.fromkeys(self._issued, past)
        return len(self._issued)

    def stats(self) -> dict[str, Any]:
        """Counts of requests (by route and status), tasks, pending faults and issued tokens."""
        view = self._tasks.view()
        return {
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
        request[REQUEST_ID] = request_id
        path = request.path
        if path.startswith(admin.PREFIX):
            answer = await self._dispatch(request, handler)
            answer.headers["X-Request-Id"] = request_id
            return answer

        record = self._record(request)
        kps = path.startswith("/v3/") and not path.startswith(IAM_PREFIX)
        if kps and self.latency > 0:
            await asyncio.sleep(self.latency)
        fault = self._faults.take(path)
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
            elif fault.kind == "echo":
                line = f"{request.method} {request.path_qs}"
                body = await request.text()
                response = echo_response(fault, request_id, line, request.headers, body)
            else:
                response = fault_response(fault, request_id)
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
                return apig_error(
                    request,
                    404,
                    "APIG.0101",
                    "The API does not exist or has not been published in the environment.",
                )
            return web.Response(status=exc.status, text=exc.text)

    async def _authenticate(self, request: web.Request) -> web.Response | None:
        if self._open:
            return None
        token = request.headers.get("X-Auth-Token")
        if token:
            if token in self._static_tokens:
                return None
            expires = self._issued.get(token)
            if expires is None:
                return apig_error(
                    request,
                    401,
                    "APIG.0301",
                    "Incorrect IAM authentication information: decrypt token fail",
                )
            if self.clock() >= expires:
                return apig_error(request, 401, "APIG.0307", "The token must be updated.")
            return None
        authorization = request.headers.get("Authorization")
        if authorization:
            return await check_signature(
                request,
                authorization,
                aksk=self._aksk,
                security_tokens=self._security_tokens,
                now=self.clock(),
            )
        return apig_error(
            request,
            401,
            "APIG.0301",
            "Incorrect IAM authentication information: x-auth-token not found",
        )

    def _check_project(self, request: web.Request) -> web.Response | None:
        segments = request.path.split("/")
        if len(segments) > 2 and segments[2] != self.project_id:
            return apig_error(
                request, 403, "APIG.0302", "The IAM user is not authorized to access the API."
            )
        return None

    # -- KPS ------------------------------------------------------------------------------------

    async def _running_tasks(self, request: web.Request) -> web.Response:
        return self._page(request, self._tasks.view().running, task_json)

    async def _failed_tasks(self, request: web.Request) -> web.Response:
        return self._page(request, self._tasks.view().failed, failed_task_json)

    def _page(
        self,
        request: web.Request,
        tasks: list[SimTask],
        render: Callable[[SimTask], dict[str, Any]],
    ) -> web.Response:
        limit = _paging_value(request.query.get("limit"), _DEFAULT_LIMIT, 1)
        if limit is None:
            return kps_error(400, "KPS.0002", "Invalid parameter: limit must be an integer >= 1")
        offset = _paging_value(request.query.get("offset"), 0, 0)
        if offset is None:
            return kps_error(400, "KPS.0002", "Invalid parameter: offset must be an integer >= 0")
        page = tasks[offset : offset + limit]
        return json_response(200, {"total": len(tasks), "tasks": [render(t) for t in page]})

    async def _task_status(self, request: web.Request) -> web.Response:
        task = self.find_task(request.match_info["task_id"])
        if task is None:
            return kps_error(404, "KPS.0404", "task not found")
        body = {"server_id": task.server_id, "task_id": task.task_id, "task_status": task.status}
        return json_response(200, body)

    # -- IAM ------------------------------------------------------------------------------------

    async def _issue_token(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return keystone_error(400, "The request body is not valid JSON.")
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
            return keystone_error(
                400,
                "Invalid request body: expected password identity (user name, password, "
                "domain name) and a project scope (id or name).",
            )
        if not self._password_ok(domain, name, password):
            return keystone_error(401, "The username or password is wrong.")
        if (
            project.get("id", self.project_id) != self.project_id
            or project.get("name", self.project_name) != self.project_name
        ):
            # A simulator choice: it hosts one project, so any other scope is refused.
            return keystone_error(400, "The project in the scope does not exist.")
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
                "expires_at": iso(expires),
                "issued_at": iso(issued),
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
        return json_response(201, body, {"X-Subject-Token": token})
