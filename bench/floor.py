"""The floor for the ack path: the bot's work for `/kps` with no framework at all.

A bare aiohttp app that checks Slack's signature, answers 200 at once, then does the one KPS GET
(httpx, pooled like the bot's) and the one response_url POST (one aiohttp session) with the same
page the bot would build. `python -m bench.floor --port P ...`
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import httpx
from aiohttp import web

from bot.blockkit import ViewContext
from bot.blocks import PageRef, build_page
from bot.tasks import Task

PAGE = PageRef(offset=0, page_size=10)


class Floor:
    """The handler and its two pooled clients."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.secret = args.secret.encode()
        self.project_id = args.project_id
        self.kps_url = f"{args.kps_endpoint.rstrip('/')}/v3/{args.project_id}/running-tasks"
        self.token = args.token
        # The same pool and timeouts as bot/app.py, so the comparison is about the framework.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=5.0),
            limits=httpx.Limits(
                max_connections=args.kps_connections, max_keepalive_connections=args.keepalive
            ),
        )
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.background: set[asyncio.Task[None]] = set()
        # httpcore scans its whole wait queue for every request it assigns (encode/httpcore#1035),
        # which burns the CPU once thousands of GETs wait for 50 connections; a semaphore in front
        # makes the waiting free. --no-gate shows the difference.
        self.gate = asyncio.Semaphore(args.kps_connections) if args.gate else None

    async def close(self) -> None:
        """Close both clients."""
        await self.http.aclose()
        await self.session.close()

    async def events(self, request: web.Request) -> web.Response:
        """Verify, answer 200, and leave the page to a background task."""
        body = await request.read()
        ts = request.headers.get("X-Slack-Request-Timestamp", "")
        given = request.headers.get("X-Slack-Signature", "")
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            return web.Response(status=401)
        base = b"v0:" + ts.encode() + b":" + body
        expected = "v0=" + hmac.new(self.secret, base, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, given):
            return web.Response(status=401)
        form = parse_qs(body.decode())
        url = form.get("response_url", [""])[0]
        task = asyncio.create_task(self.reply(url))
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return web.Response(status=200)

    async def reply(self, response_url: str) -> None:
        """The one KPS GET and the one response_url POST."""
        try:
            if self.gate is None:
                response = await self.get_page()
            else:
                async with self.gate:
                    response = await self.get_page()
            response.raise_for_status()
            data = response.json()
            tasks = [parse_task(item) for item in data["tasks"]]
            now = datetime.now(UTC)
            ctx = ViewContext(
                project_id=self.project_id, region=None, now=now, stale_after=timedelta(minutes=30)
            )
            message = build_page(tasks, total=data["total"], ref=PAGE, ctx=ctx)
            payload: dict[str, Any] = message.as_payload()
            payload["response_type"] = "ephemeral"
            payload["replace_original"] = False
            async with self.session.post(response_url, json=payload) as posted:
                await posted.read()
        except (httpx.HTTPError, aiohttp.ClientError, TimeoutError, KeyError, ValueError):
            pass  # a lost page: the stand-in's count shows it

    async def get_page(self) -> httpx.Response:
        """The first page of running tasks."""
        return await self.http.get(
            self.kps_url,
            params={"limit": PAGE.page_size, "offset": PAGE.offset},
            headers={"X-Auth-Token": self.token, "Content-Type": "application/json"},
        )


def parse_task(item: dict[str, Any]) -> Task:
    """A `Task` from one KPS JSON item, with no validation (the floor trusts the simulator)."""
    millis = item.get("task_time")
    started = datetime.fromtimestamp(int(millis) / 1000, UTC) if millis else None
    return Task(
        task_id=item["task_id"],
        operate_type=item.get("operate_type") or "",
        started_at=started,
        server_name=item.get("server_name") or "",
        server_id=item.get("server_id") or "",
        keypair_name=item.get("keypair_name") or "",
    )


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM."""
    floor = Floor(args)
    app = web.Application()
    app.router.add_post("/slack/events", floor.events)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "in_flight": len(floor.background)})

    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await floor.close()


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--kps-endpoint", required=True)
    parser.add_argument("--project-id", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--kps-connections", type=int, default=50)
    parser.add_argument("--keepalive", type=int, default=20, help="idle connections kept")
    parser.add_argument("--no-gate", dest="gate", action="store_false")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
