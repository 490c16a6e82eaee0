"""A Slack stand-in on loopback: Web API, response_url and Socket Mode; it records every call."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
import signal
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self

from aiohttp import WSCloseCode, WSMsgType, web

from bot.sandbox.guard import guarded

log = logging.getLogger(__name__)

_BOT_ID: Final = "B0BOT"
_APP_ID: Final = "A0APP"
_DEFAULT_CHANNELS: Final[Mapping[str, Mapping[str, Any]]] = {
    "C0GENERAL": {"name": "general"},
    "C0ALERTS": {"name": "kps-alerts"},
}
# Form-encoded Web API bodies carry structured arguments as JSON strings (slack_sdk sends
# `blocks` that way through `data=`), so they are decoded to match what a JSON body holds.
_JSON_ARGS: Final = ("blocks", "attachments", "view", "metadata")
# Slack: a response_url "can be used up to 5 times within 30 minutes" (slash-command docs).
_RESPONSE_URL_USES: Final = 5
_DEFAULT_ERRORS: Final = {429: "ratelimited", 503: "service_unavailable"}
# What a proxy or a broken Slack may answer instead of Slack's JSON (fail_next's `body`).
ODD_BODIES: Final[Mapping[str, tuple[str, str]]] = {
    "html": ("text/html", "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"),
    "garbage": ("application/json", '{"ok": tru'),
    "text": ("text/plain", "upstream connect error or disconnect/reset before headers"),
    "array": ("application/json", '["ok"]'),
}

# A user id as chat.postMessage's channel means the app's DM with that user (Slack docs).
_USER_ID: Final = re.compile(r"[UW][A-Z0-9]{2,}")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Listener = Callable[["Call"], None]


@dataclass(frozen=True)
class Call:
    """One Web API call or response_url post, as the stand-in received and answered it."""

    method: str
    args: dict[str, Any]
    token: str | None = field(repr=False)  # kept out of reprs so a failing assert shows no token
    time: float
    path: str
    status: int = 200
    error: str | None = None
    # The JSON body the stand-in answered a Web API call with (the posted message and its ts).
    result: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the stand-in accepted the call: HTTP 200 and no Slack error."""
        return self.status == 200 and self.error is None


class _Refusal(Exception):
    """An answer other than success: a Slack error, a 429 or a 5xx."""

    def __init__(
        self,
        error: str,
        *,
        status: int = 200,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.retry_after = retry_after
        self.body = body  # a key of ODD_BODIES: answer that instead of Slack's JSON

    def headers(self) -> dict[str, str]:
        if self.status != 429 or self.retry_after is None:
            return {}
        # Slack and RFC 9110 send whole seconds, and slack_sdk's retry handler parses the header
        # with int(), so a fractional value would crash the client instead of being honoured.
        return {"Retry-After": str(math.ceil(self.retry_after))}


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    error: str
    remaining: int
    body: str | None = None


@dataclass(eq=False)
class _Socket:
    ws: web.WebSocketResponse
    draining: bool = False  # sent a `disconnect`; Slack sends no more envelopes on it


class FakeSlack:
    """A Slack Web API, response_url and Socket Mode server on 127.0.0.1 that records every call."""

    def __init__(
        self,
        *,
        # Made-up tokens: the stand-in only checks that the bot sends the one it was given.
        bot_token: str = "xoxb-test",  # noqa: S107
        app_token: str = "xapp-test",  # noqa: S107
        team: str = "T0TEST",
        team_name: str = "Test Workspace",
        bot_user_id: str = "U0BOT",
        bot_name: str = "kps-bot",
        channels: Mapping[str, Mapping[str, Any]] | None = None,
        per_channel_rate: float | None = None,
        per_channel_burst: float = 2.0,
    ) -> None:
        if per_channel_rate is not None and per_channel_rate <= 0:
            raise ValueError("per_channel_rate must be positive")
        self.bot_token = bot_token
        self.app_token = app_token
        self.team = team
        self.team_name = team_name
        self.bot_user_id = bot_user_id
        self.bot_name = bot_name
        self.per_channel_rate = per_channel_rate
        self.per_channel_burst = max(1.0, per_channel_burst)
        self.channels: dict[str, dict[str, Any]] = {
            cid: _channel_record(cid, spec)
            for cid, spec in (_DEFAULT_CHANNELS if channels is None else channels).items()
        }
        self.calls: list[Call] = []
        self.responses: list[Call] = []
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.rate_limited = 0
        self.socket_connects = 0
        self.url = ""
        self.api_url = ""
        self._runner: web.AppRunner | None = None
        self._failures: dict[str, deque[_Failure]] = {}
        self._buckets: dict[str, tuple[float, float]] = {}
        self._response_uses: Counter[str] = Counter()
        self._response_ids = 0
        self._view_ids = 0
        self._last_ts_micros = 0
        self._tickets: set[str] = set()
        self._sockets: list[_Socket] = []
        self._pending: dict[str, tuple[_Socket, asyncio.Future[dict[str, Any]]]] = {}
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []
        self._mounts: list[Callable[[web.Application], None]] = []
        self._ims: dict[str, str] = {}
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "views.publish": self._publish_view,
            "conversations.info": self._conversation_info,
            "conversations.join": self._join,
            "apps.connections.open": self._open_connection,
        }

    # Lifecycle ----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start serving; `url` and `api_url` are set once the port is bound."""
        if self._runner is not None:
            raise RuntimeError("FakeSlack is already started")
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{rid}", self._response)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/healthz", _healthz)
        # No login on these: only a local Host, and JSON on a POST (see bot.sandbox.guard).
        app.router.add_get("/_fake/calls", guarded(self._admin_calls))
        app.router.add_get("/_fake/messages", guarded(self._admin_messages))
        app.router.add_post("/_fake/fail", guarded(self._admin_fail))
        app.router.add_post("/_fake/socket", guarded(self._admin_socket))
        app.router.add_post("/_fake/disconnect", guarded(self._admin_disconnect))
        for mount in self._mounts:
            mount(app)
        # access_log=None: request lines are noise in test output and the soak's logs.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:  # the port is taken: leave nothing half-started behind
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        reachable = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.url = f"http://{reachable}:{bound_port}"
        self.api_url = self.url + "/api/"

    async def stop(self) -> None:
        """Close every socket, fail unanswered envelopes and stop serving."""
        if self._runner is None:
            return
        await self.close_sockets()
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the stand-in stopped"))
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # Extensions (the demo's playground) ---------------------------------------------------------

    def mount(self, setup: Callable[[web.Application], None]) -> None:
        """Have `setup` add routes or signals to the server's app when it starts."""
        if self._runner is not None:
            raise RuntimeError("mount() must come before start()")
        self._mounts.append(setup)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every recorded call as it arrives; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def new_ts(self) -> str:
        """A fresh message ts, ordered after every ts the stand-in has handed out."""
        return self._next_ts()

    def resolve_channel(self, ref: str) -> str | None:
        """The channel id for an id, a name or `#name`; a user id gives the DM with that user."""
        return self._resolve(ref)

    def add_user_message(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """Store a message a person wrote, as Slack would; bot replies can thread on it."""
        cid = self._resolve(channel)
        if cid is None:
            raise KeyError(channel)
        message: dict[str, Any] = {
            "type": "message",
            "text": text,
            "user": user,
            "team": self.team,
            "ts": self._next_ts(),
        }
        self._store(cid, message, thread_ts)
        self._pulse()
        return dict(message)

    # The record, and failures to inject -----------------------------------------------------------

    def response_url(self, name: str = "") -> str:
        """A fresh response_url on this stand-in; `name` only makes it easier to recognise."""
        self._response_ids += 1
        return f"{self.url}/response/{name or 'r'}-{self._response_ids}"

    def calls_to(self, method: str) -> list[Call]:
        """Every recorded call of `method` ("response_url" for response_url posts), in order."""
        return [call for call in self.calls if call.method == method]

    def next_change(self) -> Coroutine[Any, Any, Literal[True]]:
        """An awaitable that finishes once a call, message or socket change is recorded after now.

        Taken before the caller checks what it waits for, it cannot miss a change in between.
        """
        return self._changed.wait()

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: float | None = 1,
        error: str | None = None,
        times: int = 1,
        body: str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (or "response_url") with this failure.

        429 carries `Retry-After` (whole seconds, rounded up) and `ratelimited`; 5xx carries an
        error body; 200 needs a Slack `error` such as `channel_not_found` or `invalid_auth`.
        `body` (a key of ODD_BODIES: html, garbage, text, array) answers that instead of JSON.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if status != 200 and status < 400:
            raise ValueError(f"status {status} is neither 200, 429 nor an HTTP error")
        if body is not None and body not in ODD_BODIES:
            raise ValueError(f"body must be one of {sorted(ODD_BODIES)}")
        chosen = error or _DEFAULT_ERRORS.get(status) or ("internal_error" if status >= 500 else "")
        chosen = chosen or (f"{body} body" if body else "")
        if not chosen:
            raise ValueError(f"status {status} needs an error, e.g. channel_not_found")
        failure = _Failure(status, retry_after, chosen, times, body)
        self._failures.setdefault(method, deque()).append(failure)

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The replies in `channel` whose `thread_ts` is `ts`, without the parent."""
        return [
            m for m in self.messages.get(channel, []) if m.get("thread_ts") == ts and m["ts"] != ts
        ]

    # Socket Mode --------------------------------------------------------------------------------

    async def wait_socket_connected(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until a Socket Mode client is connected and can receive envelopes."""
        await self._live_socket(asyncio.get_running_loop().time() + timeout)

    async def send_socket_request(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Send an envelope to the newest connected client and return the ack frame it sends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sock = await self._live_socket(deadline)
        envelope: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "type": type,
            "payload": payload,
            # Slack expects a response payload only for interactions and commands.
            "accepts_response_payload": type != "events_api",
        }
        if type == "events_api":
            envelope.update(retry_attempt=0, retry_reason="")
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[envelope["envelope_id"]] = (sock, future)
        try:
            await sock.ws.send_json(envelope)
            async with asyncio.timeout_at(deadline):
                return await future
        except TimeoutError:
            raise TimeoutError(
                f"no ack for {type} envelope {envelope['envelope_id']} within {timeout}s"
            ) from None
        finally:
            self._pending.pop(envelope["envelope_id"], None)

    async def disconnect_sockets(self, reason: str = "refresh_requested") -> None:
        """Ask every connected client to reconnect, as Slack does before recycling a server."""
        for sock in self._sockets:
            if not sock.draining and not sock.ws.closed:
                sock.draining = True
                frame = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake"}}
                await sock.ws.send_json(frame)
        self._pulse()

    async def close_sockets(self) -> None:
        """Close every Socket Mode connection from the server side, without warning."""
        for sock in list(self._sockets):
            sock.draining = True
            await sock.ws.close(code=WSCloseCode.GOING_AWAY)

    # Web API ------------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = {}
        token = _bearer(request)
        try:
            args, body_token = await _read_args(request)
            token = token or body_token
            self._take_failure(method)
            self._check_token(method, token)
            if method == "chat.postMessage":
                self._throttle(args)
            handler = self._handlers.get(method)
            body = handler(args) if handler is not None else {"ok": True}
        except _Refusal as refusal:
            self._record(method, args, token, request.path, refusal.status, refusal.error)
            if refusal.body is not None:
                content_type, text = ODD_BODIES[refusal.body]
                return web.Response(
                    text=text,
                    status=refusal.status,
                    content_type=content_type,
                    headers=refusal.headers(),
                )
            return web.json_response(
                {"ok": False, "error": refusal.error},
                status=refusal.status,
                headers=refusal.headers(),
            )
        self._record(method, args, token, request.path, result=body)
        return web.json_response(body)

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise _Refusal("not_authed")
        if token not in (self.bot_token, self.app_token):
            raise _Refusal("invalid_auth")
        # Slack answers a valid token of the wrong kind (an xapp- token on chat.postMessage,
        # an xoxb- token on apps.connections.open) with not_allowed_token_type.
        if (token == self.app_token) != (method == "apps.connections.open"):
            raise _Refusal("not_allowed_token_type")

    def _take_failure(self, method: str) -> None:
        queue = self._failures.get(method)
        if not queue:
            return
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining == 0:
            queue.popleft()
        raise _Refusal(
            failure.error,
            status=failure.status,
            retry_after=failure.retry_after,
            body=failure.body,
        )

    def _throttle(self, args: dict[str, Any]) -> None:
        # Slack allows about one chat.postMessage per second per channel, with short bursts
        # (docs.slack.dev/apis/web-api/rate-limits); a token bucket per channel models that.
        rate = self.per_channel_rate
        if rate is None:
            return
        ref = str(args.get("channel") or "")
        key = self._resolve(ref) or ref
        now = time.monotonic()
        tokens, then = self._buckets.get(key, (self.per_channel_burst, now))
        tokens = min(self.per_channel_burst, tokens + (now - then) * rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            raise _Refusal("ratelimited", status=429, retry_after=(1 - tokens) / rate)
        self._buckets[key] = (tokens - 1, now)

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://test.slack.com/",
            "team": self.team_name,
            "user": self.bot_name,
            "team_id": self.team,
            "user_id": self.bot_user_id,
            "bot_id": _BOT_ID,
            "is_enterprise_install": False,
        }

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self._postable(args)
        if not any(args.get(key) for key in ("text", "blocks", "attachments")):
            raise _Refusal("no_text")
        message = self._new_message(args)
        thread_ts = args.get("thread_ts")
        self._store(cid, message, str(thread_ts) if thread_ts else None)
        return {"ok": True, "channel": cid, "ts": message["ts"], "message": dict(message)}

    def _store(self, cid: str, message: dict[str, Any], thread_ts: str | None) -> None:
        if thread_ts:
            message["thread_ts"] = thread_ts
            parent = self._find(cid, thread_ts)
            if parent is not None:
                # Slack marks a parent with thread_ts == ts once it has replies.
                parent["thread_ts"] = parent["ts"]
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                parent["latest_reply"] = message["ts"]
        self.messages.setdefault(cid, []).append(message)

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = self._postable(args)
        message = self._find(cid, str(args.get("ts") or ""))
        if message is None:
            raise _Refusal("message_not_found")
        # Slack keeps the previous blocks when chat.update omits them; an empty list clears them.
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in args:
                message[key] = args[key]
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {
            "ok": True,
            "channel": cid,
            "ts": message["ts"],
            "text": message["text"],
            "message": dict(message),
        }

    def _post_ephemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self._postable(args)
        if not args.get("user"):
            raise _Refusal("user_not_in_channel")
        if not any(args.get(key) for key in ("text", "blocks", "attachments")):
            raise _Refusal("no_text")
        return {"ok": True, "message_ts": self._next_ts()}

    def _publish_view(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args.get("user_id")
        view = args.get("view")
        if not user or not isinstance(view, dict):
            raise _Refusal("invalid_arguments")
        previous = self.views.get(str(user))
        # views.publish `hash` guards against overwriting a newer view (Slack: hash_conflict).
        if args.get("hash") and previous is not None and args["hash"] != previous["hash"]:
            raise _Refusal("hash_conflict")
        if previous is None:
            self._view_ids += 1
        view_id = previous["id"] if previous is not None else f"V{self._view_ids:08d}"
        stored = {
            **view,
            "id": view_id,
            "team_id": self.team,
            "app_id": _APP_ID,
            "bot_id": _BOT_ID,
            "root_view_id": view_id,
            "previous_view_id": None,
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
        }
        self.views[str(user)] = stored
        return {"ok": True, "view": dict(stored)}

    def _conversation_info(self, args: dict[str, Any]) -> dict[str, Any]:
        _, record = self._channel(args)
        return {"ok": True, "channel": dict(record)}

    def _join(self, args: dict[str, Any]) -> dict[str, Any]:
        _, record = self._channel(args)
        if record["is_archived"]:
            raise _Refusal("is_archived")
        if record["is_private"]:
            raise _Refusal("method_not_supported_for_channel_type")
        record["is_member"] = True
        return {"ok": True, "channel": dict(record)}

    def _open_connection(self, args: dict[str, Any]) -> dict[str, Any]:
        ticket = secrets.token_urlsafe(12)
        self._tickets.add(ticket)
        ws_url = self.url.replace("http://", "ws://", 1)
        return {"ok": True, "url": f"{ws_url}/socket?ticket={ticket}&app_id={_APP_ID}"}

    def _channel(self, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        cid = self._resolve(str(args.get("channel") or ""))
        if cid is None:
            raise _Refusal("channel_not_found")
        return cid, self.channels[cid]

    def _postable(self, args: dict[str, Any]) -> str:
        cid, record = self._channel(args)
        if record["is_archived"]:
            raise _Refusal("is_archived")
        # chat:write.public lets a bot post to public channels it is not in, never to private ones.
        if record["is_private"] and not record["is_member"]:
            raise _Refusal("not_in_channel")
        return cid

    def _resolve(self, ref: str) -> str | None:
        if ref in self.channels:
            return ref
        if _USER_ID.fullmatch(ref):
            return self._open_im(ref)
        name = ref.removeprefix("#")
        return next((cid for cid, rec in self.channels.items() if rec["name"] == name), None)

    def _open_im(self, user: str) -> str:
        cid = self._ims.get(user)
        if cid is None:
            cid = self._ims[user] = "D" + user[1:]
            record = _channel_record(cid, {"name": user, "is_private": True})
            record.update(is_group=False, is_im=True, user=user)
            self.channels[cid] = record
        return cid

    def _find(self, cid: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self.messages.get(cid, []) if m["ts"] == ts), None)

    def _new_message(self, args: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "message",
            "text": args.get("text") or "",
            "user": self.bot_user_id,
            "bot_id": _BOT_ID,
            "app_id": _APP_ID,
            "team": self.team,
            "ts": self._next_ts(),
            "blocks": args.get("blocks") or [],
        }
        for key in ("attachments", "metadata"):
            if key in args:
                message[key] = args[key]
        return message

    def _next_ts(self) -> str:
        # Slack ts values are "seconds.microseconds" and unique per channel; these are globally
        # unique and strictly increasing, so ordering by ts is ordering by arrival.
        micros = max(time.time_ns() // 1000, self._last_ts_micros + 1)
        self._last_ts_micros = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    # response_url -------------------------------------------------------------------------------

    async def _response(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        body: dict[str, Any] = {}
        try:
            self._take_failure("response_url")
            try:
                parsed = await request.json()
            except ValueError:
                raise _Refusal("invalid_payload", status=400) from None
            if not isinstance(parsed, dict):
                raise _Refusal("invalid_payload", status=400)
            body = parsed
            if self._response_uses[rid] >= _RESPONSE_URL_USES:
                raise _Refusal("used_url", status=404)
            wanted = ("text", "blocks", "attachments")
            if not body.get("delete_original") and not any(body.get(k) for k in wanted):
                raise _Refusal("no_text", status=400)
        except _Refusal as refusal:
            self._record("response_url", body, None, request.path, refusal.status, refusal.error)
            # Slack's webhook endpoints answer in plain text, not JSON.
            return web.Response(
                text=refusal.error, status=refusal.status, headers=refusal.headers()
            )
        self._response_uses[rid] += 1
        self._record("response_url", body, None, request.path)
        return web.Response(text="ok")

    # Socket Mode server side --------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket", "") not in self._tickets:
            return web.Response(status=401, text="invalid_ticket")
        ws = web.WebSocketResponse(autoping=True)  # answers the client's sdk-ping-pong pings
        await ws.prepare(request)
        sock = _Socket(ws)
        live = sum(1 for s in self._sockets if not s.draining) + 1
        # The hello goes out before the socket counts as live, so it is always the first frame.
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": live,
                "debug_info": {
                    "host": "fake",
                    "build_number": 1,
                    "approximate_connection_time": 3600,
                },
                "connection_info": {"app_id": _APP_ID},
            }
        )
        self._sockets.append(sock)
        self.socket_connects += 1
        self._pulse()
        try:
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    self._on_ack(frame.data)
        finally:
            self._sockets.remove(sock)
            for owner, future in self._pending.values():
                if owner is sock and not future.done():
                    future.set_exception(ConnectionError("the socket closed before the ack"))
            self._pulse()
        return ws

    def _on_ack(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            log.debug("ignored a socket frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        pending = self._pending.get(str(frame.get("envelope_id")))
        if pending is not None and not pending[1].done():
            pending[1].set_result(frame)

    async def _live_socket(self, deadline: float) -> _Socket:
        loop = asyncio.get_running_loop()
        while True:
            live = [s for s in self._sockets if not s.draining and not s.ws.closed]
            if live:
                return live[-1]
            changed = self._changed
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no Socket Mode client connected")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    # Admin view for other processes --------------------------------------------------------------

    async def _admin_calls(self, request: web.Request) -> web.Response:
        method = request.query.get("method")
        since = int(request.query.get("since", "0"))
        calls = [self._call_json(c) for c in self.calls[since:] if method in (None, c.method)]
        return web.json_response(
            {
                "calls": calls,
                "next": len(self.calls),
                "rate_limited": self.rate_limited,
                "socket_connects": self.socket_connects,
            }
        )

    async def _admin_messages(self, request: web.Request) -> web.Response:
        return web.json_response({"messages": self.messages, "views": self.views})

    async def _admin_fail(self, request: web.Request) -> web.Response:
        spec = await request.json()
        try:
            self.fail_next(
                str(spec["method"]),
                status=int(spec.get("status", 429)),
                retry_after=spec.get("retry_after", 1),
                error=spec.get("error"),
                times=int(spec.get("times", 1)),
                body=spec.get("body"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _admin_socket(self, request: web.Request) -> web.Response:
        spec = await request.json()
        try:
            ack = await self.send_socket_request(
                str(spec["type"]), dict(spec["payload"]), timeout=float(spec.get("timeout", 5.0))
            )
        except (TimeoutError, ConnectionError) as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=504)
        return web.json_response({"ok": True, "ack": ack})

    async def _admin_disconnect(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        reason = spec.get("reason", "refresh_requested")
        if reason is None:
            await self.close_sockets()
        else:
            await self.disconnect_sockets(str(reason))
        return web.json_response({"ok": True})

    def _call_json(self, call: Call) -> dict[str, Any]:
        kind = {self.bot_token: "bot", self.app_token: "app"}.get(call.token or "", "other")
        return {
            "method": call.method,
            "args": call.args,
            "time": call.time,
            "path": call.path,
            "status": call.status,
            "error": call.error,
            "auth": kind if call.token else None,  # the kind of token, never the token
        }

    # Recording ----------------------------------------------------------------------------------

    def _record(
        self,
        method: str,
        args: dict[str, Any],
        token: str | None,
        path: str,
        status: int = 200,
        error: str | None = None,
        *,
        result: dict[str, Any] | None = None,
    ) -> None:
        call = Call(method, args, token, time.time(), path, status, error, result)
        self.calls.append(call)
        if method == "response_url" and call.ok:
            self.responses.append(call)
        if status == 429:
            self.rate_limited += 1
        log.debug("fake slack: %s -> %s %s", method, status, error or "ok")
        for listener in list(self._listeners):
            try:
                listener(call)
            except Exception:  # a broken watcher of the stand-in must not fail the bot's call
                log.exception("fake slack: a call listener failed")
        self._pulse()

    def _pulse(self) -> None:
        # Waiters hold the old event; setting it wakes them and a fresh one is armed for the next.
        self._changed.set()
        self._changed = asyncio.Event()


def _channel_record(cid: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    is_private = bool(spec.get("is_private", False))
    return {
        "id": cid,
        "name": str(spec.get("name", cid.lower())),
        "is_channel": not is_private,
        "is_group": is_private,
        "is_im": False,
        "is_private": is_private,
        "is_member": bool(spec.get("is_member", True)),
        "is_archived": bool(spec.get("is_archived", False)),
    }


def _bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


async def _read_args(request: web.Request) -> tuple[dict[str, Any], str | None]:
    """Query parameters merged with a JSON or form body; `token` is taken out."""
    args: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise _Refusal("invalid_json") from None
            if not isinstance(body, dict):
                raise _Refusal("invalid_json")
            args.update(body)
        else:
            form = await request.post()
            args.update({key: value for key, value in form.items() if isinstance(value, str)})
    token = args.pop("token", None)
    for key in _JSON_ARGS:
        value = args.get(key)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                args[key] = json.loads(value)
    return args, token if isinstance(token, str) else None


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _serve(standin: FakeSlack, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await standin.start(host, port)
    try:
        # The first stdout line is the api_url, so a parent process can read it and go.
        print(standin.api_url, flush=True)
        print(
            f"fake slack at {standin.url}: admin {standin.url}/_fake/calls, Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await standin.stop()


def build_parser() -> argparse.ArgumentParser:
    """The stand-in's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bot.sandbox.fakeslack", description="A local Slack Web API stand-in."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="IP address to listen on (default %(default)s, this machine only; the admin API"
        " under /_fake/ has no login)",
    )
    parser.add_argument(
        "--port", type=int, default=8082, metavar="N", help="TCP port (default %(default)s; 0: any)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PER_SECOND",
        help="chat.postMessage calls per second allowed per channel, the rest answered 429"
        " (default: no limit)",
    )
    parser.add_argument(
        "--burst",
        type=float,
        default=2.0,
        metavar="CALLS",
        help="calls allowed at once above --rate (default %(default)g)",
    )
    parser.add_argument(
        "--bot-token",
        default="xoxb-test",
        metavar="TOKEN",
        help="the bot token the Web API accepts (default %(default)s)",
    )
    parser.add_argument(
        "--app-token",
        default="xapp-test",
        metavar="TOKEN",
        help="the app-level token apps.connections.open accepts (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in until SIGINT/SIGTERM; print its api_url as the first stdout line."""
    options = build_parser().parse_args(argv)
    standin = FakeSlack(
        bot_token=options.bot_token,
        app_token=options.app_token,
        per_channel_rate=options.rate,
        per_channel_burst=options.burst,
    )
    asyncio.run(_serve(standin, options.host, options.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
