"""`python -m bot check`: one real call to KPS and to Slack, reported in plain words."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import aiohttp
import sqlalchemy as sa
from slack_sdk.errors import SlackApiError
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import Runtime, build_runtime
from bot.config import AkSkAuthSettings, PasswordAuthSettings, Settings, oauth_conflict
from bot.errors import KPSAPIError, KPSBadResponse, KPSConnectionError, KPSError, KPSTimeout
from bot.outbox import SLACK_CALL_ERRORS, describe_slack_failure
from bot.store import SCHEMA_VERSION, Store, schema_version


# Bolt switches to multi-workspace OAuth when both are in the process environment, even empty
# (slack_bolt.app.async_app: `os.environ.get(...) is not None`), and then ignores the bot token.
@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report: whether it is fine, and what was found."""

    ok: bool
    text: str
    warning: bool = False  # could not be decided; reported, but does not fail the check


async def run_check(
    settings: Settings, out: TextIO, environ: Mapping[str, str] | None = None
) -> int:
    """Print what works and what does not; 0 only when all is well.

    `environ` is the process environment Bolt reads (default `os.environ`), not the `.env` file.
    """
    results = [CheckResult(True, "settings are complete and well formed")]
    if oauth := check_oauth_variables(os.environ if environ is None else environ):
        results.append(oauth)
    runtime = build_runtime(settings)
    try:
        results.append(await check_kps(runtime))
        results.extend(await check_slack(runtime))
        if runtime.store is not None:
            results.append(await check_store(runtime))
    finally:
        await runtime.aclose()
    for result in results:
        mark = "!" if result.warning else ("ok" if result.ok else "FAIL")
        out.write(f"[{mark:>4}] {result.text}\n")
    failed = [f for f in results if not f.ok and not f.warning]
    out.write("All checks passed.\n" if not failed else f"{len(failed)} check(s) failed.\n")
    return 0 if not failed else 1


def check_oauth_variables(environ: Mapping[str, str]) -> CheckResult | None:
    """A failure when Bolt would take the OAuth path and ignore SLACK_BOT_TOKEN."""
    problem = oauth_conflict(environ)
    if problem is None:
        return None
    text, fatal = problem
    return CheckResult(False, text, warning=not fatal)


async def check_kps(runtime: Runtime) -> CheckResult:
    """List one running task and explain any failure."""
    settings = runtime.settings
    where = settings.kps_endpoint
    try:
        page = await runtime.kps.list_running_tasks(1, 0)
    except KPSConnectionError:
        return CheckResult(False, f"KPS endpoint {where} is unreachable (DNS, network or TLS)")
    except KPSTimeout:
        return CheckResult(
            False, f"KPS endpoint {where} did not answer within {settings.kps_timeout} s"
        )
    except KPSBadResponse as error:
        return CheckResult(False, f"{where} answered, but not like KPS: {error.detail}")
    except KPSAPIError as error:
        return CheckResult(False, explain_kps_error(error, settings))
    except KPSError as error:
        return CheckResult(False, f"KPS call failed: {error}")
    return CheckResult(
        True,
        f"KPS answers at {where}: project {settings.project_id} has {page.total} running task(s)",
    )


def explain_kps_error(error: KPSAPIError, settings: Settings) -> str:
    """The likely cause of a KPS or IAM refusal, in words."""
    detail = f"{error.error_code} {error.error_msg}".strip()
    rid = f", request id {error.request_id}" if error.request_id else ""
    if error.service == "IAM":
        return f"IAM at {settings.iam_endpoint} refused the password login: {detail}{rid}"
    text = error.error_msg.lower()
    expired = error.error_code.endswith(".0303") or "expired" in text
    if error.status == 401 and expired and isinstance(settings.auth, AkSkAuthSettings):
        return (
            "AK/SK signature refused as expired: this machine's clock differs from Huawei "
            f"Cloud's by more than 15 minutes; fix the clock (NTP) ({detail}{rid})"
        )
    if error.status == 401:
        mode = (
            "AK/SK"
            if isinstance(settings.auth, AkSkAuthSettings)
            else "IAM token"
            if isinstance(settings.auth, PasswordAuthSettings)
            else "KPS_AUTH_TOKEN"
        )
        return f"KPS rejected the credentials ({mode}): {detail}{rid}"
    if error.status in (403, 404):
        return (
            f"project {settings.project_id} is unknown in this region or not permitted for "
            f"these credentials: {detail}{rid}"
        )
    return f"KPS answered HTTP {error.status}: {detail}{rid}"


async def check_slack(runtime: Runtime) -> list[CheckResult]:
    """`auth.test`, then whether the stale-notice channel can be posted to."""
    settings = runtime.settings
    try:
        auth = await runtime.slack.auth_test()
    except SlackApiError as error:
        said = describe_slack_failure(error)
        return [CheckResult(False, f"Slack rejected the bot token: {said}")]
    except (aiohttp.ClientError, TimeoutError) as error:
        return [CheckResult(False, f"Slack API at {settings.slack_api_url} unreachable: {error}")]
    except SLACK_CALL_ERRORS as error:  # an answer that is not Slack's JSON, and the like
        said = describe_slack_failure(error)
        return [CheckResult(False, f"Slack API at {settings.slack_api_url} answered {said}")]
    results = [
        CheckResult(
            True, f"Slack: signed in as @{auth.get('user')} in workspace {auth.get('team')}"
        )
    ]
    channel = settings.stale_channel_id
    if channel is None:
        results.append(CheckResult(True, "STALE_CHANNEL_ID unset: stale-task notices are off"))
        return results
    try:
        info = await runtime.slack.conversations_info(channel=channel)
    except SlackApiError as error:
        code = describe_slack_failure(error)
        if code == "missing_scope":
            results.append(
                CheckResult(
                    False,
                    f"cannot look up {channel} without the channels:read scope; "
                    "the first notice will show whether posting works",
                    warning=True,
                )
            )
        else:
            results.append(CheckResult(False, f"stale-notice channel {channel}: {code}"))
        return results
    except SLACK_CALL_ERRORS as error:
        said = describe_slack_failure(error)
        results.append(CheckResult(False, f"stale-notice channel {channel}: Slack answered {said}"))
        return results
    data = info.get("channel") or {}
    name = data.get("name", channel)
    if data.get("is_member") or not data.get("is_private"):
        how = "a member" if data.get("is_member") else "public (chat:write.public)"
        results.append(
            CheckResult(True, f"stale notices can be posted to #{name}: the bot is {how}")
        )
    else:
        results.append(
            CheckResult(
                False, f"#{name} is private and the bot is not in it: /invite @kps-bot there"
            )
        )
    return results


async def check_store(runtime: Runtime) -> CheckResult:
    """Read the alert-state store, creating and changing nothing, and name the watching replica.

    A check must leave no state behind: the default STATE_URL would otherwise create kps-bot.db
    in whatever directory `check` ran in. SQLite is opened read-only, and only if it exists.
    """
    url = make_url(runtime.settings.state_url.reveal())
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = _sqlite_path(url)
        if path is not None:
            if not path.exists():
                return _sqlite_to_be_created(path)
            if not os.access(path, os.R_OK | os.W_OK):
                return CheckResult(
                    False,
                    f"alert state store (STATE_URL) cannot be used: {path} is not readable and "
                    "writable by this user",
                )
            url = _read_only(url, path)
    try:
        version, holder = await _read_store(url)
    except Exception as error:  # any driver's failure: reported in words, never raised
        text = f"{type(error).__name__}: {error}"[:300]
        for secret in runtime.settings.secret_values():
            text = text.replace(secret, "[redacted]")
        return CheckResult(False, f"alert state store (STATE_URL) cannot be used: {text}")
    if version is None:
        return CheckResult(
            True, f"alert state store ({backend}) is reachable; the bot creates its tables at start"
        )
    if version > SCHEMA_VERSION:
        return CheckResult(
            False,
            f"the alert state store has schema version {version}, newer than this bot's "
            f"{SCHEMA_VERSION}: run the newer bot, or point STATE_URL elsewhere",
        )
    if version < SCHEMA_VERSION:
        return CheckResult(
            True,
            f"alert state store ({backend}) is ready; the bot upgrades its schema from version "
            f"{version} to {SCHEMA_VERSION} at start",
        )
    who = f"replica {holder} is watching" if holder else "no replica is watching right now"
    return CheckResult(True, f"alert state store ({backend}) is ready; {who}")


def _sqlite_path(url: URL) -> Path | None:
    """The file behind an SQLite URL; None for an in-memory database."""
    database = url.database or ""
    if database.startswith("file:"):  # already a URI filename (uri=true)
        database = database[len("file:") :]
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(database).resolve()


def _sqlite_to_be_created(path: Path) -> CheckResult:
    folder = path.parent
    if not folder.is_dir():
        return CheckResult(
            False, f"alert state store (STATE_URL) cannot be used: folder {folder} does not exist"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        return CheckResult(
            False,
            f"alert state store (STATE_URL) cannot be used: the bot cannot create {path.name} "
            f"in {folder} (not writable by this user)",
        )
    return CheckResult(
        True, f"alert state store (sqlite) is ready: the bot creates {path} at first start"
    )


def _read_only(url: URL, path: Path) -> URL:
    # SQLite's URI filename with mode=ro neither creates the file nor writes to it.
    query = {**url.query, "mode": "ro", "uri": "true"}
    return url.set(database=f"file:{quote(str(path))}", query=query)


async def _read_store(url: URL) -> tuple[int | None, str | None]:
    """The store's schema version (None: no tables yet) and, when current, the lease holder."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            if schema_version.name not in tables:
                return None, None
            version = (await conn.execute(sa.select(schema_version.c.version))).scalar()
    finally:
        await engine.dispose()
    if version is None or version != SCHEMA_VERSION:
        return version, None
    store = Store.open(url.render_as_string(hide_password=False))
    try:
        return version, await store.lease_holder(now=datetime.now(UTC))
    finally:
        await store.close()
