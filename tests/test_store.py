"""The alert store on a SQLite file and on the local PostgreSQL: schema, guards, lease, outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from bot.alerts import Alert, Ending
from bot.logs import register_secret
from bot.store import (
    POST,
    REPLY,
    UPDATE,
    Store,
    StoreError,
    schema_version,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def alert(task_id: str) -> Alert:
    return Alert(
        task_id=task_id,
        notice_id=0,
        server_name=f"web-{task_id}",
        server_id="srv",
        keypair_name="kp",
        operate_type="RUNNING_RESET",
        started_at=NOW - timedelta(hours=1),
        announced_at=NOW,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, state_url: str) -> str:
    if request.param == "sqlite":
        return state_url
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = Store.open(store_url)
    await opened.migrate()
    yield opened
    await opened.close()


async def test_migrate_twice_keeps_one_version_row_and_data(store: Store, store_url: str) -> None:
    assert await store.announce(channel="C1", now=NOW, tasks=[alert("a")]) is not None
    again = Store.open(store_url)
    try:
        await again.migrate()
        assert await again.announced(["a", "b"]) == {"a"}
        async with again._engine.connect() as conn:
            rows = (await conn.execute(sa.select(schema_version.c.version))).all()
        assert [r[0] for r in rows] == [1]
    finally:
        await again.close()


async def test_a_newer_schema_is_refused(store: Store, store_url: str) -> None:
    async with store._engine.begin() as conn:
        await conn.execute(schema_version.update().values(version=99))
    newer = Store.open(store_url)
    try:
        with pytest.raises(StoreError, match="schema version 99"):
            await newer.migrate()
    finally:
        await newer.close()


async def test_announce_records_notice_alerts_and_outbox_once(store: Store) -> None:
    tasks = [alert("a"), alert("b")]
    notice_id = await store.announce(
        channel="C1", now=NOW, tasks=tasks, replies=[{"text": "rest", "blocks": []}]
    )
    assert notice_id is not None
    assert await store.announced(["a", "b", "c"]) == {"a", "b"}
    pending = await store.pending()
    assert [(i.kind, i.body) for i in pending] == [
        (POST, None),
        (REPLY, {"text": "rest", "blocks": []}),
    ]
    assert all(i.channel == "C1" and i.notice_ts is None for i in pending)
    # A second replica announcing one of the same tasks writes nothing at all.
    assert await store.announce(channel="C1", now=NOW, tasks=[alert("c"), alert("a")]) is None
    assert await store.announced(["c"]) == set()
    assert len(await store.pending()) == 2
    state = await store.notice_state(notice_id)
    assert state is not None and {a.task_id for a in state.alerts} == {"a", "b"}
    assert all(a.running and a.notice_id == notice_id for a in state.alerts)


async def test_endings_are_recorded_once_with_replies_and_one_update(store: Store) -> None:
    notice_id = await store.announce(channel="C1", now=NOW, tasks=[alert("a"), alert("b")])
    assert notice_id is not None
    (post,) = await store.pending()
    await store.mark_sent(post, now=NOW, ts="111.222", channel="C1")
    ending = Ending("a", NOW, "SUCCESS_RESET")
    body = {"text": "a ended", "blocks": []}
    assert await store.record_endings([ending], now=NOW, replies={notice_id: [body]})
    # Another replica deciding the same ending changes nothing.
    assert not await store.record_endings([ending], now=NOW, replies={notice_id: [body]})
    pending = await store.pending()
    assert [(i.kind, i.notice_ts) for i in pending] == [(REPLY, "111.222"), (UPDATE, "111.222")]
    assert [a.task_id for a in await store.open_alerts()] == ["b"]
    state = await store.notice_state(notice_id)
    assert state is not None
    ended = next(a for a in state.alerts if a.task_id == "a")
    assert ended.outcome == "SUCCESS_RESET" and ended.finished_at == NOW


async def test_missing_since_is_set_once_and_cleared_when_back(store: Store) -> None:
    await store.announce(channel="C1", now=NOW, tasks=[alert("a")])
    later = NOW + timedelta(minutes=1)
    await store.record_endings([], now=NOW, replies={}, missing=["a"])
    await store.record_endings([], now=later, replies={}, missing=["a"])
    (open_alert,) = await store.open_alerts()
    assert open_alert.missing_since == NOW
    await store.record_endings([], now=later, replies={}, back=["a"])
    (open_alert,) = await store.open_alerts()
    assert open_alert.missing_since is None


async def test_lease_is_exclusive_until_it_expires_or_is_released(store: Store) -> None:
    assert await store.acquire_lease("A", ttl=10, now=NOW)
    assert not await store.acquire_lease("B", ttl=10, now=NOW + timedelta(seconds=5))
    assert await store.acquire_lease("A", ttl=10, now=NOW + timedelta(seconds=5))  # renewed
    assert not await store.acquire_lease("B", ttl=10, now=NOW + timedelta(seconds=14))
    assert await store.lease_holder(now=NOW + timedelta(seconds=14)) == "A"
    assert await store.acquire_lease("B", ttl=10, now=NOW + timedelta(seconds=16))  # expired
    assert not await store.acquire_lease("A", ttl=10, now=NOW + timedelta(seconds=17))
    await store.release_lease("A")  # not A's any more: no effect
    assert await store.lease_holder(now=NOW + timedelta(seconds=17)) == "B"
    await store.release_lease("B")
    assert await store.lease_holder(now=NOW + timedelta(seconds=17)) is None
    assert await store.acquire_lease("A", ttl=10, now=NOW + timedelta(seconds=18))


async def test_racing_replicas_get_one_lease(store: Store) -> None:
    results = await asyncio.gather(
        *(store.acquire_lease(f"R{i}", ttl=10, now=NOW) for i in range(8))
    )
    assert sum(results) == 1


async def test_a_claimed_row_is_not_sent_by_another_until_the_claim_expires(store: Store) -> None:
    await store.announce(channel="C1", now=NOW, tasks=[alert("a")])
    (item,) = await store.pending()
    assert await store.claim(item.id, "A", now=NOW, ttl=30)
    assert not await store.claim(item.id, "B", now=NOW + timedelta(seconds=10), ttl=30)
    assert await store.claim(item.id, "B", now=NOW + timedelta(seconds=31), ttl=30)
    await store.mark_sent(item, now=NOW, ts="1.2", channel="C1")
    assert not await store.claim(item.id, "C", now=NOW + timedelta(hours=1), ttl=30)
    assert await store.pending() == []


async def test_deferred_rows_keep_their_order_and_count_attempts(store: Store) -> None:
    await store.announce(channel="C1", now=NOW, tasks=[alert("a")])
    (item,) = await store.pending()
    later = NOW + timedelta(seconds=30)
    await store.defer(item, until=later, error="ratelimited")
    (again,) = await store.pending()
    assert again.attempts == 1 and again.due_at == later
    await store.give_up(again, error="invalid_blocks")
    assert await store.pending() == []


async def test_remind_is_a_compare_and_set(store: Store) -> None:
    notice_id = await store.announce(channel="C1", now=NOW, tasks=[alert("a")])
    assert notice_id is not None
    body = {"text": "still running", "blocks": []}
    later = NOW + timedelta(hours=2)
    due_before = later - timedelta(hours=1)
    assert await store.remind(notice_id, due_before=due_before, now=later, body=body)
    assert not await store.remind(notice_id, due_before=due_before, now=later, body=body)
    state = await store.notice_state(notice_id)
    assert state is not None and state.notice.reminded_at == later
    assert [i.kind for i in await store.pending()] == [POST, REPLY]


async def test_acknowledge_keeps_the_first_and_snooze_the_last(store: Store) -> None:
    notice_id = await store.announce(channel="C1", now=NOW, tasks=[alert("a")])
    assert notice_id is not None
    first = await store.acknowledge(notice_id, "U1", now=NOW)
    second = await store.acknowledge(notice_id, "U2", now=NOW + timedelta(minutes=1))
    assert first is not None and second is not None
    assert second.notice.acked_by == "U1" and second.notice.acked_at == NOW
    until = NOW + timedelta(hours=4)
    snoozed = await store.snooze(notice_id, "U2", until=until, now=NOW)
    assert snoozed is not None and snoozed.notice.snoozed_until == until
    assert await store.acknowledge(999, "U1", now=NOW) is None
    # One waiting update covers every change made before it is sent.
    assert [i.kind for i in await store.pending()] == [POST, UPDATE]


async def test_impaired_and_recovered_happen_once_each(store: Store) -> None:
    body = {"text": "impaired", "blocks": []}
    for n in range(1, 4):
        state = await store.count_failure(now=NOW + timedelta(minutes=n), error=f"boom {n}")
    assert state.failures == 3 and state.failing_since == NOW + timedelta(minutes=1)
    assert state.last_error == "boom 3"
    assert await store.mark_impaired(channel="C1", now=NOW, body=body, problem="watch broke")
    assert not await store.mark_impaired(channel="C1", now=NOW, body=body, problem="again")
    assert await store.problems() == ["watch broke"]
    before = await store.count_success(now=NOW)
    assert before.impaired and before.failures == 3
    assert (await store.watch_state()).failures == 0
    assert await store.mark_recovered(channel="C1", now=NOW, body={"text": "ok", "blocks": []})
    assert not await store.mark_recovered(channel="C1", now=NOW, body={"text": "x", "blocks": []})
    assert await store.problems() == []
    assert [i.notice_kind for i in await store.pending()] == ["impaired", "recovered"]


async def test_a_problem_is_new_only_once(store: Store) -> None:
    assert await store.set_problem("slack:C1", "channel_not_found", now=NOW)
    assert not await store.set_problem("slack:C1", "channel_not_found again", now=NOW)
    assert await store.problems() == ["channel_not_found again"]
    assert await store.clear_problem("slack:C1")
    assert not await store.clear_problem("slack:C1")


async def test_prune_drops_only_old_finished_notices(store: Store) -> None:
    old = await store.announce(channel="C1", now=NOW - timedelta(days=40), tasks=[alert("old")])
    live = await store.announce(channel="C1", now=NOW - timedelta(days=40), tasks=[alert("run")])
    assert old is not None and live is not None
    for item in await store.pending():
        await store.mark_sent(item, now=NOW - timedelta(days=40), ts="1.1", channel="C1")
    ending = Ending("old", NOW - timedelta(days=35), "SUCCESS_RESET")
    await store.record_endings([ending], now=NOW - timedelta(days=35), replies={})
    for item in await store.pending():
        await store.mark_sent(item, now=NOW - timedelta(days=35), ts=None, channel=None)
    assert await store.prune(before=NOW - timedelta(days=30)) == 1
    assert await store.notice_state(old) is None
    assert await store.notice_state(live) is not None
    assert await store.announced(["old", "run"]) == {"run"}


async def test_two_replicas_migrating_at_once(pg_url: str) -> None:
    stores = [Store.open(pg_url) for _ in range(3)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        assert await stores[0].announced(["x"]) == set()
    finally:
        for s in stores:
            await s.close()


async def test_text_the_backend_cannot_hold_is_stored_as_it_can(store: Store) -> None:
    # A lone surrogate cannot be encoded as UTF-8 (either driver) and PostgreSQL refuses NUL:
    # either failed every write of the scan that met such a task, for good.
    odd = Alert(
        task_id="t\x00-1",
        notice_id=0,
        server_name="web\ud800-01\x00",
        server_id="srv\udfff",
        keypair_name="kp\x00\ud83d",
        operate_type="RUNNING_RESET",
        started_at=NOW,
        announced_at=NOW,
    )
    body = {"text": "web\ud800-01", "blocks": []}
    notice_id = await store.announce(channel="C1", now=NOW, tasks=[odd], replies=[body])
    assert notice_id is not None
    assert await store.announced(["t\x00-1"]) == {"t-1"}  # asked as it was given, found
    assert await store.announce(channel="C1", now=NOW, tasks=[odd]) is None  # still once
    state = await store.notice_state(notice_id)
    assert state is not None
    (kept,) = state.alerts
    assert (kept.task_id, kept.server_name, kept.server_id, kept.keypair_name) == (
        "t-1",
        "web\ufffd-01",
        "srv\ufffd",
        "kp\ufffd",
    )
    ending = Ending("t\x00-1", NOW, "FAILED_RESET", "KPS.1\x00", "bad \ud800 agent")
    assert await store.record_endings([ending], now=NOW, replies={notice_id: [body]})
    (ended,) = (await store.notice_state(notice_id) or state).alerts
    assert (ended.error_code, ended.error_msg) == ("KPS.1", "bad \ufffd agent")
    assert [i.body for i in await store.pending() if i.body] == [
        {"text": "web\ufffd-01", "blocks": []}
    ] * 2
    assert await store.set_problem("k\x00", "text \ud800", now=NOW)
    assert await store.problems() == ["text \ufffd"]


async def test_ping_answers_while_the_store_does(store: Store) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreError, match="after it was closed"):
        await store.ping()


async def test_a_failure_text_echoing_a_secret_is_stored_redacted(store: Store) -> None:
    # An IAM gateway may echo the request, password included, in its error message.
    register_secret("Pa55word-stored-nowhere")
    echoed = 'IAM 400: {"password": "Pa55word-stored-nowhere"} X-Auth-Token: MIIxyz'
    state = await store.count_failure(now=NOW, error=echoed)
    assert state.last_error is not None
    assert "Pa55word-stored-nowhere" not in state.last_error
    assert "MIIxyz" not in state.last_error
    assert (await store.watch_state()).last_error == state.last_error
