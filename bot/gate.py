"""What a request must be before Bolt sees it: small, quick, signed; and where replies may go.

Everything here faces people who hold no secret. A request to `/slack/events` is read with a size
cap and a deadline, its Slack signature is checked over the raw bytes, and only then does Bolt get
it; a refused request costs at most one short log line (never its body), and past a few a
minute only a count. Connections are capped, the oldest idle one making room for a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext

log = logging.getLogger(__name__)

# Slack refuses to trust a request more than five minutes old (verifying-requests-from-slack).
MAX_AGE_SECONDS: Final = 300
VERIFIED_KEY: Final = "kps_request_verified"
# Slack sends integer seconds. Python's int() also takes " 1", "+1", "1_0" and non-ASCII digits,
# and slack_sdk's verifier raises ValueError on anything else, so the shape is checked first.
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}")
_SIGNATURE: Final = re.compile(r"v0=[0-9a-f]{64}")
_REFUSED_AT_CAP: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
    b"Retry-After: 1\r\n\r\n"
)


@dataclass(frozen=True)
class Limits:
    """How much an unauthenticated peer may take: bytes, seconds and connections."""

    # Slack documents no request-size maximum. 1 MiB is the aiohttp default Bolt's adapter has
    # always applied (so nothing larger ever worked); our largest payload, a Home tab click that
    # carries its view (views.publish caps views at 250 kB), fits even form-encoded three times.
    # (bolt-js 5.1 added the same guard as a security fix, defaulting to 4 MB.)
    max_body_bytes: int = 1024 * 1024
    # Slack wants an answer within 3 s of sending, so a body still arriving after 5 s is not
    # Slack's; a connection that has sent no complete request after 10 s is not Slack's either.
    body_seconds: float = 5.0
    header_seconds: float = 10.0
    # Far above what Slack opens to one app, and below the 1,024 descriptors many hosts allow
    # (the KPS pool, the Slack session and the store need theirs); see connection_cap.
    max_connections: int = 512
    log_interval: float = 60.0
    refusals_logged_per_interval: int = 20


class Refusal(Enum):
    """Why a request to `/slack/events` was turned away."""

    UNSIGNED = "no signature or timestamp header"
    BAD_TIMESTAMP = "timestamp is not whole seconds"
    EXPIRED = "timestamp more than five minutes away"
    BAD_SIGNATURE = "signature does not match"
    TOO_LARGE = "body over the size limit"
    TOO_SLOW = "body not received in time"


def check_signature(
    secret: bytes, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> Refusal | None:
    """None when Slack signed exactly these bytes within five minutes of `now`, else why not."""
    if timestamp is None or signature is None:
        return Refusal.UNSIGNED
    if not _TIMESTAMP.fullmatch(timestamp):
        return Refusal.BAD_TIMESTAMP
    if abs(now - int(timestamp)) > MAX_AGE_SECONDS:
        return Refusal.EXPIRED
    if not _SIGNATURE.fullmatch(signature):
        return Refusal.BAD_SIGNATURE
    digest = hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256)
    if hmac.compare_digest(b"v0=" + digest.hexdigest().encode(), signature.encode()):
        return None
    return Refusal.BAD_SIGNATURE


def connection_cap(wanted: int, descriptor_limit: int) -> int:
    """At most `wanted` connections, and at most half the process's file descriptors."""
    return max(16, min(wanted, descriptor_limit // 2))


# --- response_url: where a verified request may send the bot --------------------------------------


@dataclass(frozen=True)
class ResponseUrls:
    """The response_url hosts the bot posts to: Slack's hooks host, and a stand-in's origin."""

    extra_origin: tuple[str, str, int] | None = None

    @classmethod
    def for_api(cls, slack_api_url: str) -> ResponseUrls:
        """Slack's hooks only; when SLACK_API_URL is not Slack (tests, demo), its origin too."""
        parts = urlsplit(slack_api_url)
        host = (parts.hostname or "").lower()
        if host == "slack.com" or host.endswith(".slack.com"):
            return cls()
        return cls(_origin(slack_api_url))

    def allows(self, url: str) -> bool:
        """True when `url` is https on hooks.slack.com (or the stand-in's origin)."""
        try:
            parts = urlsplit(url)
            origin = _origin(url)
        except ValueError:  # a port out of range or a malformed IPv6 literal
            return False
        if parts.username is not None or parts.password is not None or origin is None:
            return False
        if self.extra_origin is not None and origin == self.extra_origin:
            return True
        scheme, host, port = origin
        on_slack = host == "hooks.slack.com" or host.endswith(".hooks.slack.com")
        return scheme == "https" and port == 443 and on_slack


SLACK_HOOKS_ONLY: Final = ResponseUrls()


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname.lower(), port


def describe_url(url: str) -> str:
    """Scheme and host only: a response_url's path is a credential for that reply."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname or '?'}"[:100]
    except ValueError:
        return "unparsable"


# --- Bolt: which requests were verified --------------------------------------------------------


async def mark_verified(context: AsyncBoltContext, next: Callable[[], Awaitable[None]]) -> None:
    """Bolt runs app middleware only after its own signature check (skipped in Socket Mode, whose
    connection Slack authenticates), so reaching this one means the request may be trusted."""
    context[VERIFIED_KEY] = True
    await next()


def passed_verification(context: AsyncBoltContext) -> bool:
    """True when `mark_verified` ran for this request (register it before other middleware)."""
    return context.get(VERIFIED_KEY) is True


# --- logging a flood once per interval ----------------------------------------------------------


class Tally:
    """Which of many similar events get a log line: the first few per interval, then a count."""

    def __init__(self, interval: float, lines: int) -> None:
        self.interval = interval
        self.lines = lines
        self.window_end = float("-inf")
        self._logged = 0
        self._unlogged: Counter[str] = Counter()

    def note(self, kind: str, now: float) -> bool:
        """Count one event; True when it may have a line of its own."""
        if now >= self.window_end:
            self.window_end = now + self.interval
            self._logged = 0
        if self._logged < self.lines:
            self._logged += 1
            return True
        self._unlogged[kind] += 1
        return False

    @property
    def unlogged(self) -> int:
        """Events counted but not logged since the last `drain`."""
        return sum(self._unlogged.values())

    def drain(self) -> dict[str, int]:
        """The unlogged events by kind, forgotten from now on."""
        counts = dict(self._unlogged)
        self._unlogged.clear()
        return counts


class _FloodLog:
    """A Tally on the event loop: logs an event, or counts it and logs a summary later."""

    def __init__(self, tally: Tally, summary: str) -> None:
        self._tally = tally
        self._summary = summary
        self._timer: asyncio.TimerHandle | None = None

    def event(self, kind: str, message: str, **fields: Any) -> None:
        loop = asyncio.get_running_loop()
        if self._tally.note(kind, loop.time()):
            log.warning(message, extra={"why": kind, **fields})
        elif self._timer is None:
            self._timer = loop.call_at(self._tally.window_end, self.flush)

    def flush(self) -> None:
        self._timer = None
        counts = self._tally.drain()
        if counts:
            seconds = int(self._tally.interval)
            log.warning(self._summary, extra={"seconds": seconds, **counts})

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()


# --- connections ------------------------------------------------------------------------------


@dataclass
class _Connection:
    deadline: asyncio.TimerHandle | None
    busy: int = 0  # verified requests being handled: never evicted


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted (or not) by the guard."""

    def __init__(self, guard: _ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._make = make
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP listener's
        self._transport = transport
        if not self._guard.admit(transport):
            transport.write(_REFUSED_AT_CAP)
            transport.close()
            return
        self._inner = self._make()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.release(self._transport)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _ConnectionGuard:
    """Open connections, oldest first: caps them, and closes those that send nothing in time."""

    def __init__(self, limits: Limits, flood: _FloodLog) -> None:
        self._limits = limits
        self._flood = flood
        self.cap = connection_cap(
            limits.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        )
        self._open: dict[asyncio.Transport, _Connection] = {}

    @property
    def count(self) -> int:
        return len(self._open)

    def admit(self, transport: asyncio.Transport) -> bool:
        if len(self._open) >= self.cap and not self._evict_one():
            self._flood.event("refused_at_limit", "connection refused", limit=self.cap)
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.call_later(self._limits.header_seconds, self._expire, transport)
        self._open[transport] = _Connection(deadline)
        return True

    def _evict_one(self) -> bool:
        # The oldest connection not handling a verified request: under a flood of idle or slow
        # connections that is an attacker's, while Slack's own arrive complete in milliseconds.
        for transport, connection in self._open.items():
            if connection.busy == 0:
                self._forget(transport)
                transport.abort()
                self._flood.event("evicted_idle", "connection limit reached", limit=self.cap)
                return True
        return False

    def _expire(self, transport: asyncio.Transport) -> None:
        if self._open.pop(transport, None) is not None:
            transport.abort()
            self._flood.event(
                "no_request_in_time",
                "closed a connection that sent no request",
                seconds=self._limits.header_seconds,
            )

    def arrived(self, transport: asyncio.Transport | None) -> None:
        connection = self._open.get(transport) if transport is not None else None
        if connection is not None and connection.deadline is not None:
            connection.deadline.cancel()
            connection.deadline = None

    @contextmanager
    def busy(self, transport: asyncio.Transport | None) -> Iterator[None]:
        connection = self._open.get(transport) if transport is not None else None
        if connection is not None:
            connection.busy += 1
        try:
            yield
        finally:
            if connection is not None:
                connection.busy -= 1

    def release(self, transport: asyncio.Transport) -> None:
        self._forget(transport)

    def _forget(self, transport: asyncio.Transport) -> None:
        connection = self._open.pop(transport, None)
        if connection is not None and connection.deadline is not None:
            connection.deadline.cancel()

    def factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, make)


# --- the gate -----------------------------------------------------------------------------------


class _QuietBoltSignatureLog(logging.Filter):
    # Bolt logs every refused request with its whole body at INFO (RequestVerification
    # ._debug_log_error); the gate refuses them first, and this drops any that slip past.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid request signature")


def _quiet_bolt() -> None:
    logger = logging.getLogger("slack_bolt.RequestVerification")
    if not any(isinstance(f, _QuietBoltSignatureLog) for f in logger.filters):
        logger.addFilter(_QuietBoltSignatureLog())


class _MalformedHttp(logging.Filter):
    # aiohttp logs every request it cannot parse at ERROR with a traceback (about 500 bytes);
    # that is the peer's fault, not ours, so it joins the refusals' flood log as one short line.
    def __init__(self, flood: _FloodLog) -> None:
        super().__init__()
        self._flood = flood

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else None
        detail = str(error.message).splitlines()[0][:80] if error.message else type(error).__name__
        self._flood.event("malformed_http", "refused a malformed request", peer=peer, detail=detail)
        return False


class Gate:
    """The aiohttp front of the Bolt app: `/slack/events` behind checks, and a guarded listener."""

    def __init__(self, app: AsyncApp, signing_secret: str, limits: Limits | None = None) -> None:
        self._app = app
        self._secret = signing_secret.encode()
        self.limits = limits or Limits()
        self._refusals = _FloodLog(
            Tally(self.limits.log_interval, self.limits.refusals_logged_per_interval),
            "more Slack requests refused",
        )
        self._connections = _FloodLog(
            Tally(self.limits.log_interval, 1), "more connections closed or refused"
        )
        self.guard = _ConnectionGuard(self.limits, self._connections)
        self._listener: asyncio.Server | None = None
        # A logger of this gate's own below aiohttp's, so the filter goes with this server only.
        self._http_log = logging.Logger("aiohttp.server")
        self._http_log.parent = logging.getLogger("aiohttp.server")
        self._http_log.addFilter(_MalformedHttp(self._refusals))
        _quiet_bolt()

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for the `web.AppRunner` that serves this gate's app."""
        return {
            # Slack never compresses what it sends; inflating would let a small body grow.
            "auto_decompress": False,
            # After an answer sent before the body was read (413, 408), aiohttp reads and drops
            # the rest for `lingering_time` (default 10 s) before closing: a second is enough.
            "lingering_time": 1.0,
            "logger": self._http_log,
        }

    def web_app(self, path: str) -> web.Application:
        """An aiohttp app serving Slack's POSTs on `path`; add other routes to it freely."""

        @web.middleware
        async def arrived(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.guard.arrived(request.transport)
            return await handler(request)

        # client_max_size makes request.read() stop at the limit whatever Content-Length says.
        web_app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[arrived])
        web_app.router.add_post(path, self.handle)
        web_app[GATE] = self
        return web_app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Read, size and verify one request, then let Bolt answer it."""
        declared = request.content_length
        if declared is not None and declared > self.limits.max_body_bytes:
            return self._refuse(request, Refusal.TOO_LARGE, 413, size=declared)
        try:
            async with asyncio.timeout(self.limits.body_seconds):
                body = await request.read()
        except TimeoutError:
            return self._refuse(request, Refusal.TOO_SLOW, 408, size=None)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, Refusal.TOO_LARGE, 413, size=None)
        except ConnectionError:
            # The peer went away (or the guard closed it): nobody to answer, nothing to log.
            return web.Response(status=400)
        refusal = check_signature(
            self._secret,
            request.headers.get("X-Slack-Request-Timestamp"),
            request.headers.get("X-Slack-Signature"),
            body,
            time.time(),
        )
        if refusal is not None:
            return self._refuse(request, refusal, 401, size=len(body), body=body)
        with self.guard.busy(request.transport):
            bolt_response = await self._app.async_dispatch(await to_bolt_request(request))
            return await to_aiohttp_response(bolt_response)

    def _refuse(
        self,
        request: web.Request,
        refusal: Refusal,
        status: int,
        *,
        size: int | None,
        body: bytes | None = None,
    ) -> web.Response:
        fields: dict[str, Any] = {"status": status, "peer": request.remote, "bytes": size}
        if body is not None:
            # A short hash tells repeats apart without putting an attacker's bytes in the log.
            fields["sha256"] = hashlib.sha256(body).hexdigest()[:16]
        fields["detail"] = refusal.value
        self._refusals.event(refusal.name.lower(), "refused a Slack request", **fields)
        response = web.json_response({"error": "invalid request"}, status=status)
        if status != 401:
            # The rest of the body was never read: close rather than wait for it.
            response.force_close()
        return response

    async def listen(self, runner: web.BaseRunner, host: str, port: int) -> None:
        """Accept connections on host:port for `runner`'s app, each admitted by the guard."""
        server = runner.server
        assert server is not None, "call runner.setup() first"
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self.guard.factory(server), host, port, backlog=128
        )

    @property
    def port(self) -> int:
        """The port listened on (useful after listening on port 0)."""
        assert self._listener is not None
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    def close(self) -> None:
        """Stop accepting connections (open ones finish) and log what the flood logs still hold."""
        if self._listener is not None:
            self._listener.close()
        self._refusals.close()
        self._connections.close()


GATE: Final = web.AppKey("gate", Gate)
