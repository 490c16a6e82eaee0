"""Injectable misbehaviour: what a fault is, the queue that hands faults out, how each answers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from bot.sandbox.simulator.answers import JSON, error_body, json_response, phrase

FAULT_KINDS: Final = frozenset(
    {"status", "latency", "garbage", "wrong_types", "retry_after", "disconnect", "html", "echo"}
)
ERROR_SHAPES: Final = frozenset({"flat", "nested", "apig", "keystone", "text"})
IAM_PREFIX: Final = "/v3/auth"


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


@dataclass(slots=True)
class _ArmedFault:
    fault: Fault
    remaining: int  # -1: until cleared


class FaultQueue:
    """Faults waiting for their requests, first queued first used."""

    def __init__(self) -> None:
        self._armed: list[_ArmedFault] = []

    def __len__(self) -> int:
        return len(self._armed)

    def add(self, fault: Fault) -> None:
        """Queue `fault` for its next `times` matching requests."""
        self._armed.append(_ArmedFault(fault, fault.times))

    def clear(self) -> None:
        """Drop every queued fault."""
        self._armed.clear()

    def take(self, path: str) -> Fault | None:
        """The first queued fault for a request to `path`, counted as used once."""
        iam = path.startswith(IAM_PREFIX)
        for armed in self._armed:
            fault = armed.fault
            if not path.startswith(fault.path):
                continue
            if iam and not fault.path.startswith(IAM_PREFIX):
                continue  # the default "/v3/" means KPS; IAM faults must name /v3/auth
            if armed.remaining > 0:
                armed.remaining -= 1
                if armed.remaining == 0:
                    self._armed.remove(armed)
            return fault
        return None


def fault_response(fault: Fault, request_id: str) -> web.Response:
    """The answer a fault gives in place of the real one (not for latency, disconnect, echo)."""
    kind = fault.kind
    if kind == "garbage":
        # Claims JSON, is not: a client must not trust the Content-Type.
        return web.Response(status=200, text="upstream said: <<ok>> {truncated", content_type=JSON)
    if kind == "wrong_types":
        return json_response(200, _wrong_types_body())
    if kind == "retry_after":
        body = {
            "error_code": "APIG.0308",
            "error_msg": "The throttling threshold has been reached: "
            "policy user over ratelimit,limit:200,time:1 second",
            "request_id": request_id,
        }
        return json_response(429, body, {"Retry-After": f"{fault.delay:g}"})
    if kind == "html":
        html = f"<html><body><h1>{fault.status} {phrase(fault.status)}</h1></body></html>"
        return web.Response(status=fault.status, text=html, content_type="text/html")
    headers = {}
    if fault.status == 429 and fault.delay > 0:
        headers["Retry-After"] = f"{fault.delay:g}"
    if fault.shape == "text":
        return web.Response(
            status=fault.status, text=fault.error_msg, content_type="text/plain", headers=headers
        )
    body = error_body(fault.shape, fault.status, fault.error_code, fault.error_msg, request_id)
    return json_response(fault.status, body, headers)


def echo_response(
    fault: Fault, request_id: str, request: str, headers: Mapping[str, str], body: str
) -> web.Response:
    """An error whose message quotes the request, credentials and all, as some gateways do."""
    sent = "; ".join(f"{name}: {value}" for name, value in headers.items())
    message = f"{fault.error_msg}. Request: {request} body {body or '(none)'} headers {{{sent}}}"
    if fault.shape == "text":
        return web.Response(status=fault.status, text=message, content_type="text/plain")
    shaped = error_body(fault.shape, fault.status, fault.error_code, message, request_id)
    return json_response(fault.status, shaped)


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
