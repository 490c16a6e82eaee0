"""The stand-in's additions for the playground, and how the timeline shows what the bot sent."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.playground.timeline import Origin, Timeline, message_id


@pytest.fixture
async def fake() -> Any:
    async with FakeSlack() as standin:
        yield standin


def timeline_of(fake: FakeSlack) -> Timeline:
    return Timeline(new_ts=fake.new_ts, resolve=fake.resolve_channel)


async def test_listeners_see_each_call_with_the_answer(fake: FakeSlack) -> None:
    seen: list[Call] = []
    unsubscribe = fake.subscribe(seen.append)
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)

    posted = await client.chat_postMessage(channel="#kps-alerts", text="hello")
    unsubscribe()
    await client.chat_postMessage(channel="C0ALERTS", text="unseen")

    assert [c.method for c in seen] == ["chat.postMessage"]
    assert seen[0].result is not None
    assert seen[0].result["ts"] == posted["ts"]
    assert seen[0].result["channel"] == "C0ALERTS"


async def test_a_broken_listener_does_not_fail_the_call(fake: FakeSlack) -> None:
    def broken(call: Call) -> None:
        raise RuntimeError("boom")

    fake.subscribe(broken)
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    answer = await client.chat_postMessage(channel="C0ALERTS", text="still delivered")
    assert answer["ok"] is True


async def test_a_user_id_as_channel_posts_to_the_direct_message(fake: FakeSlack) -> None:
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    answer = await client.chat_postMessage(channel="U0ALICE", text="hi")

    assert answer["channel"] == "D0ALICE"
    assert fake.channels["D0ALICE"]["is_im"] is True
    assert fake.resolve_channel("U0ALICE") == "D0ALICE"
    assert [m["text"] for m in fake.messages["D0ALICE"]] == ["hi"]


async def test_a_person_message_can_carry_a_bot_thread(fake: FakeSlack) -> None:
    mine = fake.add_user_message("C0GENERAL", "U0ALICE", "<@U0BOT> tasks")
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    await client.chat_postMessage(channel="C0GENERAL", thread_ts=mine["ts"], text="reply")

    parent = fake.messages["C0GENERAL"][0]
    assert parent["user"] == "U0ALICE" and parent["reply_count"] == 1
    assert [m["text"] for m in fake.thread("C0GENERAL", mine["ts"])] == ["reply"]
    assert float(fake.new_ts()) > float(mine["ts"])


async def test_mounted_routes_are_served_and_mounting_late_is_refused() -> None:
    fake = FakeSlack()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="mounted")

    def route(app: web.Application) -> None:
        app.router.add_get("/hello", hello)

    fake.mount(route)
    async with fake, aiohttp.ClientSession() as http, http.get(fake.url + "/hello") as answer:
        assert await answer.text() == "mounted"
        with pytest.raises(RuntimeError):
            fake.mount(lambda app: None)


async def test_a_taken_port_leaves_nothing_running() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fake = FakeSlack()
        with pytest.raises(OSError):
            await fake.start("127.0.0.1", taken.getsockname()[1])
    await fake.start()  # the failed start left no runner behind
    await fake.stop()


async def test_responses_replace_delete_or_add_as_slack_shows_them(fake: FakeSlack) -> None:
    timeline = timeline_of(fake)
    clicked = timeline.apply_response(Origin("C0GENERAL", command="/kps"), {"text": "page 1"})
    page = clicked[0]["message"]
    origin = Origin("C0GENERAL", message_id=page["id"])

    replaced = timeline.apply_response(origin, {"text": "page 2", "replace_original": True})
    shared = timeline.apply_response(origin, {"text": "for all", "response_type": "in_channel"})
    removed = timeline.apply_response(origin, {"delete_original": True})

    assert page["ephemeral"] is True and page["command"] == "/kps"
    assert replaced[0]["message"]["id"] == page["id"]
    assert replaced[0]["message"]["text"] == "page 2"
    assert shared[0]["message"]["ephemeral"] is False
    assert shared[0]["message"]["id"] != page["id"]
    assert removed == [{"type": "remove", "id": page["id"]}]
    assert [m["text"] for m in timeline.messages.values()] == ["for all"]


async def test_bot_calls_become_messages_views_and_log_entries(fake: FakeSlack) -> None:
    timeline = timeline_of(fake)
    events: list[dict[str, Any]] = []
    fake.subscribe(lambda call: events.extend(timeline.apply_call(call)))
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)

    posted = await client.chat_postMessage(channel="C0ALERTS", text="notice")
    await client.chat_update(channel="C0ALERTS", ts=posted["ts"], text="notice, updated")
    await client.chat_postEphemeral(channel="#general", user="U0ALICE", text="only you")
    await client.views_publish(user_id="U0ALICE", view={"type": "home", "blocks": []})
    with pytest.raises(Exception, match="channel_not_found"):
        await client.chat_postMessage(channel="C0NOPE", text="lost")

    notice = timeline.messages[message_id("C0ALERTS", posted["ts"])]
    ephemeral = [m for m in timeline.messages.values() if m["ephemeral"]]
    assert (notice["text"], notice["edited"]) == ("notice, updated", True)
    assert [(m["channel"], m["text"]) for m in ephemeral] == [("C0GENERAL", "only you")]
    assert timeline.views["U0ALICE"]["type"] == "home"
    assert [e["call"]["method"] for e in events if e["type"] == "call"][-1] == "chat.postMessage"
    assert timeline.calls[-1]["error"] == "channel_not_found"
    assert fake.bot_token not in str(timeline.calls)
