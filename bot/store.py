"""Alert state in SQLAlchemy Core: SQLite by default, PostgreSQL when several replicas share it.

What lives here: the notices posted (channel, ts, acknowledgement, snooze, last reminder), the
stale tasks each announced (and how each ended), the outbox of Slack calls still to make, the
watcher's lease, the watcher's failure streak, and the problems the Home tab shows.

Every change that must reach Slack is written together with its outbox row in one transaction,
and every decision that could be taken twice by two replicas is a compare-and-set (an UPDATE
with a WHERE on the old value, or an INSERT that a primary key refuses), so a second leader
can waste work but never duplicate a notice, a thread reply or an impaired notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, RowMapping, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.alerts import Alert, Ending, Notice, NoticeState, WatchState
from bot.logs import redact

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
# Any constant works; it only has to be the same in every replica (pg_advisory_xact_lock).
_MIGRATION_LOCK: Final = 0x6B7073  # "kps"
_IN_CHUNK: Final = 500  # ids per IN (...) list: SQLite allows 32k variables, asyncpg 32k too
_WATCH_ID: Final = 1
_LEASE_NAME: Final = "watcher"

# The deadline of one Store call, whatever it waits for. Healthy calls take milliseconds (a few
# statements, no Slack or KPS call inside a transaction); a click is answered through its
# response_url, so the 3 s ack does not bind it. A store that needs longer is in trouble: the
# caller hears so at once (the watcher counts a failed step, a click asks to try again) instead of
# hanging as long as TCP takes to give up (150 s seen with a partitioned PostgreSQL).
STORE_TIMEOUT: Final = 5.0
# Each single wait inside a call (a connect, one statement, SQLite's lock) gives up a little sooner,
# so the driver's own error, which names the cause, usually arrives before the overall deadline.
_WAIT_SHARE: Final = 0.8
_MIGRATE_SHARE: Final = 6  # migrate() makes a dozen statements, once per start: 30 s by default
# A transaction idle this long belongs to a client that is gone (a partition): PostgreSQL ends it,
# so its locks do not hold the other replicas up. Ours never wait on anything inside one.
_IDLE_IN_TRANSACTION_MS: Final = 30_000
_DRIVERS: Final = frozenset({"asyncpg", "aiosqlite", "sqlite3"})
_SURROGATES: Final = re.compile("[\ud800-\udfff]")

NOTICE_STALE: Final = "stale"
NOTICE_IMPAIRED: Final = "impaired"
NOTICE_RECOVERED: Final = "recovered"
POST: Final = "post"
REPLY: Final = "reply"
UPDATE: Final = "update"
_PENDING: Final = "pending"
_SENT: Final = "sent"
_DEAD: Final = "dead"


def storable(value: str) -> str:
    """`value` as every backend can hold it: NULs dropped, lone surrogates made U+FFFD.

    PostgreSQL refuses NUL in text, and a lone surrogate (KPS JSON may carry "\\ud800") cannot
    be encoded as UTF-8 by either driver; either would fail the whole write, every scan.
    """
    if "\x00" in value:
        value = value.replace("\x00", "")
    return _SURROGATES.sub("\ufffd", value)


class _Text(sa.types.TypeDecorator[str]):
    """Text that is made storable on the way in: the one place every written value passes."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: sa.Dialect) -> str | None:
        return None if value is None else storable(value)


metadata = sa.MetaData()

schema_version = sa.Table(
    "kps_schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

notices = sa.Table(
    "kps_notices",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("channel", _Text, nullable=False),
    sa.Column("ts", _Text),  # Slack's id of the message, known once chat.postMessage succeeded
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("posted_at", sa.Float),
    sa.Column("acked_by", _Text),
    sa.Column("acked_at", sa.Float),
    sa.Column("snoozed_by", _Text),
    sa.Column("snoozed_until", sa.Float),
    sa.Column("reminded_at", sa.Float),
)

alerts = sa.Table(
    "kps_alerts",
    metadata,
    # The primary key is what makes "announced once" hold across scans, restarts and replicas.
    sa.Column("task_id", _Text, primary_key=True),
    sa.Column("notice_id", sa.Integer, sa.ForeignKey("kps_notices.id"), nullable=False),
    sa.Column("server_name", _Text, nullable=False),
    sa.Column("server_id", _Text, nullable=False),
    sa.Column("keypair_name", _Text, nullable=False),
    sa.Column("operate_type", _Text, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("announced_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),  # NULL while the task runs
    sa.Column("outcome", _Text),  # KPS task_status, e.g. SUCCESS_RESET; NULL: unknown
    sa.Column("error_code", _Text),
    sa.Column("error_msg", _Text),
    sa.Column("missing_since", sa.Float),  # first complete scan without it, while KPS says running
    sa.Index("kps_alerts_notice", "notice_id"),
    sa.Index("kps_alerts_finished", "finished_at"),
)

outbox = sa.Table(
    "kps_outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("notice_id", sa.Integer, sa.ForeignKey("kps_notices.id"), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),  # post, reply or update
    sa.Column("body", _Text),  # JSON text+blocks; NULL: render the notice when sending
    sa.Column("state", sa.String(8), nullable=False),  # pending, sent or dead
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("due_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("claimed_by", _Text),
    sa.Column("claimed_until", sa.Float),
    sa.Column("sent_at", sa.Float),
    sa.Column("last_error", _Text),
    sa.Index("kps_outbox_state", "state", "id"),
    sa.Index("kps_outbox_notice", "notice_id"),
)

lease = sa.Table(
    "kps_lease",
    metadata,
    sa.Column("name", _Text, primary_key=True),
    sa.Column("holder", _Text, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
)

watch = sa.Table(
    "kps_watch",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("failing_since", sa.Float),
    sa.Column("last_error", _Text),
    sa.Column("impaired", sa.Boolean, nullable=False),
    sa.Column("last_ok_at", sa.Float),
)

problems = sa.Table(
    "kps_problems",
    metadata,
    sa.Column("key", _Text, primary_key=True),
    sa.Column("text", _Text, nullable=False),
    sa.Column("since", sa.Float, nullable=False),
)

# Version -> the DDL that brings version - 1 up to it. Version 1 is create_all.
_MIGRATIONS: Final[Mapping[int, Any]] = {}


class StoreError(Exception):
    """The state store cannot be used now: unreachable, failing, too slow, closed, or too new.

    The one error every Store method raises for store trouble; its message names the backend,
    the call and the driver's own words, never the URL (it may carry a password). `cause` is
    the driver error's type name, safe to show where only a type may go.
    """

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A Slack call still to make, with where its notice is (ts None: not posted yet)."""

    id: int
    notice_id: int
    kind: str
    body: dict[str, Any] | None
    attempts: int
    due_at: datetime
    channel: str
    notice_ts: str | None
    notice_kind: str


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _guarded(
    method: Callable[Concatenate[Store, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[Store, _P], Coroutine[Any, Any, _T]]:
    """A public Store call: refused after close(), bounded in time, its failures a StoreError."""

    @functools.wraps(method)
    async def guarded(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self._run(method.__name__, lambda: method(self, *args, **kwargs))

    return guarded


class Store:
    """The one interface to alert state; `open()` it, `migrate()` at start, `close()` at exit.

    Every public call is guarded (`_guarded`): it ends within `timeout` seconds, store trouble
    comes out as `StoreError`, and a call after `close()` fails where it happens.
    """

    def __init__(
        self, engine: AsyncEngine, *, timeout: float = STORE_TIMEOUT, path: Path | None = None
    ) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._timeout = timeout
        self._password = engine.url.password
        self._closed = False
        self._schema_lost = False  # a call found no table: the next one re-creates the schema
        self._path = path  # a SQLite file, followed in case it is deleted or replaced
        self._file: tuple[int, int] | None = None  # (device, inode) of that file when last seen
        self._file_lock = asyncio.Lock()
        self._busy = 0  # calls under way; close() lets them end before it closes the pool
        self._idle = asyncio.Event()
        self._idle.set()

    def __repr__(self) -> str:
        # The URL may carry a password: name the backend only.
        return f"Store({self._engine.dialect.name})"

    @classmethod
    def open(cls, url: str, *, timeout: float = STORE_TIMEOUT) -> Store:
        """A store for `url` (sqlite+aiosqlite:/// or postgresql+asyncpg://); connects lazily.

        `timeout`: the deadline of each call, in seconds (STORE_TIMEOUT says why 5 s).
        """
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as error:
            # SQLAlchemy's message may quote the URL, password and all.
            raise StoreError("STATE_URL is not a database URL SQLAlchemy can read") from error
        wait = timeout * _WAIT_SHARE
        if parsed.get_backend_name() == "sqlite":
            # The busy timeout: a click and the watcher may write at the same moment; one waits.
            engine = create_async_engine(parsed, connect_args={"timeout": wait})
            _serialise_sqlite(engine)
            return cls(engine, timeout=timeout, path=_sqlite_file(parsed))
        engine = create_async_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=5,
            connect_args={
                "timeout": wait,  # connecting, TLS and login included
                "command_timeout": wait,  # each statement, as the client sees it (partitions)
                "server_settings": {
                    "statement_timeout": str(int(wait * 1000)),  # and as the server sees it
                    "idle_in_transaction_session_timeout": str(_IDLE_IN_TRANSACTION_MS),
                },
            },
        )
        return cls(engine, timeout=timeout)

    @property
    def backend(self) -> str:
        """ "sqlite" or "postgresql"."""
        return str(self._engine.dialect.name)

    async def close(self) -> None:
        """Close the pool once calls under way have ended; any later call raises StoreError."""
        self._closed = True
        # A connection still checked out when the pool is closed goes back to a pool nobody
        # closes: aiosqlite then warns of it when it is collected. Each call ends by its deadline.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self._timeout * _MIGRATE_SHARE)
        await self._engine.dispose()

    @_guarded
    async def ping(self) -> None:
        """One read of the lease table (a readiness probe); StoreError when it cannot answer.

        A table, not `SELECT 1`: a database that answers but has lost the bot's tables, or locks
        them, is no more use to the bot than one that does not answer.
        """
        async with self._engine.connect() as conn:
            await conn.execute(sa.select(lease.c.name).limit(1))

    async def migrate(self) -> None:
        """Create the schema, or bring an older one up to SCHEMA_VERSION; safe to race."""
        # Once per start, and possibly behind another replica's migration: more time than a call.
        await self._run("migrate", self._migrate, deadline=self._timeout * _MIGRATE_SHARE)

    async def _migrate(self) -> None:
        async with self._begin() as conn:
            if self._postgres:
                # Two replicas starting together would both run CREATE TABLE; one waits here.
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            await conn.run_sync(lambda c: schema_version.create(c, checkfirst=True))
            version = (await conn.execute(sa.select(schema_version.c.version))).scalar()
            if version is None:
                await conn.run_sync(metadata.create_all)
                await conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"the state store has schema version {version}, newer than this bot's "
                    f"{SCHEMA_VERSION}: run the newer bot, or point STATE_URL elsewhere"
                )
            else:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    await conn.run_sync(_MIGRATIONS[step])
                    await conn.execute(schema_version.update().values(version=step))
            exists = await conn.execute(sa.select(watch.c.id).where(watch.c.id == _WATCH_ID))
            if exists.first() is None:
                await conn.execute(watch.insert().values(id=_WATCH_ID, failures=0, impaired=False))

    # -- lease --------------------------------------------------------------------------------

    @_guarded
    async def acquire_lease(self, holder: str, *, ttl: float, now: datetime) -> bool:
        """Take or renew the watcher lease; True while `holder` has it."""
        at = _ts(now)
        insert = self._insert(lease).values(
            name=_LEASE_NAME, holder=holder, expires_at=at + ttl, acquired_at=at
        )
        # Renew our own lease, or take one whose holder let it expire; never steal a live one.
        statement = insert.on_conflict_do_update(
            index_elements=[lease.c.name],
            set_={
                "holder": insert.excluded.holder,
                "expires_at": insert.excluded.expires_at,
                "acquired_at": sa.case(
                    (lease.c.holder == insert.excluded.holder, lease.c.acquired_at),
                    else_=insert.excluded.acquired_at,
                ),
            },
            where=sa.or_(lease.c.holder == insert.excluded.holder, lease.c.expires_at < at),
        ).returning(lease.c.holder)
        async with self._begin() as conn:
            row = (await conn.execute(statement)).first()
        return row is not None and row[0] == holder

    @_guarded
    async def release_lease(self, holder: str) -> None:
        """Give the lease up at once, so another replica need not wait for it to expire."""
        async with self._begin() as conn:
            await conn.execute(
                lease.delete().where(lease.c.name == _LEASE_NAME, lease.c.holder == holder)
            )

    @_guarded
    async def lease_holder(self, *, now: datetime) -> str | None:
        """Who holds an unexpired lease, if anyone."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(lease.c.holder).where(
                        lease.c.name == _LEASE_NAME, lease.c.expires_at >= _ts(now)
                    )
                )
            ).first()
        return None if row is None else str(row[0])

    # -- announcing ---------------------------------------------------------------------------

    @_guarded
    async def announced(self, task_ids: Iterable[str]) -> set[str]:
        """Which of these tasks were announced already, running or not."""
        ids = list(dict.fromkeys(task_ids))
        found: set[str] = set()
        async with self._engine.connect() as conn:
            for chunk in _chunks(ids):
                rows = await conn.execute(
                    sa.select(alerts.c.task_id).where(alerts.c.task_id.in_(chunk))
                )
                found.update(str(r[0]) for r in rows)
        return found

    @_guarded
    async def announce(
        self,
        *,
        channel: str,
        now: datetime,
        tasks: Sequence[Alert],
        replies: Sequence[Mapping[str, Any]] = (),
    ) -> int | None:
        """Record a notice for `tasks`, its post and its thread `replies` in one transaction.

        Returns the notice id, or None when another replica announced one of the tasks first
        (the primary key refuses it and nothing is written).
        """
        if not tasks:
            raise ValueError("a notice needs at least one task")
        at = _ts(now)
        try:
            async with self._begin() as conn:
                notice_id = await self._insert_notice(conn, NOTICE_STALE, channel, at)
                await conn.execute(
                    alerts.insert(),
                    [
                        {
                            "task_id": a.task_id,
                            "notice_id": notice_id,
                            "server_name": a.server_name,
                            "server_id": a.server_id,
                            "keypair_name": a.keypair_name,
                            "operate_type": a.operate_type,
                            "started_at": _ts_or_none(a.started_at),
                            "announced_at": at,
                        }
                        for a in tasks
                    ],
                )
                await self._enqueue(conn, notice_id, POST, None, at)
                for body in replies:
                    await self._enqueue(conn, notice_id, REPLY, body, at)
        except IntegrityError:
            log.info("another replica announced these tasks first", extra={"tasks": len(tasks)})
            return None
        return notice_id

    # -- reading ------------------------------------------------------------------------------

    @_guarded
    async def open_alerts(self) -> list[Alert]:
        """Every announced task not yet known to have ended."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(sa.select(alerts).where(alerts.c.finished_at.is_(None)))
            return [_alert(r._mapping) for r in rows]

    @_guarded
    async def notice_state(self, notice_id: int) -> NoticeState | None:
        """A notice with all its tasks; None when unknown (or pruned)."""
        async with self._engine.connect() as conn:
            return await self._notice_state(conn, notice_id)

    @_guarded
    async def reminder_candidates(self) -> list[NoticeState]:
        """Posted stale notices that still have running tasks."""
        running = (
            sa.select(alerts.c.notice_id).where(alerts.c.finished_at.is_(None)).distinct()
        ).subquery()
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(notices)
                .where(
                    notices.c.kind == NOTICE_STALE,
                    notices.c.ts.is_not(None),
                    notices.c.id.in_(sa.select(running.c.notice_id)),
                )
                .order_by(notices.c.id)
            )
            found = [_notice(r._mapping) for r in rows]
            states = []
            for notice in found:
                tasks = await conn.execute(
                    sa.select(alerts).where(
                        alerts.c.notice_id == notice.id, alerts.c.finished_at.is_(None)
                    )
                )
                states.append(NoticeState(notice, tuple(_alert(r._mapping) for r in tasks)))
            return states

    # -- endings ------------------------------------------------------------------------------

    @_guarded
    async def record_endings(
        self,
        endings: Sequence[Ending],
        *,
        now: datetime,
        replies: Mapping[int, Sequence[Mapping[str, Any]]],
        missing: Iterable[str] = (),
        back: Iterable[str] = (),
    ) -> bool:
        """Mark tasks ended, queue their thread `replies` and notice updates, in one transaction.

        `missing`: tasks a complete scan did not list while KPS still calls them running (their
        grace period starts now); `back`: tasks listed again. False, with nothing written, when
        another replica recorded one of the endings first.
        """
        at = _ts(now)
        try:
            await self._record_endings(endings, at, replies, list(missing), list(back))
        except _Lost:
            log.info("another replica recorded these endings first")
            return False
        return True

    async def _record_endings(
        self,
        endings: Sequence[Ending],
        at: float,
        replies: Mapping[int, Sequence[Mapping[str, Any]]],
        missing: list[str],
        back: list[str],
    ) -> None:
        async with self._begin() as conn:
            for ending in endings:
                done = await conn.execute(
                    alerts.update()
                    .where(alerts.c.task_id == ending.task_id, alerts.c.finished_at.is_(None))
                    .values(
                        finished_at=_ts(ending.finished_at),
                        outcome=ending.outcome,
                        error_code=ending.error_code,
                        error_msg=ending.error_msg,
                    )
                )
                if done.rowcount != 1:
                    # Raising rolls back the whole transaction: nothing half-recorded.
                    raise _Lost()
            for notice_id, bodies in replies.items():
                for body in bodies:
                    await self._enqueue(conn, notice_id, REPLY, body, at)
            touched = {e.task_id for e in endings}
            if touched:
                for notice_id in await self._notices_of(conn, touched):
                    await self._enqueue_update(conn, notice_id, at)
            for chunk in _chunks(missing):
                await conn.execute(
                    alerts.update()
                    .where(alerts.c.task_id.in_(chunk), alerts.c.missing_since.is_(None))
                    .values(missing_since=at)
                )
            for chunk in _chunks(back):
                await conn.execute(
                    alerts.update().where(alerts.c.task_id.in_(chunk)).values(missing_since=None)
                )

    # -- reminders, acknowledge, snooze -------------------------------------------------------

    @_guarded
    async def remind(
        self, notice_id: int, *, due_before: datetime, now: datetime, body: Mapping[str, Any]
    ) -> bool:
        """Queue a reminder in the notice's thread if none went out since `due_before` (CAS).

        Two replicas deciding the same reminder both ask; the first moves `reminded_at` to now,
        so the second's condition no longer holds and it queues nothing.
        """
        at = _ts(now)
        last = sa.func.coalesce(notices.c.reminded_at, notices.c.posted_at, notices.c.created_at)
        async with self._begin() as conn:
            done = await conn.execute(
                notices.update()
                .where(notices.c.id == notice_id, last <= _ts(due_before))
                .values(reminded_at=at)
            )
            if done.rowcount != 1:
                return False
            await self._enqueue(conn, notice_id, REPLY, body, at)
        return True

    @_guarded
    async def acknowledge(self, notice_id: int, user: str, *, now: datetime) -> NoticeState | None:
        """Record who acknowledged first and when; queue a notice update. None: unknown notice."""
        at = _ts(now)
        async with self._begin() as conn:
            await conn.execute(
                notices.update()
                .where(notices.c.id == notice_id, notices.c.acked_by.is_(None))
                .values(acked_by=user, acked_at=at)
            )
            return await self._touched(conn, notice_id, at)

    @_guarded
    async def snooze(
        self, notice_id: int, user: str, *, until: datetime, now: datetime
    ) -> NoticeState | None:
        """Stop reminders until `until`; queue a notice update. None: unknown notice."""
        at = _ts(now)
        async with self._begin() as conn:
            await conn.execute(
                notices.update()
                .where(notices.c.id == notice_id)
                .values(snoozed_by=user, snoozed_until=_ts(until))
            )
            return await self._touched(conn, notice_id, at)

    # -- outbox -------------------------------------------------------------------------------

    @_guarded
    async def pending(self, *, limit: int = 200) -> list[OutboxItem]:
        """The oldest pending outbox rows, due or not, with where their notice is."""
        query = (
            sa.select(outbox, notices.c.channel, notices.c.ts, notices.c.kind.label("nkind"))
            .join(notices, notices.c.id == outbox.c.notice_id)
            .where(outbox.c.state == _PENDING)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = await conn.execute(query)
            return [
                OutboxItem(
                    id=int(m["id"]),
                    notice_id=int(m["notice_id"]),
                    kind=str(m["kind"]),
                    body=None if m["body"] is None else json.loads(m["body"]),
                    attempts=int(m["attempts"]),
                    due_at=_dt(m["due_at"]),
                    channel=str(m["channel"]),
                    notice_ts=m["ts"],
                    notice_kind=str(m["nkind"]),
                )
                for m in (r._mapping for r in rows)
            ]

    @_guarded
    async def claim(self, item_id: int, holder: str, *, now: datetime, ttl: float) -> bool:
        """Take one row for sending; False when it was sent or another process holds it."""
        at = _ts(now)
        async with self._begin() as conn:
            done = await conn.execute(
                outbox.update()
                .where(
                    outbox.c.id == item_id,
                    outbox.c.state == _PENDING,
                    sa.or_(
                        outbox.c.claimed_until.is_(None),
                        outbox.c.claimed_until < at,
                        outbox.c.claimed_by == holder,
                    ),
                )
                .values(claimed_by=holder, claimed_until=at + ttl)
            )
        return bool(done.rowcount == 1)

    @_guarded
    async def mark_sent(
        self, item: OutboxItem, *, now: datetime, ts: str | None, channel: str | None
    ) -> None:
        """Slack accepted the row; a post also records the notice's ts and channel."""
        at = _ts(now)
        async with self._begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == item.id)
                .values(state=_SENT, sent_at=at, claimed_by=None, claimed_until=None)
            )
            if item.kind == POST and ts:
                await conn.execute(
                    notices.update()
                    .where(notices.c.id == item.notice_id)
                    .values(ts=ts, channel=channel or item.channel, posted_at=at)
                )

    @_guarded
    async def defer(self, item: OutboxItem, *, until: datetime, error: str) -> None:
        """Slack failed; try the row again at `until`."""
        async with self._begin() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id == item.id)
                .values(
                    due_at=_ts(until),
                    attempts=outbox.c.attempts + 1,
                    last_error=error[:500],
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    @_guarded
    async def give_up(self, item: OutboxItem, *, error: str) -> None:
        """Slack refused the row for good; a refused post takes its thread rows with it."""
        async with self._begin() as conn:
            where = outbox.c.id == item.id
            if item.kind == POST:
                where = sa.or_(
                    where,
                    sa.and_(outbox.c.notice_id == item.notice_id, outbox.c.state == _PENDING),
                )
            await conn.execute(
                outbox.update()
                .where(where)
                .values(state=_DEAD, last_error=error[:500], claimed_by=None, claimed_until=None)
            )

    # -- the watcher's health -----------------------------------------------------------------

    @_guarded
    async def watch_state(self) -> WatchState:
        """The current failure streak."""
        async with self._engine.connect() as conn:
            return await self._watch(conn)

    @_guarded
    async def count_failure(self, *, now: datetime, error: str, count: int = 1) -> WatchState:
        """`count` more failed scans in a row (the first at `now`); the streak after them."""
        async with self._begin() as conn:
            await conn.execute(
                watch.update()
                .where(watch.c.id == _WATCH_ID)
                .values(
                    failures=watch.c.failures + count,
                    failing_since=sa.func.coalesce(watch.c.failing_since, _ts(now)),
                    # Redacted as log lines are: an upstream error may echo a credential, and
                    # the database is no place to keep one.
                    last_error=redact(error, 1000),
                )
            )
            return await self._watch(conn)

    @_guarded
    async def count_success(self, *, now: datetime) -> WatchState:
        """A complete scan: the streak ends; returns the state from before it ended."""
        async with self._begin() as conn:
            before = await self._watch(conn)
            await conn.execute(
                watch.update()
                .where(watch.c.id == _WATCH_ID)
                .values(failures=0, failing_since=None, last_ok_at=_ts(now))
            )
            return before

    @_guarded
    async def mark_impaired(
        self, *, channel: str, now: datetime, body: Mapping[str, Any], problem: str
    ) -> bool:
        """Queue the one impaired notice and show `problem` on the Home tab (CAS)."""
        at = _ts(now)
        async with self._begin() as conn:
            done = await conn.execute(
                watch.update()
                .where(watch.c.id == _WATCH_ID, watch.c.impaired.is_(False))
                .values(impaired=True)
            )
            if done.rowcount != 1:
                return False
            notice_id = await self._insert_notice(conn, NOTICE_IMPAIRED, channel, at)
            await self._enqueue(conn, notice_id, POST, body, at)
            await self._put_problem(conn, "watch", problem, at)
        return True

    @_guarded
    async def mark_recovered(self, *, channel: str, now: datetime, body: Mapping[str, Any]) -> bool:
        """Queue the one recovered notice and clear the Home tab problem (CAS)."""
        at = _ts(now)
        async with self._begin() as conn:
            done = await conn.execute(
                watch.update()
                .where(watch.c.id == _WATCH_ID, watch.c.impaired.is_(True))
                .values(impaired=False)
            )
            if done.rowcount != 1:
                return False
            notice_id = await self._insert_notice(conn, NOTICE_RECOVERED, channel, at)
            await self._enqueue(conn, notice_id, POST, body, at)
            await conn.execute(problems.delete().where(problems.c.key == "watch"))
        return True

    # -- problems -----------------------------------------------------------------------------

    @_guarded
    async def set_problem(self, key: str, text: str, *, now: datetime) -> bool:
        """Record a problem for the Home tab; True only the first time (so it is logged once)."""
        async with self._begin() as conn:
            return await self._put_problem(conn, key, text, _ts(now))

    @_guarded
    async def clear_problem(self, key: str) -> bool:
        """Forget a problem that went away; True if there was one."""
        async with self._begin() as conn:
            done = await conn.execute(problems.delete().where(problems.c.key == key))
        return bool(done.rowcount)

    @_guarded
    async def problems(self) -> list[str]:
        """What the Home tab lists under Problems, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sa.select(problems.c.text).order_by(problems.c.since, problems.c.key)
            )
            return [str(r[0]) for r in rows]

    # -- housekeeping -------------------------------------------------------------------------

    @_guarded
    async def prune(self, *, before: datetime) -> int:
        """Drop sent outbox rows, and notices whose tasks all ended, older than `before`."""
        cut = _ts(before)
        async with self._begin() as conn:
            old = sa.select(notices.c.id).where(
                notices.c.created_at < cut,
                ~notices.c.id.in_(
                    sa.select(alerts.c.notice_id).where(
                        sa.or_(alerts.c.finished_at.is_(None), alerts.c.finished_at >= cut)
                    )
                ),
                ~notices.c.id.in_(sa.select(outbox.c.notice_id).where(outbox.c.state == _PENDING)),
            )
            ids = [int(r[0]) for r in await conn.execute(old)]
            for chunk in _chunks(ids):
                await conn.execute(alerts.delete().where(alerts.c.notice_id.in_(chunk)))
                await conn.execute(outbox.delete().where(outbox.c.notice_id.in_(chunk)))
                await conn.execute(notices.delete().where(notices.c.id.in_(chunk)))
            await conn.execute(
                outbox.delete().where(outbox.c.state != _PENDING, outbox.c.created_at < cut)
            )
        return len(ids)

    # -- internals ----------------------------------------------------------------------------

    async def _run(
        self, name: str, call: Callable[[], Awaitable[_T]], *, deadline: float | None = None
    ) -> _T:
        if self._closed:
            # A leaked or late caller fails here, with its own traceback, instead of opening a
            # connection nobody closes.
            raise StoreError(f"the state store was used after it was closed ({name})")
        self._busy += 1
        self._idle.clear()
        try:
            return await self._bounded(name, call, deadline or self._timeout)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def _bounded(self, name: str, call: Callable[[], Awaitable[_T]], deadline: float) -> _T:
        try:
            async with asyncio.timeout(deadline):
                await self._follow_file()
                if self._schema_lost:
                    await self._migrate()
                    self._schema_lost = False
                    log.warning("the state store's tables were gone; created them again")
                return await call()
        except StoreError:
            raise
        except TimeoutError as error:
            raise StoreError(
                f"the state store ({self.backend}) did not answer within {deadline:g} s ({name})",
                cause="TimeoutError",
            ) from error
        except Exception as error:
            if not _is_store_trouble(error):
                raise  # a bug: up whole, with its own type
            cause = _driver_error(error)
            words = self._scrub(str(cause))[:300]
            if _is_schema_gone(words):
                self._schema_lost = True
            kind = type(cause).__name__
            raise StoreError(
                f"the state store ({self.backend}) failed ({name}): {kind}: {words}",
                cause=kind,
            ) from error

    def _scrub(self, text: str) -> str:
        # Drivers do not echo the password, but a URL in a message would carry it.
        return text.replace(self._password, "***") if self._password else text

    async def _follow_file(self) -> None:
        """Notice a SQLite file deleted or replaced under the running bot, and recover.

        The pool keeps connections open, and an open connection goes on reading a deleted file
        while every write fails ("attempt to write a readonly database": SQLite's
        READONLY_DBMOVED), for good; the next start then found an empty file (a task announced
        again, an ending never told). So the deleted file is written back from such a
        connection, and a replaced one is adopted. A call under way in that instant may still
        fail once; the next one works on the file at the path.
        """
        if self._path is None:
            return
        seen = _identity(self._path)
        if self._file is None or seen == self._file:
            self._file = seen or self._file
            return
        async with self._file_lock:
            seen = _identity(self._path)
            if seen == self._file:
                return  # another call recovered it meanwhile
            if seen is None and await self._restore_file():
                log.error(
                    "the state file %s was deleted while the bot ran; written back from the open"
                    " connection, nothing lost",
                    self._path,
                )
            elif seen is None:
                log.error(
                    "the state file %s was deleted while the bot ran; starting an empty one:"
                    " tasks announced before may be announced again",
                    self._path,
                )
            else:
                log.warning("the state file %s was replaced; using the new one", self._path)
            await self._engine.dispose()  # every connection opens the file now at the path
            await self._migrate()
            self._file = _identity(self._path)

    async def _restore_file(self) -> bool:
        pool: Any = self._engine.pool
        if not pool.checkedin():
            return False  # no open connection left: the deleted file's data is gone
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            # Outside any transaction (VACUUM refuses to run in one), so below SQLAlchemy.
            driver: Any = raw.driver_connection
            cursor = await driver.execute("VACUUM INTO ?", (str(self._path),))
            await cursor.close()
        return True

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.begin() as conn:
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        dialect = postgresql if self._postgres else sqlite
        return dialect.insert(table)

    async def _insert_notice(
        self, conn: AsyncConnection, kind: str, channel: str, at: float
    ) -> int:
        result = await conn.execute(
            notices.insert()
            .values(kind=kind, channel=channel, created_at=at)
            .returning(notices.c.id)
        )
        return int(result.scalar_one())

    async def _enqueue(
        self,
        conn: AsyncConnection,
        notice_id: int,
        kind: str,
        body: Mapping[str, Any] | None,
        at: float,
    ) -> None:
        await conn.execute(
            outbox.insert().values(
                notice_id=notice_id,
                kind=kind,
                body=None if body is None else json.dumps(body, ensure_ascii=False),
                state=_PENDING,
                created_at=at,
                due_at=at,
                attempts=0,
            )
        )

    async def _enqueue_update(self, conn: AsyncConnection, notice_id: int, at: float) -> None:
        # One waiting update is enough: it renders the notice from the state at send time. A
        # claimed one may have rendered already, so it does not count.
        waiting = await conn.execute(
            sa.select(outbox.c.id).where(
                outbox.c.notice_id == notice_id,
                outbox.c.kind == UPDATE,
                outbox.c.state == _PENDING,
                outbox.c.claimed_by.is_(None),
            )
        )
        if waiting.first() is None:
            await self._enqueue(conn, notice_id, UPDATE, None, at)

    async def _touched(
        self, conn: AsyncConnection, notice_id: int, at: float
    ) -> NoticeState | None:
        state = await self._notice_state(conn, notice_id)
        if state is not None and state.notice.kind == NOTICE_STALE:
            await self._enqueue_update(conn, notice_id, at)
        return state

    async def _notice_state(self, conn: AsyncConnection, notice_id: int) -> NoticeState | None:
        row = (await conn.execute(sa.select(notices).where(notices.c.id == notice_id))).first()
        if row is None:
            return None
        rows = await conn.execute(sa.select(alerts).where(alerts.c.notice_id == notice_id))
        return NoticeState(_notice(row._mapping), tuple(_alert(r._mapping) for r in rows))

    async def _notices_of(self, conn: AsyncConnection, task_ids: set[str]) -> list[int]:
        found: set[int] = set()
        for chunk in _chunks(sorted(task_ids)):
            rows = await conn.execute(
                sa.select(alerts.c.notice_id).where(alerts.c.task_id.in_(chunk)).distinct()
            )
            found.update(int(r[0]) for r in rows)
        return sorted(found)

    async def _watch(self, conn: AsyncConnection) -> WatchState:
        row = (await conn.execute(sa.select(watch).where(watch.c.id == _WATCH_ID))).first()
        if row is None:
            return WatchState()
        m = row._mapping
        return WatchState(
            failures=int(m["failures"]),
            failing_since=_dt_or_none(m["failing_since"]),
            last_error=m["last_error"],
            impaired=bool(m["impaired"]),
            last_ok_at=_dt_or_none(m["last_ok_at"]),
        )

    async def _put_problem(self, conn: AsyncConnection, key: str, text: str, at: float) -> bool:
        insert = self._insert(problems).values(key=key, text=text, since=at)
        added = await conn.execute(
            insert.on_conflict_do_nothing(index_elements=[problems.c.key]).returning(problems.c.key)
        )
        if added.first() is not None:
            return True
        await conn.execute(problems.update().where(problems.c.key == key).values(text=text))
        return False


class _Lost(Exception):
    """Another replica changed a row first; raised inside a transaction to roll it back."""


def _serialise_sqlite(engine: AsyncEngine) -> None:
    """BEGIN IMMEDIATE for every transaction: SQLite then serialises writers up front.

    pysqlite's default deferred BEGIN lets two connections read, and then the second to write
    fails with "database is locked" at once instead of waiting (SQLAlchemy docs, "Serializable
    isolation / Savepoints / Transactional DDL" for pysqlite and aiosqlite).
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _is_store_trouble(error: BaseException) -> bool:
    """Errors of the database or the way to it, as opposed to a bug in the bot."""
    if isinstance(error, SQLAlchemyError | OSError):
        return True
    return type(error).__module__.split(".")[0] in _DRIVERS


def _driver_error(error: BaseException) -> BaseException:
    # SQLAlchemy's own message appends the statement and its parameters (task names, notice
    # bodies): the driver's error alone says what went wrong.
    orig = getattr(error, "orig", None)
    return orig if isinstance(orig, BaseException) else error


def _is_schema_gone(words: str) -> bool:
    return "no such table" in words or "UndefinedTable" in words


def _chunks(items: Sequence[str] | Sequence[int]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield list(items[start : start + _IN_CHUNK])


def _ts(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _ts_or_none(moment: datetime | None) -> float | None:
    return None if moment is None else _ts(moment)


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(float(value), tz=UTC)


def _dt_or_none(value: float | None) -> datetime | None:
    return None if value is None else _dt(value)


def _alert(m: RowMapping) -> Alert:
    return Alert(
        task_id=str(m["task_id"]),
        notice_id=int(m["notice_id"]),
        server_name=str(m["server_name"]),
        server_id=str(m["server_id"]),
        keypair_name=str(m["keypair_name"]),
        operate_type=str(m["operate_type"]),
        started_at=_dt_or_none(m["started_at"]),
        announced_at=_dt(m["announced_at"]),
        finished_at=_dt_or_none(m["finished_at"]),
        outcome=m["outcome"],
        error_code=m["error_code"],
        error_msg=m["error_msg"],
        missing_since=_dt_or_none(m["missing_since"]),
    )


def _notice(m: RowMapping) -> Notice:
    return Notice(
        id=int(m["id"]),
        kind=str(m["kind"]),
        channel=str(m["channel"]),
        ts=m["ts"],
        created_at=_dt(m["created_at"]),
        posted_at=_dt_or_none(m["posted_at"]),
        acked_by=m["acked_by"],
        acked_at=_dt_or_none(m["acked_at"]),
        snoozed_by=m["snoozed_by"],
        snoozed_until=_dt_or_none(m["snoozed_until"]),
        reminded_at=_dt_or_none(m["reminded_at"]),
    )
