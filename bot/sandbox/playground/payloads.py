"""What Slack sends an app, built the way Slack builds it: command forms, clicks, events, signed."""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from bot.secret import Secret

FORM: Final = "application/x-www-form-urlencoded"
JSON: Final = "application/json"
# Slack still sends the deprecated verification token in every payload; Bolt ignores it.
_VERIFICATION_TOKEN: Final = "playground-verification-token"  # noqa: S105 - not a credential


@dataclass(frozen=True, slots=True)
class Workspace:
    """Who is who in the playground's pretend workspace."""

    team_id: str
    team_domain: str
    app_id: str
    bot_user_id: str
    bot_name: str
    user_id: str
    user_name: str


@dataclass(frozen=True, slots=True)
class SlackRequest:
    """One body for `/slack/events` and its content type, before signing."""

    body: str
    content_type: str


def signature_headers(body: str, secret: Secret, *, now: float | None = None) -> dict[str, str]:
    """`X-Slack-Request-Timestamp` and the `v0=` HMAC-SHA256 signature Slack sends with `body`."""
    timestamp = str(int(time.time() if now is None else now))
    signature = SignatureVerifier(secret.reveal()).generate_signature(
        timestamp=timestamp, body=body
    )
    if signature is None:  # slack_sdk gives None only without a secret
        raise ValueError("no signing secret to sign with")
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}


def escape_typed(text: str) -> str:
    """Escape what a person typed the way Slack does before an app sees it (`&`, `<`, `>`)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mention_wire_text(typed: str, ws: Workspace) -> tuple[str, bool]:
    """Typed text as Slack delivers it, `@kps-bot` becoming `<@U…>`; and whether it mentions."""
    pattern = re.compile(rf"(?<![\w@])@{re.escape(ws.bot_name)}\b")
    escaped = escape_typed(typed)
    wire, mentions = pattern.subn(f"<@{ws.bot_user_id}>", escaped)
    return wire, mentions > 0


def command_request(
    ws: Workspace,
    *,
    command: str,
    text: str,
    channel_id: str,
    channel_name: str,
    response_url: str,
) -> SlackRequest:
    """A slash command as Slack posts it: a form with the fields its docs list."""
    fields = {
        "token": _VERIFICATION_TOKEN,
        "team_id": ws.team_id,
        "team_domain": ws.team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": ws.user_id,
        "user_name": ws.user_name,
        "command": command,
        "text": text,
        "api_app_id": ws.app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": _trigger_id(),
    }
    return SlackRequest(urlencode(fields), FORM)


def button_action(element: dict[str, Any], block_id: str) -> dict[str, Any]:
    """The `actions[0]` Slack sends for a click on a button element."""
    action: dict[str, Any] = {
        "type": "button",
        "action_id": element.get("action_id", ""),
        "block_id": block_id,
        "text": element.get("text", {"type": "plain_text", "text": ""}),
        "action_ts": f"{time.time():.6f}",
    }
    for key in ("value", "style", "url"):
        if key in element:
            action[key] = element[key]
    return action


def message_click_request(
    ws: Workspace,
    *,
    action: dict[str, Any],
    channel_id: str,
    channel_name: str,
    message: dict[str, Any],
    ephemeral: bool,
    response_url: str,
) -> SlackRequest:
    """A `block_actions` payload for a button on a message, as a `payload=` form."""
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message["ts"],
        "channel_id": channel_id,
        "is_ephemeral": ephemeral,
    }
    if message.get("thread_ts"):
        container["thread_ts"] = message["thread_ts"]
    payload = _click_payload(ws, action, container)
    payload["channel"] = {"id": channel_id, "name": channel_name}
    if not ephemeral:
        # Slack leaves the message out of the payload when it is ephemeral.
        payload["message"] = message
    payload["response_url"] = response_url
    return SlackRequest(urlencode({"payload": json.dumps(payload)}), FORM)


def view_click_request(
    ws: Workspace, *, action: dict[str, Any], view: dict[str, Any]
) -> SlackRequest:
    """A `block_actions` payload for a button on the Home tab: no channel, no response_url."""
    payload = _click_payload(ws, action, {"type": "view", "view_id": view.get("id", "")})
    payload["view"] = view
    return SlackRequest(urlencode({"payload": json.dumps(payload)}), FORM)


def app_mention(
    ws: Workspace, *, text: str, channel_id: str, ts: str, thread_ts: str | None
) -> dict[str, Any]:
    """The `app_mention` event for a message that mentions the bot."""
    event: dict[str, Any] = {
        "type": "app_mention",
        "user": ws.user_id,
        "text": text,
        "ts": ts,
        "channel": channel_id,
        "event_ts": ts,
        "team": ws.team_id,
        "client_msg_id": secrets.token_hex(16),
    }
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def app_home_opened(
    ws: Workspace, *, channel_id: str, ts: str, view: dict[str, Any] | None
) -> dict[str, Any]:
    """The `app_home_opened` event for the Home tab, with the view last published, if any."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": ws.user_id,
        "channel": channel_id,
        "tab": "home",
        "event_ts": ts,
    }
    if view is not None:
        event["view"] = view
    return event


def event_request(ws: Workspace, event: dict[str, Any]) -> SlackRequest:
    """An Events API `event_callback` envelope around `event`, as JSON."""
    envelope = {
        "token": _VERIFICATION_TOKEN,
        "team_id": ws.team_id,
        "api_app_id": ws.app_id,
        "event": event,
        "type": "event_callback",
        "event_id": "Ev" + secrets.token_hex(6).upper(),
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": ws.team_id,
                "user_id": ws.bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }
    return SlackRequest(json.dumps(envelope), JSON)


def _click_payload(
    ws: Workspace, action: dict[str, Any], container: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {
            "id": ws.user_id,
            "username": ws.user_name,
            "name": ws.user_name,
            "team_id": ws.team_id,
        },
        "api_app_id": ws.app_id,
        "token": _VERIFICATION_TOKEN,
        "container": container,
        "trigger_id": _trigger_id(),
        "team": {"id": ws.team_id, "domain": ws.team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "state": {"values": {}},
        "actions": [action],
    }


def _trigger_id() -> str:
    return f"{int(time.time())}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
