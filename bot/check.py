"""`python -m bot check`: one real call to KPS and to Slack, reported in plain words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import aiohttp
from slack_sdk.errors import SlackApiError

from bot.app import Runtime, build_runtime
from bot.config import AkSkAuthSettings, PasswordAuthSettings, Settings
from bot.errors import KPSAPIError, KPSBadResponse, KPSConnectionError, KPSError, KPSTimeout


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: whether it is fine, and what was found."""

    ok: bool
    text: str
    warning: bool = False  # could not be decided; reported, but does not fail the check


async def run_check(settings: Settings, out: TextIO) -> int:
    """Print what works and what does not; 0 only when all is well."""
    runtime = build_runtime(settings)
    try:
        findings = [Finding(True, "settings are complete and well formed")]
        findings.append(await check_kps(runtime))
        findings.extend(await check_slack(runtime))
        if runtime.store is not None:
            findings.append(await check_store(runtime))
    finally:
        await runtime.aclose()
    for finding in findings:
        mark = "!" if finding.warning else ("ok" if finding.ok else "FAIL")
        out.write(f"[{mark:>4}] {finding.text}\n")
    failed = [f for f in findings if not f.ok and not f.warning]
    out.write("All checks passed.\n" if not failed else f"{len(failed)} check(s) failed.\n")
    return 0 if not failed else 1


async def check_kps(runtime: Runtime) -> Finding:
    """List one running task and explain any failure."""
    settings = runtime.settings
    where = settings.kps_endpoint
    try:
        page = await runtime.kps.list_running_tasks(1, 0)
    except KPSConnectionError:
        return Finding(False, f"KPS endpoint {where} is unreachable (DNS, network or TLS)")
    except KPSTimeout:
        return Finding(
            False, f"KPS endpoint {where} did not answer within {settings.kps_timeout} s"
        )
    except KPSBadResponse as error:
        return Finding(False, f"{where} answered, but not like KPS: {error.detail}")
    except KPSAPIError as error:
        return Finding(False, explain_kps_error(error, settings))
    except KPSError as error:
        return Finding(False, f"KPS call failed: {error}")
    return Finding(
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


async def check_slack(runtime: Runtime) -> list[Finding]:
    """`auth.test`, then whether the stale-notice channel can be posted to."""
    settings = runtime.settings
    try:
        auth = await runtime.slack.auth_test()
    except SlackApiError as error:
        return [Finding(False, f"Slack rejected the bot token: {error.response.get('error')}")]
    except (aiohttp.ClientError, TimeoutError) as error:
        return [Finding(False, f"Slack API at {settings.slack_api_url} unreachable: {error}")]
    findings = [
        Finding(True, f"Slack: signed in as @{auth.get('user')} in workspace {auth.get('team')}")
    ]
    channel = settings.stale_channel_id
    if channel is None:
        findings.append(Finding(True, "STALE_CHANNEL_ID unset: stale-task notices are off"))
        return findings
    try:
        info = await runtime.slack.conversations_info(channel=channel)
    except SlackApiError as error:
        code = error.response.get("error")
        if code == "missing_scope":
            findings.append(
                Finding(
                    False,
                    f"cannot look up {channel} without the channels:read scope; "
                    "the first notice will show whether posting works",
                    warning=True,
                )
            )
        else:
            findings.append(Finding(False, f"stale-notice channel {channel}: {code}"))
        return findings
    data = info.get("channel") or {}
    name = data.get("name", channel)
    if data.get("is_member") or not data.get("is_private"):
        how = "a member" if data.get("is_member") else "public (chat:write.public)"
        findings.append(Finding(True, f"stale notices can be posted to #{name}: the bot is {how}"))
    else:
        findings.append(
            Finding(False, f"#{name} is private and the bot is not in it: /invite @kps-bot there")
        )
    return findings


async def check_store(runtime: Runtime) -> Finding:
    """Open the alert-state store, create or migrate its schema, and name the watching replica."""
    store = runtime.store
    assert store is not None
    try:
        await store.migrate()
        holder = await store.lease_holder(now=datetime.now(UTC))
    except Exception as error:  # any driver's failure: reported in words, never raised
        text = f"{type(error).__name__}: {error}"[:300]
        for secret in runtime.settings.secret_values():
            text = text.replace(secret, "[redacted]")
        return Finding(False, f"alert state store (STATE_URL) cannot be used: {text}")
    who = f"replica {holder} is watching" if holder else "no replica is watching right now"
    return Finding(True, f"alert state store ({store.backend}) is ready; {who}")
