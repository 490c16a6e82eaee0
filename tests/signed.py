"""Sends Slack-signed requests to a running bot, the way Slack itself would."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier


class SlackSender:
    """Posts slash commands, button clicks and events to `/slack/events`, signed."""

    def __init__(self, base_url: str, signing_secret: str, *, team: str = "T0TEST") -> None:
        self.url = base_url.rstrip("/") + "/slack/events"
        self._verifier = SignatureVerifier(signing_secret)
        self.team = team
        self.client = httpx.AsyncClient(timeout=30)

    async def aclose(self) -> None:
        await self.client.aclose()

    def sign(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self._verifier.generate_signature(timestamp=ts, body=body)
        assert signature is not None  # slack_sdk returns None only without a secret
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}

    async def post(
        self, body: str, content_type: str, *, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        sent = {"Content-Type": content_type, **self.sign(body)}
        sent.update(headers or {})
        return await self.client.post(self.url, content=body.encode(), headers=sent)

    async def command(
        self, text: str, response_url: str, *, user: str = "U0ALICE", channel: str = "C0GENERAL"
    ) -> httpx.Response:
        body = urlencode(
            {
                "token": "legacy-verification-token",
                "team_id": self.team,
                "team_domain": "test",
                "channel_id": channel,
                "channel_name": "general",
                "user_id": user,
                "user_name": "alice",
                "command": "/kps",
                "text": text,
                "api_app_id": "A0KPS",
                "response_url": response_url,
                "trigger_id": "1.2.3",
            }
        )
        return await self.post(body, "application/x-www-form-urlencoded")

    def action_payload(
        self,
        action_id: str,
        value: str,
        response_url: str | None,
        *,
        user: str = "U0ALICE",
        channel: str = "C0GENERAL",
        container: str = "message",
        ephemeral: bool = True,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": self.team, "domain": "test"},
            "user": {"id": user, "username": "alice", "team_id": self.team},
            "api_app_id": "A0KPS",
            "token": "legacy-verification-token",
            "container": {
                "type": container,
                "message_ts": "1.0",
                "channel_id": channel,
                "is_ephemeral": ephemeral,
            },
            "trigger_id": "1.2.3",
            "channel": {"id": channel, "name": "general"},
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "b",
                    "value": value,
                    "action_ts": str(time.time()),
                }
            ],
        }
        if response_url is not None:
            payload["response_url"] = response_url
        return payload

    async def action(
        self, action_id: str, value: str, response_url: str | None, **kwargs: Any
    ) -> httpx.Response:
        payload = self.action_payload(action_id, value, response_url, **kwargs)
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post(body, "application/x-www-form-urlencoded")

    async def event(self, event: dict[str, Any], *, event_id: str = "Ev0001") -> httpx.Response:
        body = json.dumps(
            {
                "token": "legacy-verification-token",
                "team_id": self.team,
                "api_app_id": "A0KPS",
                "event": event,
                "type": "event_callback",
                "event_id": event_id,
                "event_time": int(time.time()),
            }
        )
        return await self.post(body, "application/json")
