"""The state store going away under the bot: partitions, resets, deleted files, broken tables.

Every outage here is real: PostgreSQL is reached through a loopback TCP proxy that can stop
forwarding (a partition) or cut every connection (a reset), and SQLite files are deleted or
have their tables renamed by another connection, as an operator or a full disk would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from bot.alerts import Alert
from bot.kps import KPSClient
from bot.notices import ACTION_ACK, SNOOZE_ACTIONS
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from bot.secret import Secret
from bot.store import Store, StoreError
from tests.conftest import ALERTS
from tests.standin import wait_for
from tests.watching import add_stale, make_watcher, shown, top_level

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
QUICK = 2.0  # seconds: the store deadline these tests use, so an outage shows at once


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


# --- a loopback TCP proxy in front of PostgreSQL ------------------------------------------------


@dataclass
class Proxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; `partition()` stops the bytes, `reset()` cuts."""

    target: tuple[str, int]
    port: int = 0
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    links: set[asyncio.StreamWriter] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.flowing.set()
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def partition(self) -> None:
        """Bytes stop in both directions and new connections get no further; nothing closes."""
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def reset(self) -> None:
        """Every open connection is cut at once (RST), as a failover or a restart does."""
        for writer in list(self.links):
            writer.transport.abort()
        self.links.clear()

    async def close(self) -> None:
        self.reset()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.links.add(writer)
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, (writer, up_writer)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in pair:
                end.transport.abort()
                self.links.discard(end)


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[Proxy]:
    url = make_url(pg_url)
    running = Proxy((url.host or "127.0.0.1", url.port or 5432))
    await running.start()
    yield running
    await running.close()


def through(pg_url: str, proxy: Proxy) -> str:
    return make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
async def pg_store(pg_url: str, proxy: Proxy) -> AsyncIterator[Store]:
    store = Store.open(through(pg_url, proxy), timeout=QUICK)
    await store.migrate()
    yield store
    proxy.heal()
    await store.close()


async def within(seconds: float, call: Any) -> Any:
    """`call`'s result, failing the test (not hanging it) when it takes longer than `seconds`."""
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise AssertionError(f"the store call still hung after {seconds} s") from None


# --- PostgreSQL: a partition ends each call within its deadline; a reset fails one call only ----


async def test_a_partitioned_postgresql_fails_each_call_in_seconds_and_then_recovers(
    pg_store: Store, proxy: Proxy
) -> None:
    notice_id = await pg_store.announce(channel="C1", now=NOW, tasks=[alert("a")])
    assert notice_id is not None
    proxy.partition()
    loop = asyncio.get_running_loop()
    for call in (
        pg_store.acknowledge(notice_id, "U1", now=NOW),
        pg_store.ping(),
        pg_store.announced(["a"]),
    ):
        began = loop.time()
        with pytest.raises(StoreError, match=r"state store \(postgresql\)") as raised:
            await within(10, call)
        assert loop.time() - began < QUICK + 2
        assert "did not answer" in str(raised.value) or raised.value.cause
    proxy.heal()
    state = await within(10, pg_store.acknowledge(notice_id, "U1", now=NOW))
    assert state is not None and state.notice.acked_by == "U1"
    await pg_store.ping()


async def test_a_reset_postgresql_connection_fails_that_call_as_a_store_error_only(
    pg_url: str, proxy: Proxy
) -> None:
    import asyncpg

    url = make_url(pg_url)
    store = Store.open(through(pg_url, proxy), timeout=5)
    holder = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        await store.migrate()
        # Another replica's migration holds the lock, so this one waits inside a statement; the
        # connection is cut meanwhile (a failover): that call fails at once, as a StoreError.
        await holder.execute("SELECT pg_advisory_lock($1)", 0x6B7073)
        waiting = asyncio.create_task(store.migrate())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        loop = asyncio.get_running_loop()
        began = loop.time()
        proxy.reset()
        with pytest.raises(StoreError, match=r"state store \(postgresql\) failed \(migrate\)"):
            await within(10, waiting)
        assert loop.time() - began < 2  # the reset is seen, not waited out
        await holder.execute("SELECT pg_advisory_unlock($1)", 0x6B7073)
        # The pool lets the dead connection go: the next call works on a new one.
        await within(10, store.migrate())
        assert await within(10, store.announce(channel="C1", now=NOW, tasks=[alert("a")]))
    finally:
        await holder.close()
        await store.close()


async def test_a_store_error_never_carries_the_password(pg_url: str, proxy: Proxy) -> None:
    url = make_url(through(pg_url, proxy)).set(password="pw-s3cr3t-value")
    store = Store.open(url.render_as_string(hide_password=False), timeout=QUICK)
    try:
        proxy.partition()
        with pytest.raises(StoreError) as raised:
            await within(10, store.ping())
        proxy.heal()
        with pytest.raises(StoreError) as refused:  # trust auth ignores it; a wrong db does not
            bad = url.set(database="no_such_db_here").render_as_string(hide_password=False)
            other = Store.open(bad, timeout=QUICK)
            try:
                await within(10, other.ping())
            finally:
                await other.close()
    finally:
        await store.close()
    for error in (raised.value, refused.value):
        assert "pw-s3cr3t-value" not in str(error) + repr(error)
    assert "no_such_db_here" in str(refused.value)  # the driver's own words stay
    with pytest.raises(StoreError) as unreadable:
        Store.open("postgresql+asyncpg://u:pw-s3cr3t-value@host:port/db")
    assert "pw-s3cr3t-value" not in str(unreadable.value)


# --- a store used after close() fails where it is used -----------------------------------------


async def test_a_closed_store_refuses_every_call(state_url: str) -> None:
    store = Store.open(state_url)
    await store.migrate()
    await store.close()
    with pytest.raises(StoreError, match=r"used after it was closed \(announced\)"):
        await store.announced(["a"])
    with pytest.raises(StoreError, match=r"used after it was closed \(ping\)"):
        await store.ping()


async def test_close_lets_a_call_under_way_end_before_it_closes_the_pool(
    pg_store: Store, proxy: Proxy
) -> None:
    # A connection closed under a call goes back to a pool nobody closes, and the driver
    # warns of it when it is collected (a warning is an error in this suite, at random).
    order: list[str] = []

    async def call() -> None:
        with pytest.raises(StoreError):
            await pg_store.announced(["a"])
        order.append("call ended")

    proxy.partition()
    under_way = asyncio.create_task(call())
    await asyncio.sleep(0.2)
    await within(10, pg_store.close())
    order.append("closed")
    await under_way
    assert order == ["call ended", "closed"]


# --- SQLite: a deleted file comes back; a restart repeats nothing and loses no ending ----------


def _file(state_url: str) -> Path:
    return Path(state_url.removeprefix("sqlite+aiosqlite:///"))


async def test_a_state_file_deleted_while_running_is_written_back_and_a_restart_repeats_nothing(
    empty_sim: Simulator,
    slack: FakeSlack,
    state_url: str,
    kps_client: KPSClient,
    slack_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (first,) = add_stale(empty_sim, 1)
    store = Store.open(state_url)
    await store.migrate()
    watcher = make_watcher(store, kps_client, slack_client)
    await watcher.scan()
    await watcher.deliver()
    _file(state_url).unlink()  # a cleanup job, a redeploy wiping the folder

    # The bot's open connection still sees the deleted file: this scan must write to the path.
    (second,) = add_stale(empty_sim, 1, server_name="while-gone")
    empty_sim.finish_task(first.task_id)
    result = await watcher.scan()
    assert (result.ok, result.announced, result.ended) == (True, 1, 1)
    await watcher.deliver()
    assert _file(state_url).exists()
    assert any("written back" in r.getMessage() for r in caplog.records)
    await store.close()

    # A restart reads the file at the path: both notices known, the ending recorded.
    again = Store.open(state_url)
    await again.migrate()
    restarted = make_watcher(again, kps_client, slack_client)
    assert (await restarted.scan()).announced == 0
    assert await again.announced([first.task_id, second.task_id]) == {
        first.task_id,
        second.task_id,
    }
    assert [a.task_id for a in await again.open_alerts()] == [second.task_id]
    await restarted.deliver()
    await again.close()
    notices = top_level(slack)
    assert len(notices) == 2
    assert sum(first.task_id in shown(n) for n in notices) == 1
    (ending,) = slack.thread(ALERTS, notices[0]["ts"])
    assert "has ended" in shown(ending)


async def test_a_state_file_deleted_with_no_connection_open_starts_empty_and_works(
    state_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.open(state_url)
    await store.migrate()
    assert await store.announce(channel="C1", now=NOW, tasks=[alert("a")]) is not None
    await store._engine.dispose()  # nothing open: the deleted file's rows cannot be saved
    _file(state_url).unlink()
    try:
        # The first call after finds no file: the schema is made again, the call goes through.
        assert await store.announced(["a"]) == set()
        assert await store.announce(channel="C1", now=NOW, tasks=[alert("b")]) is not None
        assert await store.announced(["a", "b"]) == {"b"}
    finally:
        await store.close()
    assert any("starting an empty one" in r.getMessage() for r in caplog.records)


async def test_tables_gone_from_the_file_are_made_again_by_the_next_call(state_url: str) -> None:
    store = Store.open(state_url)
    await store.migrate()
    await store.close()
    _file(state_url).write_bytes(b"")  # an empty file in its place: no tables at all
    store = Store.open(state_url)
    try:
        with pytest.raises(StoreError, match="no such table"):
            await store.announced(["a"])
        assert await store.announced(["a"]) == set()  # the schema was made again
        assert await store.announce(channel="C1", now=NOW, tasks=[alert("a")]) is not None
    finally:
        await store.close()


# --- the watcher: a store that fails whole still gets its impaired notice, once it is back -----


def _sqlite(path: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
        for statement in statements:
            conn.execute(statement)


async def test_an_outage_of_the_whole_store_is_told_in_the_channel_once_it_is_back(
    empty_sim: Simulator, slack: FakeSlack, state_url: str, kps_client: KPSClient, slack_client: Any
) -> None:
    add_stale(empty_sim, 1)
    store = Store.open(state_url)
    await store.migrate()
    watcher = make_watcher(store, kps_client, slack_client)
    watcher.start()
    try:
        await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)
        # Every table the watcher writes is gone: not even the failed steps can be counted in
        # the store, so nothing can be queued for the channel while it lasts.
        path = _file(state_url)
        await asyncio.to_thread(
            _sqlite,
            path,
            "ALTER TABLE kps_lease RENAME TO kps_lease_away",
            "ALTER TABLE kps_watch RENAME TO kps_watch_away",
        )
        for _ in range(200):
            if watcher.problem is not None:
                break
            await asyncio.sleep(0.05)
        assert watcher.problem is not None and "StoreError" in watcher.problem
        assert len(top_level(slack)) == 1
        await asyncio.to_thread(
            _sqlite,
            path,
            "ALTER TABLE kps_lease_away RENAME TO kps_lease",
            "ALTER TABLE kps_watch_away RENAME TO kps_watch",
        )
        await wait_for(slack, "chat.postMessage", 3, timeout=10, where=lambda c: c.ok)
    finally:
        await watcher.stop()
        await store.close()
    said = [shown(n) for n in top_level(slack)]
    assert "is impaired" in said[1] and "StoreError" in said[1]
    assert "tasks works again" in said[2]
    assert sum("is impaired" in n for n in said) == 1
    assert watcher.problem is None


# --- a click the store cannot record says so and asks to try again ----------------------------


async def test_a_click_during_a_store_outage_says_it_was_not_recorded(
    bot_factory: Callable[..., Any], empty_sim: Simulator, slack: FakeSlack, state_url: str
) -> None:
    add_stale(empty_sim, 1)
    bot = await bot_factory(stale_channel_id=ALERTS, state_url=Secret(state_url), poll_interval=0.1)
    await wait_for(slack, "chat.postMessage", 1, timeout=10, where=lambda c: c.ok)
    (notice,) = top_level(slack)
    buttons = {
        e["action_id"]: e["value"]
        for b in notice["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    }
    await asyncio.to_thread(
        _sqlite, _file(state_url), "ALTER TABLE kps_notices RENAME TO kps_notices_away"
    )
    await bot.sender.action(ACTION_ACK, buttons[ACTION_ACK], slack.response_url(), user="U0ALICE")
    snooze = SNOOZE_ACTIONS[0]
    await bot.sender.action(snooze, buttons[snooze], slack.response_url(), user="U0ALICE")
    calls = await wait_for(slack, "response_url", 2, timeout=15, where=lambda c: c.ok)
    said = [json.dumps(c.args["blocks"]) for c in calls]
    assert any("could not record your acknowledgement" in s for s in said)
    assert any("could not record your snooze" in s for s in said)
    assert all("state store is unavailable" in s and "try again" in s for s in said)
    assert not any("Something went wrong" in s for s in said)
    assert "Acknowledged by" not in shown(top_level(slack)[0])
    await asyncio.to_thread(
        _sqlite, _file(state_url), "ALTER TABLE kps_notices_away RENAME TO kps_notices"
    )
    assert await bot.shutdown() == 0
