"""Helpers for the watcher tests: tasks of a given age, a movable clock, reading notices back."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.kps import KPSClient
from bot.outbox import Delivery
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import SimTask, Simulator
from bot.scan import Notices, ScanLimits
from bot.store import Store
from bot.watcher import Pace, Watcher
from tests.conftest import ALERTS, PROJECT


def started_ms(minutes: float) -> int:
    """A task_time that many minutes ago."""
    return int((time.time() - minutes * 60) * 1000)


def add_stale(sim: Simulator, count: int, *, minutes: float = 45, **fields: Any) -> list[SimTask]:
    """`count` tasks that went stale `minutes` ago (30-minute threshold), oldest first."""
    return [
        sim.add_task(
            task_time_ms=started_ms(minutes) - i,
            server_name=fields.get("server_name", f"stale-{len(sim.tasks):04d}"),
            keypair_name=fields.get("keypair_name", "kp-ops"),
        )
        for i in range(count)
    ]


@dataclass
class Clock:
    """Real time plus an offset the test moves forward."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def make_watcher(store: Store, kps: KPSClient, slack: Any, **changes: Any) -> Watcher:
    """A watcher for the alerts channel with test-friendly timings; `changes` name any field."""
    fields: dict[str, Any] = {
        "channel": ALERTS,
        "project_id": PROJECT,
        "region": "cn-north-4",
        "stale_after": timedelta(minutes=30),
        "poll_interval": 0.05,
        "lease_ttl": 5.0,
        "claim_ttl": 2.0,
    }
    fields.update(changes)

    def pick(kind: type[Any]) -> Any:
        names = {f.name for f in dataclasses.fields(kind)}
        return kind(**{k: fields.pop(k) for k in list(fields) if k in names})

    return Watcher(
        store=store,
        kps=kps,
        slack=slack,
        notices=pick(Notices),
        pace=pick(Pace),
        limits=pick(ScanLimits),
        delivery=pick(Delivery),
        **fields,  # holder, clock; anything else is a typo and fails here
    )


def top_level(slack: FakeSlack, channel: str = ALERTS) -> list[dict[str, Any]]:
    """Messages in the channel itself, not in threads, as they look now (updates applied)."""
    return [m for m in slack.messages.get(channel, []) if m.get("thread_ts") in (None, m["ts"])]


def shown(message: dict[str, Any]) -> str:
    """Everything a reader could see in a message."""
    return json.dumps(message.get("blocks", []), ensure_ascii=False) + str(message.get("text"))


def ok_posts(slack: FakeSlack, channel: str = ALERTS) -> list[Any]:
    """chat.postMessage calls Slack accepted for `channel`, thread replies included."""
    return [c for c in slack.calls_to("chat.postMessage") if c.ok and c.args["channel"] == channel]
