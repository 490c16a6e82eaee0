"""The peer for the ack path: the shape most Bolt tutorials show, fetch first, answer in the ack.

A synchronous `slack_bolt.App` with its defaults (a 5-thread listener executor, acks polled every
10 ms), a `/kps` listener that calls KPS *before* it acks and puts the page in the ack, served by
Bolt's own development-server handler on a `ThreadingHTTPServer` (one thread per connection and a
1024-deep listen queue: more generous than `app.start()`, which serves one request at a time).
`python -m bench.peer --port P ...`
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
from slack_bolt import Ack, App
from slack_bolt.app.app import SlackAppDevelopmentServer
from slack_sdk import WebClient

from bench.floor import PAGE, parse_task
from bot.blockkit import ViewContext
from bot.blocks import build_page


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def build_app(args: argparse.Namespace) -> App:
    """The tutorial-shaped app: one listener that does everything before `ack()`."""
    client = WebClient(token="xoxb-test", base_url=args.slack_api_url)  # noqa: S106
    app = App(client=client, signing_secret=args.secret)
    kps_url = f"{args.kps_endpoint.rstrip('/')}/v3/{args.project_id}/running-tasks"
    # Pooled and thread-safe; tutorials often use a fresh requests.get() instead, which is slower.
    http = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0))

    @app.command("/kps")
    def kps(ack: Ack, command: dict[str, Any]) -> None:
        response = http.get(
            kps_url,
            params={"limit": PAGE.page_size, "offset": PAGE.offset},
            headers={"X-Auth-Token": args.token, "Content-Type": "application/json"},
        )
        response.raise_for_status()
        data = response.json()
        now = datetime.now(UTC)
        ctx = ViewContext(
            project_id=args.project_id, region=None, now=now, stale_after=timedelta(minutes=30)
        )
        tasks = [parse_task(item) for item in data["tasks"]]
        message = build_page(tasks, total=data["total"], ref=PAGE, ctx=ctx)
        ack(**message.as_payload())

    return app


def serve(args: argparse.Namespace) -> None:
    """Serve until killed."""
    app = build_app(args)
    development = SlackAppDevelopmentServer(
        args.port, "/slack/events", app, http_server_logger_enabled=False
    )
    handler = development._server.RequestHandlerClass
    development._server.server_close()

    class Handler(handler):  # type: ignore[misc,valid-type]
        def do_GET(self) -> None:
            if self.path == "/healthz":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                return
            super().do_GET()

    _Server(("127.0.0.1", args.port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--kps-endpoint", required=True)
    parser.add_argument("--project-id", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--slack-api-url", required=True)
    logging.basicConfig(level=logging.WARNING)
    serve(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
