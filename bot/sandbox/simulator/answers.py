"""What KPS, the API gateway and IAM answer, built here: the simulator imports no bot code.

The shapes follow ../shared/research/kps-api.md §2-§5.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web

from bot.sandbox.simulator.tasks import SimTask

JSON: Final = "application/json"
# The gateway's id for one request: sent as X-Request-Id and inside APIG error bodies.
REQUEST_ID: Final = web.RequestKey("request_id", str)


def phrase(status: int) -> str:
    """The HTTP reason phrase for `status`, or "Error" for a code with none."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    """`body` as a JSON answer."""
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=JSON,
        headers=dict(headers or {}),
    )


def kps_error(status: int, code: str, message: str) -> web.Response:
    """An error as KPS itself answers it."""
    return json_response(status, {"error_code": code, "error_msg": message})


def apig_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """An error as the API gateway answers it, with the request id in the body."""
    body = {"error_code": code, "error_msg": message, "request_id": request[REQUEST_ID]}
    return json_response(status, body)


def keystone_error(status: int, message: str) -> web.Response:
    """An error as IAM (Keystone) answers it."""
    body = {"error": {"code": status, "message": message, "title": phrase(status)}}
    return json_response(status, body)


def error_body(shape: str, status: int, code: str, message: str, request_id: str) -> Any:
    """An error body in one of the shapes Huawei Cloud services are seen to use."""
    if shape == "nested":
        return {"error": {"error_code": code, "error_msg": message}}
    if shape == "apig":
        return {"error_code": code, "error_msg": message, "request_id": request_id}
    if shape == "keystone":
        return {"error": {"code": status, "message": message, "title": phrase(status)}}
    return {"error_code": code, "error_msg": message}


def task_json(task: SimTask) -> dict[str, Any]:
    """One running-tasks item; the task's `raw` fields, if any, replace its own."""
    # task_time is epoch milliseconds as a JSON string, as the docs' example shows (§2).
    body = {
        "task_id": task.task_id,
        "operate_type": task.operate_type,
        "task_time": None if task.task_time_ms is None else str(task.task_time_ms),
        "server_name": task.server_name,
        "server_id": task.server_id,
        "keypair_name": task.keypair_name,
    }
    if task.raw:
        body.update(task.raw)
    return body


def failed_task_json(task: SimTask) -> dict[str, Any]:
    """One failed-tasks item: a running-tasks item plus the task's error."""
    body = task_json(task)
    body["task_error_code"] = task.error_code
    body["task_error_msg"] = task.error_msg
    return body


def iso(epoch: float) -> str:
    """A time in IAM's format: microseconds and a Z, e.g. 2020-01-04T09:05:22.701000Z (§4)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
