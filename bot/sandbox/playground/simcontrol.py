"""The playground's control panel, spoken to the KPS simulator over its `/_sim/` admin API."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any, Final, Literal

import aiohttp

KpsMode = Literal["healthy", "failing", "slow"]
KPS_MODES: Final = ("healthy", "failing", "slow")
OPERATIONS: Final = ("RUNNING_RESET", "RUNNING_REPLACE", "RUNNING_UNBIND", "RUNNING_BIND")
SLOW_SECONDS: Final = 3.0  # slow enough to notice, well inside the bot's KPS timeout

_SERVERS: Final = (
    "web-prod",
    "api-gw-blue",
    "api-gw-green",
    "k8s-node",
    "ci-runner",
    "bastion",
    "db-replica-eu",
    "redis-cache",
    "batch-worker",
)
_KEYPAIRS: Final = ("KeyPair-ops-2025", "kp-deploy-ci", "team-sre-ed25519", "kp-k8s-nodes")
# What a failed task says in the demo; KPS's own codes are undocumented beyond KPS.0002
# (../shared/research/kps-api.md §3), so this one is labelled as made up.
_FAILURE: Final = {
    "error_code": "KPS.DEMO1",
    "error_msg": "The server did not answer the key pair injection (simulated failure)",
}


class SimError(Exception):
    """The simulator refused an admin request; the message says what it answered."""


class SimControl:
    """Adds, ages and finishes tasks, and makes KPS fail or slow, through `/_sim/`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/") + "/_sim"

    async def tasks(self) -> list[dict[str, Any]]:
        """Every task the simulator holds, running or finished."""
        body = await self._call("GET", "/tasks")
        tasks = body.get("tasks")
        return tasks if isinstance(tasks, list) else []

    async def add_task(self, operate_type: str) -> dict[str, Any]:
        """A new running task started now, with a plausible server and key pair name."""
        if operate_type not in OPERATIONS:
            raise SimError(f"unknown operation {operate_type!r}")
        rng = random.Random()
        fields = {
            "operate_type": operate_type,
            "status": operate_type,
            "server_name": f"{rng.choice(_SERVERS)}-{rng.randint(1, 60):02d}",
            "keypair_name": rng.choice(_KEYPAIRS),
        }
        return await self._call("POST", "/tasks", fields)

    async def age_past(self, task_id: str, threshold: timedelta) -> dict[str, Any]:
        """Move a task's start back so that it has run one minute longer than `threshold`."""
        task = next((t for t in await self.tasks() if t.get("task_id") == task_id), None)
        if task is None:
            raise SimError(f"no task {task_id}")
        started = task.get("task_time_ms")
        age_minutes = (time.time() * 1000 - started) / 60_000 if isinstance(started, int) else 0.0
        needed = threshold.total_seconds() / 60 - age_minutes + 1
        return await self._call("POST", f"/tasks/{task_id}/age", {"minutes": max(needed, 1.0)})

    async def finish(self, task_id: str, *, failed: bool) -> dict[str, Any]:
        """End a task with success, or with a failure and its error code and message."""
        body: dict[str, Any] = {"failed": failed, **(_FAILURE if failed else {})}
        return await self._call("POST", f"/tasks/{task_id}/finish", body)

    async def set_kps(self, mode: str) -> None:
        """healthy: no faults, no delay; failing: every KPS call 503s; slow: each takes 3 s."""
        if mode not in KPS_MODES:
            raise SimError(f"unknown KPS mode {mode!r}; use one of {', '.join(KPS_MODES)}")
        await self._call("DELETE", "/faults")
        await self._call("PUT", "/latency", {"seconds": SLOW_SECONDS if mode == "slow" else 0})
        if mode == "failing":
            fault = {
                "kind": "status",
                "status": 503,
                "shape": "apig",
                "error_code": "APIG.0203",
                "error_msg": "Backend unavailable",
                "times": -1,  # until the panel says healthy again
            }
            await self._call("POST", "/faults", fault)

    async def stats(self) -> dict[str, Any]:
        """Counts of tasks, pending faults and the latency the simulator adds."""
        return await self._call("GET", "/stats")

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # Every call but a GET carries a JSON body, even an empty one: the admin API takes a POST
        # only as JSON (its guard against web pages), and the rest are sent alike.
        sent = None if method == "GET" else (body or {})
        async with self._session.request(method, self._base + path, json=sent) as response:
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            if response.status >= 400:
                said = answer.get("error") if isinstance(answer, dict) else None
                raise SimError(f"simulator answered HTTP {response.status}: {said or 'no detail'}")
            return answer if isinstance(answer, dict) else {}
