"""The admin API under `/_sim/`: no auth, for a demo, soak or benchmark in another process.

No login, so every route answers only a local `Host`, and a POST only JSON (bot.sandbox.guard).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from bot.sandbox.guard import guarded
from bot.sandbox.simulator.answers import json_response
from bot.sandbox.simulator.faults import Fault
from bot.sandbox.simulator.tasks import SimTask

if TYPE_CHECKING:
    from bot.sandbox.simulator.server import Simulator

PREFIX: Final = "/_sim/"


def register(router: web.UrlDispatcher, sim: Simulator) -> None:
    """Add the `/_sim/` routes that read and steer `sim`."""
    admin = _Admin(sim)
    router.add_get("/_sim/tasks", guarded(admin.list_tasks))
    router.add_post("/_sim/tasks", guarded(admin.add_task))
    router.add_post("/_sim/tasks/{task_id}/finish", guarded(admin.finish_task))
    router.add_post("/_sim/tasks/{task_id}/age", guarded(admin.age_task))
    router.add_post("/_sim/faults", guarded(admin.inject))
    router.add_delete("/_sim/faults", guarded(admin.clear_faults))
    router.add_put("/_sim/latency", guarded(admin.latency))
    router.add_put("/_sim/token-lifetime", guarded(admin.token_lifetime))
    router.add_post("/_sim/tokens/expire", guarded(admin.expire_tokens))
    router.add_get("/_sim/stats", guarded(admin.stats))


class _BadRequest(Exception):
    pass


class _Admin:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    async def list_tasks(self, request: web.Request) -> web.Response:
        return json_response(200, {"tasks": [asdict(t) for t in self.sim.tasks]})

    async def add_task(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            _check_task_fields(body)
            task = self.sim.add_task(**body)
        except _BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(201, asdict(task))

    async def finish_task(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
        except _BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        task_id = request.match_info["task_id"]
        try:
            self.sim.finish_task(
                task_id,
                failed=bool(body.get("failed", False)),
                error_code=body.get("error_code"),
                error_msg=body.get("error_msg"),
            )
        except KeyError:
            return json_response(404, {"error": f"no task {task_id}"})
        task = self.sim.find_task(task_id)
        return json_response(200, asdict(task) if task else {})

    async def age_task(self, request: web.Request) -> web.Response:
        try:
            minutes = _number(await _body(request), "minutes")
        except _BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        task = self.sim.find_task(request.match_info["task_id"])
        if task is None:
            return json_response(404, {"error": "no such task"})
        start = task.task_time_ms if task.task_time_ms is not None else int(self.sim.clock() * 1000)
        task.task_time_ms = start - int(minutes * 60_000)
        return json_response(200, asdict(task))

    async def inject(self, request: web.Request) -> web.Response:
        try:
            body = await _body(request)
            fault = Fault(**body)
        except (_BadRequest, TypeError, ValueError) as exc:
            return json_response(400, {"error": str(exc)})
        self.sim.inject(fault)
        return json_response(201, asdict(fault))

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.sim.clear_faults()
        return json_response(200, {"faults": 0})

    async def latency(self, request: web.Request) -> web.Response:
        try:
            seconds = _number(await _body(request), "seconds")
        except _BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        self.sim.latency = max(0.0, seconds)
        return json_response(200, {"seconds": self.sim.latency})

    async def token_lifetime(self, request: web.Request) -> web.Response:
        try:
            seconds = _number(await _body(request), "seconds")
        except _BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        self.sim.token_lifetime = seconds
        return json_response(200, {"seconds": self.sim.token_lifetime})

    async def expire_tokens(self, request: web.Request) -> web.Response:
        return json_response(200, {"expired": self.sim.expire_tokens()})

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(200, self.sim.stats())


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


def _check_task_fields(body: Mapping[str, Any]) -> None:
    # A wrong type here would only surface later, as a failed sort in some listing.
    known = {f.name for f in fields(SimTask)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise _BadRequest(f"unknown task fields: {', '.join(unknown)}")
    for name, value in body.items():
        if name == "task_time_ms":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        elif name in ("error_code", "error_msg"):
            ok = value is None or isinstance(value, str)
        elif name == "raw":  # any JSON values: it exists to send wrong ones
            ok = value is None or isinstance(value, dict)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise _BadRequest(f"{name} has the wrong type")


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadRequest(f"{key} must be a number")
    return float(value)
