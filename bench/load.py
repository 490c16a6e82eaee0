"""The load generator: N simulated users sending Slack-signed `/kps` commands for a fixed time.

Run as its own process (`python -m bench.load ...`) so that it never shares an event loop with
the server it measures. Each user is a closed loop over one connection: send the command, read
the ack, then wait until its page has reached the Slack stand-in's response_url (the stand-in's
own record, polled in batches), and only then send the next one. A loop that went on after the
ack alone would measure how fast a server can *accept* work it then cannot do: a server that
defers everything would score any ack rate while its backlog, and the pages lost, grow without
bound. With `--page-in-ack` (the peer answers in the ack) the ack is the whole round.

It prints `measuring` when the measured window opens, `stopped` when it closes, then one JSON
line with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

SLACK_ACK_LIMIT = 3.0  # Slack shows the user an error when the ack takes longer than this


@dataclass(frozen=True, slots=True)
class Reply:
    """What reached the stand-in's response_url for one command."""

    at: float  # wall clock at the stand-in
    page: bool  # a task page, not an error message
    status: int


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured command."""

    start: float  # perf_counter when sent
    end: float  # perf_counter when the ack was read
    status: int  # the ack's HTTP status; -1: no answer (connection error or client timeout)
    page: bool  # a page arrived in time (in the ack for --page-in-ack)
    page_ms: float | None  # from sending to the page's arrival at the stand-in
    replied: bool  # something (page or error message) arrived in time


class Signer:
    """Slack's v0 signature over a form body, with the timestamp refreshed once a second."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self._second = 0
        self._ts = ""

    def headers(self, body: str) -> dict[str, str]:
        """The two signing headers Slack sends with `body`, and its content type."""
        now = int(time.time())
        if now != self._second:
            self._second, self._ts = now, str(now)
        base = f"v0:{self._ts}:{body}".encode()
        signature = "v0=" + hmac.new(self._secret, base, hashlib.sha256).hexdigest()
        return {
            "X-Slack-Request-Timestamp": self._ts,
            "X-Slack-Signature": signature,
            "Content-Type": "application/x-www-form-urlencoded",
        }


def command_body(text: str, response_url: str) -> str:
    """A slash-command form body as Slack posts it."""
    return urlencode(
        {
            "token": "legacy-verification-token",
            "team_id": "T0TEST",
            "team_domain": "test",
            "channel_id": "C0GENERAL",
            "channel_name": "general",
            "user_id": "U0BENCH",
            "user_name": "bench",
            "command": "/kps",
            "text": text,
            "api_app_id": "A0KPS",
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": "1.2.3",
        }
    )


class BodyMaker:
    """Bodies that differ only in their response_url, built by string pasting (it is hot)."""

    def __init__(self, text: str, response_base: str) -> None:
        marker = "RESPONSE-URL-MARKER"
        self._head, self._tail = command_body(text, marker).split(marker)
        self._base = response_base.rstrip("/") + "/response/"

    def body(self, rid: str) -> str:
        """The body whose response_url ends in `rid`."""
        return self._head + quote(self._base + rid, safe="") + self._tail


class Mailbox:
    """Polls the stand-in's call record and hands each response_url post to its waiting user."""

    def __init__(self, session: aiohttp.ClientSession, base: str, marker: str) -> None:
        self._session = session
        self._url = base.rstrip("/") + "/_fake/calls"
        self._marker = marker
        self._next = 0
        self._waiting: dict[str, asyncio.Future[Reply]] = {}

    def expect(self, rid: str) -> asyncio.Future[Reply]:
        """A future for the reply to `rid`; register it before sending the command."""
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        return future

    def forget(self, rid: str) -> None:
        """Stop waiting for `rid`."""
        self._waiting.pop(rid, None)

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            params = {"method": "response_url", "since": str(self._next)}
            try:
                async with self._session.get(self._url, params=params) as answer:
                    data = await answer.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.05)
                continue
            self._next = int(data["next"])
            for call in data["calls"]:
                rid = call["path"].rsplit("/", 1)[-1]
                page = call["status"] == 200 and self._marker in json.dumps(call["args"])
                reply = Reply(float(call["time"]), page, int(call["status"]))
                future = self._waiting.pop(rid, None)
                if future is not None and not future.done():
                    future.set_result(reply)
            await asyncio.sleep(0.01 if not data["calls"] else 0)


async def run_load(
    *,
    url: str,
    secret: str,
    users: int,
    duration: float,
    warmup: float,
    response_base: str,
    tag: str,
    text: str,
    page_marker: str,
    page_in_ack: bool,
    page_timeout: float,
    ack_timeout: float,
) -> dict[str, Any]:
    """Run the warm-up and the measured window; return the figures."""
    signer = Signer(secret)
    maker = BodyMaker(text, response_base)
    marker = page_marker.encode()
    samples: list[Sample] = []
    errors: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=users + 1, limit_per_host=users + 1)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=ack_timeout)
    )
    mailbox = Mailbox(session, response_base, page_marker)
    clock = time.perf_counter
    begin = clock()
    measure_from = begin + warmup
    stop_at = measure_from + duration

    async def user(index: int) -> None:
        sequence = 0
        while True:
            start = clock()
            if start >= stop_at:
                return
            measured = start >= measure_from
            sequence += 1
            rid = f"{tag if measured else 'warm'}-{index}-{sequence}"
            body = maker.body(rid)
            reply = None if page_in_ack else mailbox.expect(rid)
            sent_wall = time.time()
            status, page_in_body = -1, False
            try:
                async with session.post(url, data=body, headers=signer.headers(body)) as response:
                    content = await response.read()
                    status = response.status
                    page_in_body = bool(marker) and marker in content
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
            end = clock()
            page, page_ms, replied = False, None, False
            if page_in_ack:
                page = status == 200 and page_in_body and end - start <= SLACK_ACK_LIMIT
                replied = page
                page_ms = (end - start) * 1000 if page else None
            elif reply is not None and status == 200:
                try:
                    got = await asyncio.wait_for(reply, page_timeout)
                except TimeoutError:
                    mailbox.forget(rid)
                else:
                    replied, page = True, got.page
                    page_ms = (got.at - sent_wall) * 1000 if page else None
            elif reply is not None:
                mailbox.forget(rid)
                reply.cancel()
            if measured:
                samples.append(Sample(start, end, status, page, page_ms, replied))

    async def announce() -> None:
        await asyncio.sleep(max(0.0, measure_from - clock()))
        print("measuring", flush=True)
        await asyncio.sleep(max(0.0, stop_at - clock()))
        print("stopped", flush=True)

    poller = asyncio.create_task(mailbox.run())
    try:
        await asyncio.gather(announce(), *(user(i) for i in range(users)))
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await session.close()
    return summarise(samples, errors, measure_from, stop_at)


def summarise(
    samples: list[Sample], errors: Counter[str], measure_from: float, stop_at: float
) -> dict[str, Any]:
    """Rates over the window, latency percentiles over every measured command."""
    window = stop_at - measure_from
    acks = sorted((s.end - s.start) * 1000 for s in samples if s.status != -1)
    page_times = sorted(s.page_ms for s in samples if s.page_ms is not None)
    ok = [s for s in samples if s.status == 200]
    return {
        "sent": len(samples),
        "ok": len(ok),
        "statuses": dict(Counter(str(s.status) for s in samples)),
        "errors": dict(errors),
        "rps": sum(1 for s in samples if s.end <= stop_at) / window,
        "pages": sum(1 for s in samples if s.page),
        "pages_per_s": sum(1 for s in samples if s.page) / window,
        "other_replies": sum(1 for s in samples if s.replied and not s.page),
        "p50_ms": percentile(acks, 50),
        "p99_ms": percentile(acks, 99),
        "max_ms": acks[-1] if acks else None,
        "page_p50_ms": percentile(page_times, 50),
        "page_p99_ms": percentile(page_times, 99),
        "acks_over_3s": sum(1 for s in ok if s.end - s.start > SLACK_ACK_LIMIT),
        "window_s": window,
    }


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when it is empty."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run, print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--users", type=int, required=True, help="concurrent connections")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--response-base", required=True, help="the Slack stand-in's base URL")
    parser.add_argument("--tag", default="m", help="prefix of measured response_url ids")
    parser.add_argument("--text", default="", help="the command text after /kps")
    parser.add_argument("--page-marker", required=True, help="a string only a page contains")
    parser.add_argument("--page-in-ack", action="store_true", help="the ack carries the page")
    parser.add_argument("--page-timeout", type=float, default=30.0, help="later counts as lost")
    parser.add_argument("--timeout", type=float, default=10.0, help="for the ack")
    args = parser.parse_args(argv)
    result = asyncio.run(
        run_load(
            url=args.url,
            secret=args.secret,
            users=args.users,
            duration=args.duration,
            warmup=args.warmup,
            response_base=args.response_base,
            tag=args.tag,
            text=args.text,
            page_marker=args.page_marker,
            page_in_ack=args.page_in_ack,
            page_timeout=args.page_timeout,
            ack_timeout=args.timeout,
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
