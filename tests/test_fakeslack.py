"""The Slack stand-in, driven by slack_sdk's own clients over loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot.sandbox.fakeslack import FakeSlack
from tests.standin import wait_for

BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*3 running tasks*"}}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as standin:
        yield standin


@pytest.fixture
def slack(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test", base_url=fake.api_url)


async def slack_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


# Web API --------------------------------------------------------------------------------------


async def test_auth_test_answers_as_slack_does_and_records_the_token(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    response = await slack.auth_test()

    assert response.data == {
        "ok": True,
        "url": "https://test.slack.com/",
        "team": "Test Workspace",
        "user": "kps-bot",
        "team_id": "T0TEST",
        "user_id": "U0BOT",
        "bot_id": "B0BOT",
        "is_enterprise_install": False,
    }
    [call] = fake.calls_to("auth.test")
    assert call.token == "xoxb-test"
    assert call.path == "/api/auth.test"
    assert "xoxb-test" not in repr(call)


async def test_wrong_tokens_are_refused(fake: FakeSlack) -> None:
    stranger = AsyncWebClient(token="xoxb-stolen", base_url=fake.api_url)
    app_level = AsyncWebClient(token="xapp-test", base_url=fake.api_url)

    assert (await slack_error(stranger.auth_test())).response["error"] == "invalid_auth"
    refused = await slack_error(app_level.chat_postMessage(channel="C0GENERAL", text="hi"))
    assert refused.response["error"] == "not_allowed_token_type"
    assert fake.messages == {}
    assert [c.error for c in fake.calls] == ["invalid_auth", "not_allowed_token_type"]


async def test_post_update_and_thread_reply_show_in_messages(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    posted = await slack.chat_postMessage(channel="C0ALERTS", text="1 stale task", blocks=BLOCKS)
    notice_ts = posted["ts"]
    await slack.chat_update(channel="C0ALERTS", ts=notice_ts, text="resolved", blocks=[])
    reply = await slack.chat_postMessage(channel="C0ALERTS", text="done", thread_ts=notice_ts)

    assert posted["channel"] == "C0ALERTS"
    assert posted["message"]["blocks"] == BLOCKS
    assert float(reply["ts"]) > float(notice_ts)
    notice = fake.messages["C0ALERTS"][0]
    assert (notice["text"], notice["blocks"], notice["reply_count"]) == ("resolved", [], 1)
    assert [m["text"] for m in fake.thread("C0ALERTS", notice_ts)] == ["done"]
    assert fake.messages["C0ALERTS"][1]["user"] == "U0BOT"


async def test_chat_update_keeps_blocks_it_was_not_given(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    posted = await slack.chat_postMessage(channel="C0GENERAL", text="old", blocks=BLOCKS)
    await slack.chat_update(channel="C0GENERAL", ts=posted["ts"], text="new")

    assert fake.messages["C0GENERAL"][0]["blocks"] == BLOCKS
    assert fake.messages["C0GENERAL"][0]["text"] == "new"


async def test_form_body_blocks_arrive_decoded(fake: FakeSlack, slack: AsyncWebClient) -> None:
    form = {"channel": "#general", "text": "page", "blocks": json.dumps(BLOCKS)}
    await slack.api_call("chat.postMessage", data=form)

    [call] = fake.calls_to("chat.postMessage")
    assert call.args["blocks"] == BLOCKS
    assert fake.messages["C0GENERAL"][0]["blocks"] == BLOCKS


async def test_channel_errors() -> None:
    channels = {"G0SECRET": {"name": "secret", "is_private": True, "is_member": False}}
    async with FakeSlack(channels=channels) as fake:
        slack = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)

        unknown = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="x"))
        private = await slack_error(slack.chat_postMessage(channel="G0SECRET", text="x"))
        no_message = await slack_error(slack.chat_update(channel="G0SECRET", ts="1.0", text="x"))
        info = await slack.conversations_info(channel="G0SECRET")

    assert unknown.response["error"] == "channel_not_found"
    assert private.response["error"] == "not_in_channel"
    assert no_message.response["error"] == "not_in_channel"
    assert info["channel"]["is_private"] is True
    assert info["channel"]["is_member"] is False
    assert fake.messages == {}


async def test_update_of_unknown_message_is_message_not_found(slack: AsyncWebClient) -> None:
    refused = await slack_error(slack.chat_update(channel="C0ALERTS", ts="1.000001", text="x"))
    assert refused.response["error"] == "message_not_found"


async def test_conversations_info(slack: AsyncWebClient) -> None:
    info = await slack.conversations_info(channel="C0ALERTS")
    missing = await slack_error(slack.conversations_info(channel="C0NOPE"))

    assert info["channel"]["name"] == "kps-alerts"
    assert info["channel"]["is_channel"] is True
    assert missing.response["error"] == "channel_not_found"


async def test_ratelimited_post_is_delivered_once_after_slack_sdk_retries(
    fake: FakeSlack,
) -> None:
    # slack_sdk parses Retry-After with int(), so whole seconds it is: one slow-ish test.
    slack = AsyncWebClient(
        token="xoxb-test",
        base_url=fake.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake.fail_next("chat.postMessage", status=429, retry_after=1)

    response = await slack.chat_postMessage(channel="C0GENERAL", text="after the wait")

    assert response["ok"] is True
    assert [(c.status, c.error) for c in fake.calls_to("chat.postMessage")] == [
        (429, "ratelimited"),
        (200, None),
    ]
    assert [m["text"] for m in fake.messages["C0GENERAL"]] == ["after the wait"]
    assert fake.rate_limited == 1


async def test_retry_after_is_whole_seconds(fake: FakeSlack, slack: AsyncWebClient) -> None:
    fake.fail_next("chat.postMessage", status=429, retry_after=0.05)

    refused = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="x"))

    assert refused.response.status_code == 429
    assert refused.response.headers["Retry-After"] == "1"
    assert refused.response["error"] == "ratelimited"


async def test_injected_failures_are_used_up_in_order(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    fake.fail_next("chat.postMessage", status=503)
    fake.fail_next("chat.postMessage", status=200, error="not_in_channel", times=2)

    outage = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="1"))
    first = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="2"))
    second = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="3"))
    await slack.chat_postMessage(channel="C0GENERAL", text="4")

    assert (outage.response.status_code, outage.response["error"]) == (503, "service_unavailable")
    assert first.response["error"] == second.response["error"] == "not_in_channel"
    assert [m["text"] for m in fake.messages["C0GENERAL"]] == ["4"]


def test_fail_next_refuses_a_success_without_an_error() -> None:
    with pytest.raises(ValueError, match="needs an error"):
        FakeSlack().fail_next("chat.postMessage", status=200)


async def test_per_channel_rate_answers_429_beyond_the_burst() -> None:
    # One message per 100 s: the bucket cannot refill between posts however slow the machine.
    async with FakeSlack(per_channel_rate=0.01, per_channel_burst=2) as fake:
        slack = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
        await slack.chat_postMessage(channel="C0GENERAL", text="1")
        await slack.chat_postMessage(channel="#general", text="2")
        refused = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="3"))
        await slack.chat_postMessage(channel="C0ALERTS", text="elsewhere")

    assert refused.response.status_code == 429
    assert int(refused.response.headers["Retry-After"]) >= 1
    assert fake.rate_limited == 1
    assert [m["text"] for m in fake.messages["C0GENERAL"]] == ["1", "2"]
    assert [m["text"] for m in fake.messages["C0ALERTS"]] == ["elsewhere"]


async def test_views_publish_keeps_the_latest_view_per_user(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    first = await slack.views_publish(user_id="U1", view={"type": "home", "blocks": []})
    second = await slack.views_publish(user_id="U1", view={"type": "home", "blocks": BLOCKS})

    assert first["view"]["id"].startswith("V")
    assert fake.views["U1"]["blocks"] == BLOCKS
    assert fake.views["U1"]["id"] == second["view"]["id"]


async def test_unknown_methods_succeed_and_are_recorded(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    await slack.reactions_add(channel="C0GENERAL", name="eyes", timestamp="1.000001")

    [call] = fake.calls_to("reactions.add")
    assert call.args == {"channel": "C0GENERAL", "name": "eyes", "timestamp": "1.000001"}


# response_url --------------------------------------------------------------------------------


async def test_response_url_posts_are_recorded(fake: FakeSlack) -> None:
    url = fake.response_url("page")
    webhook = AsyncWebhookClient(url)

    response = await webhook.send(text="11–20 of 37", blocks=BLOCKS, replace_original=True)

    assert (response.status_code, response.body) == (200, "ok")
    latest = fake.responses[-1]
    assert latest.args["replace_original"] is True
    assert latest.args["text"] == "11–20 of 37"
    assert url.endswith(latest.path)
    assert fake.response_url("page") != url


async def test_response_url_failure_and_use_limit(fake: FakeSlack) -> None:
    webhook = AsyncWebhookClient(fake.response_url())
    fake.fail_next("response_url", status=500)

    failed = await webhook.send(text="x")
    statuses = [(await webhook.send(text=str(n))).status_code for n in range(6)]

    assert (failed.status_code, failed.body) == (500, "internal_error")
    assert statuses == [200, 200, 200, 200, 200, 404]
    assert [c.args["text"] for c in fake.responses] == ["0", "1", "2", "3", "4"]


async def test_response_url_without_text_is_refused(fake: FakeSlack) -> None:
    response = await AsyncWebhookClient(fake.response_url()).send(text="")

    assert (response.status_code, response.body) == (400, "no_text")
    assert fake.responses == []


# Waiting ------------------------------------------------------------------------------------


async def test_wait_for_returns_when_the_call_arrives(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    waiting = asyncio.create_task(
        wait_for(fake, "chat.postMessage", where=lambda c: c.args.get("text") == "late")
    )
    await slack.chat_postMessage(channel="C0GENERAL", text="early")
    await slack.chat_postMessage(channel="C0GENERAL", text="late")

    [call] = await waiting
    assert call.args["channel"] == "C0GENERAL"


async def test_wait_for_names_what_arrived_on_timeout(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    await slack.auth_test()

    with pytest.raises(AssertionError, match=r"chat\.update.*got 0.*auth\.test x1"):
        await wait_for(fake, "chat.update", timeout=0.05)


# Socket Mode --------------------------------------------------------------------------------


@asynccontextmanager
async def socket_client(
    fake: FakeSlack, seen: list[dict[str, Any]]
) -> AsyncIterator[SocketModeClient]:
    """slack_sdk's aiohttp Socket Mode client that acks every request with a payload."""
    web = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    client = SocketModeClient(app_token="xapp-test", web_client=web)

    async def note(_: AsyncBaseSocketModeClient, message: dict[str, Any], raw: str | None) -> None:
        seen.append(message)

    async def ack(c: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        payload = {"text": f"got {request.type}"}
        await c.send_socket_mode_response(SocketModeResponse(request.envelope_id, payload))

    client.message_listeners.append(note)
    client.socket_mode_request_listeners.append(ack)
    try:
        await client.connect()  # type: ignore[no-untyped-call]  # slack_sdk leaves it untyped
        yield client
    finally:
        await client.close()  # type: ignore[no-untyped-call]


async def test_socket_mode_client_connects_and_acks(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    async with socket_client(fake, seen):
        await fake.wait_socket_connected()
        ack = await fake.send_socket_request("slash_commands", {"command": "/kps", "text": ""})

    assert set(ack) == {"envelope_id", "payload"}
    assert ack["payload"] == {"text": "got slash_commands"}
    hello, envelope = seen
    assert hello["type"] == "hello"
    assert hello["connection_info"] == {"app_id": "A0APP"}
    assert envelope["envelope_id"] == ack["envelope_id"]
    assert envelope["payload"] == {"command": "/kps", "text": ""}
    assert envelope["accepts_response_payload"] is True
    [opened] = fake.calls_to("apps.connections.open")
    assert opened.token == "xapp-test"


async def test_socket_mode_client_reconnects_after_disconnect_and_close(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    async with socket_client(fake, seen):
        await fake.wait_socket_connected()
        await fake.disconnect_sockets()
        after_disconnect = await fake.send_socket_request("interactive", {"type": "block_actions"})
        await fake.close_sockets()
        after_close = await fake.send_socket_request("events_api", {"event": {"type": "x"}})

    assert after_disconnect["payload"] == {"text": "got interactive"}
    assert after_close["payload"] == {"text": "got events_api"}
    assert fake.socket_connects == 3
    assert len(fake.calls_to("apps.connections.open")) == 3
    # slack_sdk acts on the `disconnect` frame itself and never hands it to message listeners.
    kinds = [m["type"] for m in seen]
    assert kinds == ["hello", "hello", "interactive", "hello", "events_api"]
    assert seen[-1]["accepts_response_payload"] is False


async def test_apps_connections_open_needs_the_app_token(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    refused = await slack_error(slack.apps_connections_open(app_token="xoxb-test"))
    assert refused.response["error"] == "not_allowed_token_type"


async def test_send_socket_request_without_a_client_times_out(fake: FakeSlack) -> None:
    with pytest.raises(TimeoutError, match="no Socket Mode client"):
        await fake.send_socket_request("events_api", {}, timeout=0.05)


# Other processes ----------------------------------------------------------------------------


async def test_admin_view_injects_failures_and_lists_calls_without_tokens(
    fake: FakeSlack, slack: AsyncWebClient
) -> None:
    async with aiohttp.ClientSession(fake.url) as http:
        spec = {"method": "chat.postMessage", "status": 200, "error": "channel_not_found"}
        async with http.post("/_fake/fail", json=spec) as injected:
            assert injected.status == 200
        refused = await slack_error(slack.chat_postMessage(channel="C0GENERAL", text="x"))
        async with http.get("/_fake/calls", params={"method": "chat.postMessage"}) as listed:
            view = await listed.json()
        async with http.get("/healthz") as health:
            assert health.status == 200

    assert refused.response["error"] == "channel_not_found"
    [call] = view["calls"]
    assert (call["error"], call["auth"], call["args"]["text"]) == ("channel_not_found", "bot", "x")
    assert "xoxb-test" not in json.dumps(view)


async def test_runs_standalone_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.sandbox.fakeslack",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        api_url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().strip()
        response = await AsyncWebClient(token="xoxb-test", base_url=api_url).auth_test()
        assert response["user_id"] == "U0BOT"
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/_fake/calls", None),
        ("GET", "/_fake/messages", None),
        ("POST", "/_fake/fail", {"method": "chat.postMessage", "status": 500, "times": 9}),
        ("POST", "/_fake/disconnect", {}),
        ("POST", "/_fake/socket", {"type": "events_api", "payload": {}, "timeout": 0.01}),
    ],
)
async def test_admin_view_answers_only_a_loopback_host(
    fake: FakeSlack, slack: AsyncWebClient, method: str, path: str, body: Any
) -> None:
    # DNS rebinding: a page's own name now points at 127.0.0.1, so the browser lets it read the
    # answers, but the request still names that site in Host.
    await slack.chat_postMessage(channel="C0GENERAL", text="the bot said this")
    async with (
        aiohttp.ClientSession(fake.url) as http,
        http.request(method, path, json=body, headers={"Host": "rebind.evil.example"}) as answer,
    ):
        text = await answer.text()
    assert answer.status == 403
    assert "the bot said this" not in text
    assert (await slack.chat_postMessage(channel="C0GENERAL", text="still fine"))["ok"]


async def test_admin_view_takes_a_post_only_as_json(fake: FakeSlack, slack: AsyncWebClient) -> None:
    # What any web page may send to loopback without a preflight: text/plain, a form, or nothing.
    spec = json.dumps({"method": "chat.postMessage", "status": 500, "times": 9})
    async with aiohttp.ClientSession(fake.url) as http:
        for content_type in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
            headers = {"Content-Type": content_type, "Origin": "http://evil.example"}
            async with http.post("/_fake/fail", data=spec, headers=headers) as answer:
                assert answer.status == 415
        async with http.post("/_fake/disconnect") as answer:
            assert answer.status == 415
        async with http.get("/_fake/calls", headers={"Host": "localhost:1"}) as answer:
            assert answer.status == 200
    assert (await slack.chat_postMessage(channel="C0GENERAL", text="x"))["ok"]
