"""Runs the bot in Socket Mode or HTTP mode until SIGTERM, then shuts down cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping

from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from sqlalchemy.exc import SQLAlchemyError

from bot.app import Runtime, build_runtime
from bot.config import Settings, oauth_conflict
from bot.gate import GATE, Gate, Limits
from bot.store import StoreError

log = logging.getLogger(__name__)

SLACK_PATH = "/slack/events"
DRAIN_SECONDS = 25.0  # Heroku and Kubernetes both allow about 30 s between SIGTERM and SIGKILL


def build_web_app(
    runtime: Runtime, stopping: asyncio.Event, limits: Limits | None = None
) -> web.Application:
    """The gated Bolt app for `/slack/events`, plus `GET /healthz` and `GET /readyz`."""
    secret = runtime.settings.slack_signing_secret
    assert secret is not None  # HTTP mode requires it (config)
    web_app = Gate(runtime.app, secret.reveal(), limits).web_app(SLACK_PATH)
    add_health_routes(web_app, runtime, stopping, mode="http")
    return web_app


def build_health_app(runtime: Runtime, stopping: asyncio.Event) -> web.Application:
    """Socket Mode's HTTP server: `GET /healthz` and `GET /readyz`, and nothing else."""
    # Probes send no body; the cap keeps anything else from costing more than a refusal.
    web_app = web.Application(client_max_size=1024)
    add_health_routes(web_app, runtime, stopping, mode="socket")
    return web_app


def add_health_routes(
    web_app: web.Application, runtime: Runtime, stopping: asyncio.Event, *, mode: str
) -> None:
    """`/healthz`: alive (503 only while stopping; a failing watcher is named, not fatal);
    `/readyz`: 200 only once Slack accepts the bot token and the state store answers."""

    async def healthz(_: web.Request) -> web.Response:
        if stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        watcher = runtime.watcher
        problem = watcher.problem if watcher is not None else None
        body: dict[str, object] = {
            "status": "ok" if problem is None else "impaired",
            "mode": mode,
            "in_flight": runtime.inflight.count,
            # off, standby (another replica watches) or leader
            "watcher": watcher.role if watcher is not None else "off",
        }
        if problem is not None:
            # A watcher whose every step fails watches nothing: say so to whoever probes. Still
            # 200: liveness probes restart on failure, and a restart mends no database; the
            # store's trouble turns /readyz to 503 and the channel hears it as "impaired".
            body["problem"] = problem
        return web.json_response(body)

    async def readyz(_: web.Request) -> web.Response:
        # Settings were good, or the process would not be serving. Stopping comes first: a
        # load balancer should stop sending work before the work in flight drains.
        reason = "stopping" if stopping.is_set() else await runtime.readiness.problem()
        if reason is None:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/readyz", readyz)


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    host: str = "0.0.0.0",
    listening: Callable[[int], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run until `stop` is set (SIGTERM and SIGINT set it); 0 after a clean shutdown, 2 when
    `environ` (default: the process environment, which Bolt reads) would switch Bolt to OAuth.

    Both modes listen on `host` (every interface, as a platform's router expects; the demo
    passes loopback) and tell `listening` the port they got: with port 0 the system picks one.
    """
    oauth = oauth_conflict(os.environ if environ is None else environ)
    if oauth is not None:
        text, fatal = oauth
        # Bolt builds its OAuth flow from these whenever both are in os.environ, and no
        # AsyncApp argument turns that off; the bot would answer every request with an
        # installation lookup that fails. Refusing to start says so where it is seen.
        if fatal:
            log.error("refusing to start: %s", text)
            return 2
        log.warning(text)
    stop = stop or asyncio.Event()
    if handle_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    runtime = build_runtime(settings)
    try:
        try:
            await runtime.start()
        except (StoreError, SQLAlchemyError, OSError) as error:
            # STATE_URL: a database that does not answer, refuses the login or cannot be
            # created. Anything else is a bug and goes up whole, with its traceback.
            log.error(
                "cannot open the state store (STATE_URL): %s",
                f"{type(error).__name__}: {error}"[:500],
            )
            return 1
        if settings.socket_mode:
            await _serve_socket(runtime, stop, host, listening)
        else:
            await _serve_http(runtime, stop, host, listening)
    finally:
        await runtime.aclose()
    log.info("stopped cleanly")
    return 0


async def _serve_socket(
    runtime: Runtime,
    stop: asyncio.Event,
    host: str,
    listening: Callable[[int], None] | None,
) -> None:
    app_token = runtime.settings.slack_app_token
    assert app_token is not None  # socket_mode means it is set
    runner = web.AppRunner(build_health_app(runtime, stop), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        # Bound before Slack is dialled: a platform waiting for the port sees it at once.
        await web.TCPSite(runner, host, runtime.settings.port, backlog=128).start()
        port: int = runner.addresses[0][1]
        log.info("listening", extra={"port": port, "paths": "/healthz /readyz"})
        if listening is not None:
            listening(port)
        handler = AsyncSocketModeHandler(runtime.app, app_token.reveal())
        await handler.connect_async()  # type: ignore[no-untyped-call]
        log.info("connected to Slack in Socket Mode")
        await stop.wait()
        log.info("stopping: closing the Socket Mode connection, finishing work in flight")
        await handler.close_async()  # type: ignore[no-untyped-call]
        # The probes stay up while work drains: /readyz says "stopping" meanwhile.
        await _drain(runtime)
    finally:
        await runner.cleanup()


async def _serve_http(
    runtime: Runtime,
    stop: asyncio.Event,
    host: str,
    listening: Callable[[int], None] | None,
) -> None:
    web_app = build_web_app(runtime, stop)
    gate = web_app[GATE]
    runner = web.AppRunner(
        web_app, access_log=None, shutdown_timeout=DRAIN_SECONDS, **gate.runner_options()
    )
    await runner.setup()
    await gate.listen(runner, host, runtime.settings.port)
    log.info("listening", extra={"port": gate.port, "path": SLACK_PATH})
    if listening is not None:
        listening(gate.port)
    await stop.wait()
    log.info("stopping: refusing new requests, finishing work in flight")
    gate.close()
    await _drain(runtime)
    await runner.cleanup()


async def _drain(runtime: Runtime) -> None:
    # The watcher finishes its step and gives its lease up meanwhile, inside the same budget.
    stopping = runtime.watcher.stop() if runtime.watcher is not None else asyncio.sleep(0)
    drained, _ = await asyncio.gather(runtime.inflight.drain(DRAIN_SECONDS), stopping)
    if not drained:
        log.warning("gave up waiting for work in flight", extra={"left": runtime.inflight.count})
