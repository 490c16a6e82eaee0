"""No secret reaches Slack: an IAM or KPS that echoes the request (credentials and all) in its
error, end to end through the running bot, and the redaction at each edge where Slack text leaves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.blockkit import Message, escape, redact_payload, section_block
from bot.config import AkSkAuthSettings, PasswordAuthSettings, Settings, TokenAuthSettings
from bot.gate import ResponseUrls
from bot.logs import REDACTED, register_secret
from bot.outbox import Delivery, Outbox
from bot.replies import Replies
from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.simulator import Fault, Simulator, seed_tasks
from bot.secret import Secret
from bot.store import Store
from tests.conftest import ALERTS, PROJECT, TOKEN, make_settings, start_bot
from tests.standin import wait_for

DOMAIN, USERNAME = "acme", "ops"
# `&`, `<` and `>` reach mrkdwn escaped, where a redaction of the raw value would miss them.
PASSWORD = "Pw&<vQ7zRk>-9f3#Lm"
AK, SK = "AKECHOTEST0000000001", "sk-ECHO-9a8b7c6d5e4f3a2b1c0d"
SECURITY_TOKEN = "sts-ECHO-" + "Zq" * 40


@dataclass(frozen=True)
class Mode:
    """One way the bot authenticates, and the simulator that accepts it."""

    name: str
    simulator: Callable[[], Simulator]
    auth: Any
    fault_path: str  # the echoing service: "/v3/auth" (IAM) or "/v3/" (KPS)


def _tasks() -> Any:
    return seed_tasks(5, now=time.time())


MODES = [
    Mode(
        "iam-password",
        lambda: Simulator(project_id=PROJECT, tasks=_tasks(), users={(DOMAIN, USERNAME): PASSWORD}),
        PasswordAuthSettings(USERNAME, Secret(PASSWORD), DOMAIN),
        "/v3/auth",
    ),
    Mode(
        "kps-issued-token",
        lambda: Simulator(project_id=PROJECT, tasks=_tasks(), users={(DOMAIN, USERNAME): PASSWORD}),
        PasswordAuthSettings(USERNAME, Secret(PASSWORD), DOMAIN),
        "/v3/",
    ),
    Mode(
        "kps-static-token",
        lambda: Simulator(project_id=PROJECT, tasks=_tasks(), static_tokens=[TOKEN]),
        TokenAuthSettings(Secret(TOKEN)),
        "/v3/",
    ),
    Mode(
        "kps-aksk",
        lambda: Simulator(project_id=PROJECT, tasks=_tasks(), aksk={AK: SK}),
        AkSkAuthSettings(AK, Secret(SK)),
        "/v3/",
    ),
    Mode(
        "kps-aksk-temporary",
        lambda: Simulator(
            project_id=PROJECT, tasks=_tasks(), aksk={AK: SK}, security_tokens=[SECURITY_TOKEN]
        ),
        AkSkAuthSettings(AK, Secret(SK), Secret(SECURITY_TOKEN)),
        "/v3/",
    ),
]


def _sent_credentials(sim: Simulator) -> set[str]:
    """Every credential the bot sent (issued tokens, signatures): what an echo can carry."""
    found: set[str] = set()
    for request in sim.requests:
        for name in ("x-auth-token", "x-security-token"):
            if value := request.headers.get(name):
                found.add(value)
        authorization = request.headers.get("authorization", "")
        if "Signature=" in authorization:
            found.add(authorization.rsplit("Signature=", 1)[1])
    return found


def _secret_forms(value: str) -> set[str]:
    """A secret as it could appear in a Slack payload: raw, mrkdwn-escaped, JSON-escaped."""
    return {value, escape(value), json.dumps(value)[1:-1]}


def _everything(calls: list[Call]) -> str:
    return "\n".join(json.dumps(call.args, ensure_ascii=False) for call in calls)


def _impaired(call: Call) -> bool:
    return call.args.get("channel") == ALERTS and "impaired" in json.dumps(call.args)


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
async def test_an_echoing_upstream_puts_no_secret_into_slack(
    mode: Mode, slack: FakeSlack, state_url: str
) -> None:
    sim = mode.simulator()
    async with sim:
        # A gateway answering 400 with the request quoted in its message: body and headers.
        sim.inject(
            Fault(
                kind="echo",
                status=400,
                shape="apig",
                error_code="APIG.0201",
                error_msg="Request rejected",
                path=mode.fault_path,
                times=-1,
            )
        )
        settings: Settings = make_settings(
            sim,
            slack,
            auth=mode.auth,
            stale_channel_id=ALERTS,
            state_url=Secret(state_url),
            poll_interval=0.1,
        )
        bot = await start_bot(settings)
        try:
            await bot.sender.command("", slack.response_url("cmd"))
            (reply,) = await wait_for(slack, "response_url", 1, timeout=15)
            # The watcher's scans fail the same way until the channel hears it is impaired.
            await wait_for(slack, "chat.postMessage", 1, timeout=20, where=_impaired)
            home = {"type": "app_home_opened", "user": "U0ALICE", "channel": "D0A", "tab": "home"}
            await bot.sender.event(home, event_id="EvHome")
            (view,) = await wait_for(slack, "views.publish", 1, timeout=15)
            await bot.settled()
        finally:
            assert await bot.shutdown() == 0
            await bot.sender.aclose()
        echoed = _sent_credentials(sim)

    shown = _everything(slack.calls)
    secrets = {PASSWORD, TOKEN, SK, SECURITY_TOKEN, *echoed}
    for secret in secrets:
        for form in _secret_forms(secret):
            assert form not in shown, f"{mode.name}: a secret reached Slack"
    # Not vacuous: the echo reached each surface, and was redacted there.
    service = "IAM" if mode.fault_path == "/v3/auth" else "KPS"
    assert f"{service} answered HTTP 400" in json.dumps(reply.args)
    assert "APIG.0201" in json.dumps(view.args) and "Request rejected" in json.dumps(view.args)
    assert "Request: " in json.dumps(reply.args)
    if "aksk" not in mode.name:
        # Password and token lie within the 300 characters shown; the AK/SK headers come after
        # 400 characters of others and are clipped away (test_blocks covers them redacted).
        assert REDACTED in json.dumps(reply.args)


def test_redact_payload_reaches_every_string_and_escaped_secrets() -> None:
    register_secret(PASSWORD)
    payload = {
        "text": f"said {PASSWORD}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"`{escape(PASSWORD)}`"}},
            {"type": "actions", "elements": [{"type": "button", "value": PASSWORD}]},
        ],
        "count": 3,
        "flag": True,
    }
    cleaned = redact_payload(payload)
    shown = json.dumps(cleaned, ensure_ascii=False)
    for form in _secret_forms(PASSWORD):
        assert form not in shown
    assert cleaned["count"] == 3 and cleaned["flag"] is True
    assert cleaned["text"] == f"said {REDACTED}"
    # The caller's payload is untouched: a copy is redacted.
    assert payload["text"] == f"said {PASSWORD}"


def test_redact_payload_keeps_ordinary_mrkdwn_as_it_is() -> None:
    text = "*web-01* &lt;tag&gt; · <!date^1700000000^{date_short_pretty}|2023-11-14 22:13 UTC>"
    assert redact_payload({"text": text}) == {"text": text}


def test_a_message_never_hands_out_a_registered_secret() -> None:
    # Every route a Message takes to Slack (response_url, chat.postMessage, an ack, the
    # outbox's stored body) reads it through as_payload.
    register_secret(SK)
    message = Message(text=f"key {SK}", blocks=(section_block(f"key {SK}"),))
    assert SK not in json.dumps(message.as_payload())


# --- the edges: whatever reaches them, no registered secret leaves --------------------------------

EDGE_SECRET = "edge-SECRET-5b7d9f1e3c"


class _Raw(Message):
    """A Message whose payload skips as_payload's redaction: something built some other way."""

    def as_payload(self) -> dict[str, Any]:
        return {"text": self.text, "blocks": list(self.blocks)}


async def test_a_stored_notice_is_redacted_when_the_outbox_sends_it(
    slack: FakeSlack, slack_client: AsyncWebClient, state_url: str
) -> None:
    register_secret(EDGE_SECRET)
    store = Store.open(state_url)
    await store.migrate()
    now = datetime.now(UTC)
    # A row written by an older version, or by a path that did not redact: stored as it came.
    body = {"text": f"impaired: {EDGE_SECRET}", "blocks": [section_block(f"key {EDGE_SECRET}")]}
    try:
        assert await store.mark_impaired(channel=ALERTS, now=now, body=body, problem="p")
        outbox = Outbox(
            store=store,
            slack=slack_client,
            config=Delivery(),
            holder="test",
            render=lambda state: {},
            clock=lambda: datetime.now(UTC),
        )
        assert await outbox.deliver() == 1
    finally:
        await store.close()
    (posted,) = await wait_for(slack, "chat.postMessage", 1)
    shown = _everything([posted])
    assert EDGE_SECRET not in shown and REDACTED in shown


async def test_a_response_url_reply_is_redacted_however_it_was_built(slack: FakeSlack) -> None:
    register_secret(EDGE_SECRET)
    message = _Raw(text=f"said {EDGE_SECRET}", blocks=(section_block(f"said {EDGE_SECRET}"),))
    async with aiohttp.ClientSession() as session:
        replies = Replies(session, allowed=ResponseUrls.for_api(slack.api_url).allows)
        assert await replies.send(slack.response_url("edge"), message)
    (reply,) = await wait_for(slack, "response_url", 1)
    shown = _everything([reply])
    assert EDGE_SECRET not in shown and REDACTED in shown


async def test_the_home_tab_is_redacted_where_it_is_published(
    bot: Any, sim: Simulator, slack: FakeSlack
) -> None:
    # A KPS string that holds a configured secret (the oldest task's name): shown nowhere.
    sim.add_task(
        server_name=f"copied {TOKEN} here", task_time_ms=int((time.time() - 86_400) * 1000)
    )
    home = {"type": "app_home_opened", "user": "U0ALICE", "channel": "D0A", "tab": "home"}
    await bot.sender.event(home, event_id="EvHomeLeak")
    (view,) = await wait_for(slack, "views.publish", 1, timeout=15)
    shown = _everything([view])
    assert "copied" in shown and TOKEN not in shown and REDACTED in shown
