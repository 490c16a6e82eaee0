"""The playground's HTTP side: the page, a live event stream, and Slack-signed requests to the bot.

The browser only ever talks to these routes on the stand-in. Everything sent to the bot is built
and signed here, so the bot sees exactly what Slack would send, and the signing secret never
reaches the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from bot.sandbox.fakeslack import Call, FakeSlack
from bot.sandbox.guard import guarded
from bot.sandbox.playground.payloads import (
    SlackRequest,
    Workspace,
    app_home_opened,
    app_mention,
    button_action,
    command_request,
    event_request,
    mention_wire_text,
    message_click_request,
    signature_headers,
    view_click_request,
)
from bot.sandbox.playground.simcontrol import OPERATIONS, SimControl, SimError
from bot.sandbox.playground.timeline import Event, Origin, Timeline
from bot.secret import Secret

log = logging.getLogger(__name__)

COMMAND: Final = "/kps"
_STATIC: Final = {
    "app.js": "text/javascript",
    "render.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
# The page builds every node with textContent, and this policy refuses inline script and any
# other origin, so even a slip in the renderer could not run text the bot sent as code.
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
_KEEPALIVE_SECONDS: Final = 15.0


@dataclass(frozen=True, slots=True)
class PlaygroundConfig:
    """Where the bot and the simulator are, and what the page tells the user about them."""

    # The bot's base URL (requests go to {bot_url}/slack/events); "" until `use_bot` says it,
    # since the bot learns its port only after the stand-in it talks to has started.
    bot_url: str
    signing_secret: Secret
    sim_url: str
    stale_after: timedelta = timedelta(minutes=30)
    stale_channel: str | None = None
    poll_interval: float = 60.0
    user_id: str = "U0DEMO"
    user_name: str = "demo"


class Playground:
    """A small Slack client in the browser, served by the Slack stand-in and wired to the bot."""

    def __init__(self, slack: FakeSlack, config: PlaygroundConfig) -> None:
        self._slack = slack
        self._config = config
        self.workspace = Workspace(
            team_id=slack.team,
            team_domain="playground",
            app_id="A0APP",
            bot_user_id=slack.bot_user_id,
            bot_name=slack.bot_name,
            user_id=config.user_id,
            user_name=config.user_name,
        )
        self.timeline = Timeline(new_ts=slack.new_ts, resolve=slack.resolve_channel)
        self._streams: set[asyncio.Queue[Event | None]] = set()
        self._session: aiohttp.ClientSession | None = None
        slack.mount(self._mount)
        slack.subscribe(self._on_call)

    def use_bot(self, bot_url: str) -> None:
        """Send what the person does to the bot at `bot_url` from now on."""
        self._config = replace(self._config, bot_url=bot_url)

    # -- wiring ---------------------------------------------------------------------------------

    def _mount(self, app: web.Application) -> None:
        # Every route: the page can act as the demo user and read all it saw, with no login, so
        # only a local Host is answered and a POST must be JSON (see bot.sandbox.guard).
        app.router.add_get("/", guarded(self._page))
        app.router.add_get("/playground/static/{name}", guarded(self._static))
        app.router.add_get("/playground/state", guarded(self._state))
        app.router.add_get("/playground/events", guarded(self._events))
        app.router.add_post("/playground/send", guarded(self._send))
        app.router.add_post("/playground/click", guarded(self._click))
        app.router.add_post("/playground/home", guarded(self._home))
        app.router.add_get("/playground/sim/tasks", guarded(self._sim_tasks))
        app.router.add_post("/playground/sim/{op}", guarded(self._sim_op))
        app.on_startup.append(self._open)
        app.on_shutdown.append(self._end_streams)
        app.on_cleanup.append(self._close)

    async def _open(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def _end_streams(self, app: web.Application) -> None:
        for queue in self._streams:
            queue.put_nowait(None)

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _on_call(self, call: Call) -> None:
        self._publish(self.timeline.apply_call(call))

    def _publish(self, events: list[Event]) -> None:
        for queue in self._streams:
            for event in events:
                queue.put_nowait(event)

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session for the bot and the simulator (open while the stand-in runs)."""
        if self._session is None:
            raise RuntimeError("the playground is not running")
        return self._session

    # -- page and state -------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        html = (
            resources.files("bot.sandbox.playground").joinpath("static", "index.html").read_text()
        )
        return web.Response(text=html, content_type="text/html", headers=_PAGE_HEADERS)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _STATIC.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        data = resources.files("bot.sandbox.playground").joinpath("static", name).read_bytes()
        return web.Response(body=data, content_type=kind, headers=_PAGE_HEADERS)

    def page_config(self) -> dict[str, Any]:
        """What the page needs to know about the workspace, the bot and the demo settings."""
        slack, ws = self._slack, self.workspace
        channels = [
            {"id": cid, "name": record["name"]}
            for cid, record in slack.channels.items()
            if not record.get("is_im")
        ]
        return {
            "workspace": slack.team_name,
            "user": {"id": ws.user_id, "name": ws.user_name},
            "bot": {"id": ws.bot_user_id, "name": ws.bot_name},
            "channels": channels,
            "dm": slack.resolve_channel(ws.user_id),
            "stale_channel": self._config.stale_channel,
            "stale_after_minutes": self._config.stale_after.total_seconds() / 60,
            "poll_interval_seconds": self._config.poll_interval,
            "operations": list(OPERATIONS),
            "command": COMMAND,
        }

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response({"config": self.page_config(), **self.timeline.snapshot()})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a snapshot first, then every change as it happens."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._streams.add(queue)
        try:
            snapshot = {"type": "snapshot", "config": self.page_config()}
            await _write_event(response, {**snapshot, **self.timeline.snapshot()})
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), _KEEPALIVE_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                await _write_event(response, event)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the tab was closed
        finally:
            self._streams.discard(queue)
        return response

    # -- what the person does -------------------------------------------------------------------

    async def _send(self, request: web.Request) -> web.Response:
        """The composer: `/kps …` becomes a slash command, `@kps-bot …` a mention event."""
        body = await _json_body(request)
        channel = self._channel(body.get("channel"))
        text = str(body.get("text") or "").strip()
        thread_ts = _optional_str(body.get("thread_ts"))
        if not text:
            return _refuse(400, "Type something first.")
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command != COMMAND:
                return _refuse(400, f"{command} is not a command here. Try {COMMAND}.")
            return await self.run_command(channel, rest.strip(), thread_ts=thread_ts)
        return await self.post_message(channel, text, thread_ts=thread_ts)

    async def run_command(
        self, channel: str, text: str, *, thread_ts: str | None = None
    ) -> web.Response:
        """Send `/kps text` from `channel`; an answer in the ack shows as Slack would show it."""
        response_url = self._slack.response_url("cmd")
        origin = Origin(
            channel,
            thread_ts=thread_ts,
            command=f"{COMMAND} {text}".strip(),
        )
        self.timeline.expect_responses(urlsplit(response_url).path, origin)
        request = command_request(
            self.workspace,
            command=COMMAND,
            text=text,
            channel_id=channel,
            channel_name=self._channel_name(channel),
            response_url=response_url,
        )
        status, answer = await self._forward(request)
        shown = isinstance(answer, dict) and (answer.get("text") or answer.get("blocks"))
        if status == 200 and shown:
            # An ack with a body is shown to the person who typed the command.
            self._publish(self.timeline.apply_response(origin, answer))
        return _result(status)

    async def post_message(
        self, channel: str, text: str, *, thread_ts: str | None = None
    ) -> web.Response:
        """Post what the person typed; a mention of the bot also goes to it as `app_mention`."""
        wire, mentions = mention_wire_text(text, self.workspace)
        message = self._slack.add_user_message(
            channel, self.workspace.user_id, wire, thread_ts=thread_ts
        )
        self._publish(self.timeline.add_person_message(channel, message))
        if not mentions:
            return _result(200)
        event = app_mention(
            self.workspace, text=wire, channel_id=channel, ts=message["ts"], thread_ts=thread_ts
        )
        status, _ = await self._forward(event_request(self.workspace, event))
        return _result(status)

    async def _click(self, request: web.Request) -> web.Response:
        """A button: the element is looked up in the stored blocks, never taken from the page."""
        body = await _json_body(request)
        block_index = body.get("block")
        element_index = body.get("element")
        if not isinstance(block_index, int) or not (
            element_index is None or isinstance(element_index, int)
        ):
            return _refuse(400, "block must be a number and element a number or null")
        view_user = body.get("view_user")
        if isinstance(view_user, str):
            view = self.timeline.views.get(view_user)
            if view is None:
                return _refuse(404, "no Home view to click on")
            element, block_id = _element(view.get("blocks"), block_index, element_index)
            if element is None:
                return _refuse(404, "no such button")
            slack_request = view_click_request(
                self.workspace, action=button_action(element, block_id), view=view
            )
            status, _ = await self._forward(slack_request)
            return _result(status)

        message = self.timeline.messages.get(str(body.get("message_id")))
        if message is None:
            return _refuse(404, "that message is gone")
        element, block_id = _element(message.get("blocks"), block_index, element_index)
        if element is None:
            return _refuse(404, "no such button")
        response_url = self._slack.response_url("click")
        origin = Origin(
            message["channel"], thread_ts=message["thread_ts"], message_id=message["id"]
        )
        self.timeline.expect_responses(urlsplit(response_url).path, origin)
        slack_message: dict[str, Any] = {
            "type": "message",
            "ts": message["ts"],
            "text": message["text"],
            "blocks": message["blocks"],
            "user": message["user"] or self.workspace.bot_user_id,
        }
        if message["thread_ts"]:
            slack_message["thread_ts"] = message["thread_ts"]
        slack_request = message_click_request(
            self.workspace,
            action=button_action(element, block_id),
            channel_id=message["channel"],
            channel_name=self._channel_name(message["channel"]),
            message=slack_message,
            ephemeral=bool(message["ephemeral"]),
            response_url=response_url,
        )
        status, _ = await self._forward(slack_request)
        return _result(status)

    async def _home(self, request: web.Request) -> web.Response:
        """Opening the app's Home tab: Slack sends `app_home_opened`."""
        ws = self.workspace
        dm = self._slack.resolve_channel(ws.user_id) or ""
        view = self.timeline.views.get(ws.user_id)
        event = app_home_opened(ws, channel_id=dm, ts=self._slack.new_ts(), view=view)
        status, _ = await self._forward(event_request(ws, event))
        return _result(status)

    async def _forward(self, request: SlackRequest) -> tuple[int, Any]:
        """Sign and post to the bot's `/slack/events`; its status and any JSON it answered."""
        headers = {
            "Content-Type": request.content_type,
            **signature_headers(request.body, self._config.signing_secret),
        }
        url = self._config.bot_url.rstrip("/") + "/slack/events"
        try:
            async with self.session.post(
                url, data=request.body.encode(), headers=headers
            ) as answer:
                raw = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._problem(f"The bot could not be reached ({type(exc).__name__}).")
            return 0, None
        if status != 200:
            self._problem(f"The bot answered HTTP {status} to a signed request.")
        parsed: Any = None
        if raw:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                parsed = json.loads(raw)
        return status, parsed

    def _problem(self, text: str) -> None:
        log.warning("playground: %s", text)
        self._publish([{"type": "problem", "text": text}])

    def _channel(self, ref: Any) -> str:
        cid = self._slack.resolve_channel(str(ref or ""))
        if cid is None:
            raise web.HTTPBadRequest(text="unknown channel")
        return cid

    def _channel_name(self, cid: str) -> str:
        record = self._slack.channels.get(cid, {})
        return "directmessage" if record.get("is_im") else str(record.get("name", cid))

    # -- the simulator control panel ------------------------------------------------------------

    async def _sim_tasks(self, request: web.Request) -> web.Response:
        control = SimControl(self.session, self._config.sim_url)
        try:
            tasks, stats = await control.tasks(), await control.stats()
        except (SimError, aiohttp.ClientError) as exc:
            return _refuse(502, f"The simulator did not answer: {exc}")
        return web.json_response({"tasks": tasks, "stats": stats})

    async def _sim_op(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        control = SimControl(self.session, self._config.sim_url)
        op = request.match_info["op"]
        try:
            if op == "add":
                task = await control.add_task(str(body.get("operate_type") or OPERATIONS[0]))
            elif op == "age":
                task = await control.age_past(str(body.get("task_id")), self._config.stale_after)
            elif op == "finish":
                task = await control.finish(
                    str(body.get("task_id")), failed=bool(body.get("failed"))
                )
            elif op == "kps":
                await control.set_kps(str(body.get("mode")))
                task = {}
            else:
                raise web.HTTPNotFound()
        except SimError as exc:
            return _refuse(400, str(exc))
        except aiohttp.ClientError as exc:
            return _refuse(502, f"The simulator did not answer: {exc}")
        return web.json_response({"ok": True, "task": task})


async def _write_event(response: web.StreamResponse, event: Event) -> None:
    await response.write(f"data: {json.dumps(event)}\n\n".encode())


async def _json_body(request: web.Request) -> dict[str, Any]:
    # Only JSON is accepted: a page on another site cannot send it without a CORS preflight,
    # which this server never grants, so it cannot drive the playground.
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text="send JSON")
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _element(
    blocks: Any, block_index: int, element_index: int | None
) -> tuple[dict[str, Any] | None, str]:
    """The button at blocks[block_index] (its accessory when element_index is None)."""
    if not isinstance(blocks, list) or not 0 <= block_index < len(blocks):
        return None, ""
    block = blocks[block_index]
    if not isinstance(block, dict):
        return None, ""
    # Slack gives every block an id when the app sets none; a stable one does as well here.
    block_id = str(block.get("block_id") or f"b{block_index}")
    element: Any = None
    if element_index is None:
        element = block.get("accessory")
    else:
        elements = block.get("elements")
        if isinstance(elements, list) and 0 <= element_index < len(elements):
            element = elements[element_index]
    if not isinstance(element, dict) or element.get("type") != "button":
        return None, block_id
    return element, block_id


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _result(status: int) -> web.Response:
    return web.json_response({"ok": status == 200, "status": status})


def _refuse(status: int, text: str) -> web.Response:
    return web.json_response({"ok": False, "error": text}, status=status)
