"""The demo: the KPS simulator, the Slack stand-in with its playground, and the real bot, in one go.

Nothing here is needed to run the bot against a real workspace; `python -m bot` only comes here
when someone at a terminal starts it with no settings at all, or with `python -m bot demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import IO, Final, Self
from urllib.parse import urlsplit

import aiohttp

from bot.config import Settings, TokenAuthSettings
from bot.logs import configure_logging
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.guard import is_loopback_bind
from bot.sandbox.playground import Playground, PlaygroundConfig
from bot.sandbox.simulator import SimTask, Simulator, seed_tasks
from bot.secret import Secret
from bot.server import serve

PROJECT_ID: Final = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
REGION: Final = "cn-north-4"
STALE_CHANNEL: Final = "C0ALERTS"  # the stand-in's #kps-alerts
_BOT_START_SECONDS: Final = 20.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Ports (0: any free one; a taken port falls back to a free one), data and watcher pace."""

    host: str = "127.0.0.1"
    port: int = 8080  # the playground (and the Slack stand-in behind it)
    bot_port: int = 3000
    sim_port: int = 8081
    fresh_tasks: int = 32
    stale_tasks: int = 7
    seed: int | None = None
    stale_after: timedelta = timedelta(minutes=30)
    poll_interval: float = 2.0  # seconds; the shortest POLL_INTERVAL_SECONDS allows is 1
    renotify_after: timedelta | None = timedelta(minutes=5)  # so Snooze has something to stop
    log_level: str = "WARNING"


def demo_tasks(*, now: float, rng: random.Random, fresh: int = 32, stale: int = 7) -> list[SimTask]:
    """A few dozen plausible tasks: mostly fresh, several stale, every kind of operation."""
    young = seed_tasks(fresh, now=now, rng=rng, stale_fraction=0.0)
    old = seed_tasks(stale, now=now, rng=rng, stale_fraction=1.0)
    # seed_tasks draws resets, replaces and unbinds; KPS also binds, and queues tasks as READY_*.
    extra = seed_tasks(2, now=now, rng=rng, stale_fraction=0.0)
    extra[0].operate_type = extra[0].status = "RUNNING_BIND"
    extra[1].operate_type = extra[1].status = "READY_RESET"
    return [*young, *old, *extra]


async def start_on(what: str, wanted: int, start: Callable[[int], Awaitable[int]]) -> str | None:
    """Run `start(wanted)`; if that port cannot be bound, `start(0)` (a free port).

    `start` binds and returns the port it got, so there is no gap between finding a port free
    and taking it. Returns a one-line note naming both ports when `what` had to move.
    """
    if not wanted:
        await start(0)
        return None
    try:
        await start(wanted)
    except OSError as error:  # taken, or not ours (below 1024): any free one will do for a demo
        why = (
            "is taken" if error.errno == errno.EADDRINUSE else f"cannot be used ({error.strerror})"
        )
    else:
        return None
    port = await start(0)
    return f"port {wanted} {why}, so {what} listens on port {port} instead"


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise RuntimeError(f"no port in {url}")
    return port


class Demo:
    """Everything the demo runs, started and stopped together; `url` is the playground's."""

    def __init__(self, options: DemoOptions = DemoOptions()) -> None:
        self.options = options
        rng = random.Random(options.seed)
        self._kps_token = secrets.token_urlsafe(24)
        self.sim = Simulator(
            project_id=PROJECT_ID,
            project_name=REGION,
            tasks=demo_tasks(
                now=time.time(), rng=rng, fresh=options.fresh_tasks, stale=options.stale_tasks
            ),
            static_tokens=[self._kps_token],
        )
        self.slack = FakeSlack(
            bot_token="xoxb-demo-" + secrets.token_hex(8), team_name="KPS Playground"
        )
        self._signing_secret = Secret(secrets.token_hex(16))
        self._state_dir: Path | None = None
        self._stop = asyncio.Event()
        self._bot: asyncio.Task[int] | None = None
        self.settings: Settings | None = None
        self.playground: Playground | None = None
        self.moved: list[str] = []  # one line for each server that had to take another port

    @property
    def url(self) -> str:
        """The playground page."""
        return self.slack.url + "/"

    @property
    def bot_url(self) -> str:
        """The bot's own HTTP endpoint (what Slack would post to)."""
        if self.settings is None:
            raise RuntimeError("the demo has not been started")
        return f"http://127.0.0.1:{self.settings.port}"

    async def start(self) -> None:
        """Start the simulator, the stand-in with the playground, then the bot; wait until up."""
        options = self.options
        self.moved = []
        # The simulator and the bot are only the playground's business: loopback whatever --host.
        self._note(await start_on("the KPS simulator", options.sim_port, self._start_sim))
        self._state_dir = Path(tempfile.mkdtemp(prefix="kps-demo-"))
        self.playground = Playground(
            self.slack,
            PlaygroundConfig(
                bot_url="",  # known once the bot listens
                signing_secret=self._signing_secret,
                sim_url=self.sim.url,
                stale_after=options.stale_after,
                stale_channel=STALE_CHANNEL,
                poll_interval=options.poll_interval,
            ),
        )
        self._note(await start_on("the playground", options.port, self._start_slack))
        self._note(await start_on("the bot", options.bot_port, self._start_bot))
        self.playground.use_bot(self.bot_url)
        await self._wait_for_bot()

    def _note(self, note: str | None) -> None:
        if note is not None:
            self.moved.append(note)

    async def _start_sim(self, port: int) -> int:
        await self.sim.start("127.0.0.1", port)
        return _port_of(self.sim.url)

    async def _start_slack(self, port: int) -> int:
        await self.slack.start(self.options.host, port)
        return _port_of(self.slack.url)

    async def _start_bot(self, port: int) -> int:
        """Serve the bot on `port`; its bound port once it listens, or what stopped it."""
        assert self._state_dir is not None
        options = self.options
        settings = Settings(
            slack_bot_token=Secret(self.slack.bot_token),
            project_id=PROJECT_ID,
            auth=TokenAuthSettings(Secret(self._kps_token)),
            kps_endpoint=self.sim.url,
            iam_endpoint=self.sim.url,
            region=REGION,
            slack_signing_secret=self._signing_secret,
            slack_api_url=self.slack.api_url,
            port=port,
            stale_channel_id=STALE_CHANNEL,
            stale_after=options.stale_after,
            poll_interval=options.poll_interval,
            renotify_after=options.renotify_after,
            state_url=Secret(f"sqlite+aiosqlite:///{self._state_dir / 'state.db'}"),
            kps_timeout=10.0,
            kps_max_attempts=3,
            log_level=options.log_level,
        )
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        bot = asyncio.create_task(
            serve(
                settings,
                stop=self._stop,
                handle_signals=False,
                host="127.0.0.1",
                listening=bound.set_result,
            )
        )
        await asyncio.wait(
            {bot, bound}, timeout=_BOT_START_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        if not bound.done():
            if not bot.done():
                bot.cancel()
                with contextlib.suppress(BaseException):
                    await bot
                raise RuntimeError(f"the bot did not listen within {_BOT_START_SECONDS:g} s")
            code = bot.result()  # raises what stopped it: OSError when the port is taken
            raise RuntimeError(f"the bot stopped while starting (exit status {code})")
        self._bot = bot
        self.settings = replace(settings, port=bound.result())
        return bound.result()

    async def _wait_for_bot(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BOT_START_SECONDS
        async with aiohttp.ClientSession() as session:
            while loop.time() < deadline:
                if self._bot is not None and self._bot.done():
                    self._bot.result()  # raises what stopped it
                    raise RuntimeError("the bot stopped while starting")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.bot_url + "/healthz") as answer:
                        if answer.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the bot did not answer {self.bot_url}/healthz in time")

    async def stop(self) -> None:
        """Stop the bot (letting work in flight finish), then the stand-in and the simulator."""
        self._stop.set()
        if self._bot is not None:
            with contextlib.suppress(Exception):
                await self._bot
            self._bot = None
        await self.slack.stop()
        await self.sim.stop()
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def banner(demo: Demo, *, defaulted: bool) -> str:
    """What the terminal shows once everything is up."""
    threshold_ms = (time.time() - demo.options.stale_after.total_seconds()) * 1000
    running = demo.sim.running()
    stale = sum(1 for t in running if t.task_time_ms is not None and t.task_time_ms <= threshold_ms)
    lines = []
    if defaulted:
        lines += ["No .env and no Slack or Huawei Cloud settings found, so this is the demo.", ""]
    lines += exposure_warning(demo)
    lines += [
        "kps-bot demo: the real bot, a KPS simulator and a pretend Slack, all on this machine.",
        *demo.moved,
        "",
        f"  Open the playground:  {demo.url}",
        "",
        f"  bot (HTTP mode)   {demo.bot_url}/slack/events",
        f"  KPS simulator     {demo.sim.url}  (admin API under /_sim/)",
        f"  {len(running)} running tasks, {stale} of them stale; stale notices go to"
        f" #kps-alerts (scanned every {demo.options.poll_interval:g} s)",
        "",
        "Try /kps, /kps tasks web or @kps-bot tasks in #general, and the controls on the left.",
        "To use a real workspace: copy .env.example to .env, fill in the Slack and Huawei Cloud",
        "settings (see the README), then run `make run` again. Ctrl-C stops the demo.",
    ]
    return "\n".join(lines)


def exposure_warning(demo: Demo) -> list[str]:
    """Loud lines when the playground listens beyond loopback (--host), else none."""
    host = demo.options.host
    if is_loopback_bind(host):
        return []
    port = urlsplit(demo.slack.url).port
    wildcard = host in ("", "0.0.0.0", "::")
    where = "on every network interface" if wildcard else "an address others can reach"
    shown = f"[{host}]" if ":" in host else host or "0.0.0.0"
    lines = [
        "!" * 78,
        f"!! WARNING: the playground listens on {shown}:{port}, {where},",
        "!! not only on loopback. Anyone who can reach it can use it with no login: send",
        "!! /kps as you, click buttons, make KPS fail, read every message the bot sent.",
        "!! Leave out --host unless you mean that.",
    ]
    # As IP addresses: a request addressed to a name other than localhost is refused (guard.py).
    addresses = _addresses_of(socket.gethostname() if wildcard else host)
    lines += [f"!! Reachable at http://{_bracketed(a)}:{port}/" for a in addresses]
    if not addresses:
        lines.append(f"!! Reachable at http://<this machine's IP address>:{port}/")
    return [*lines, "!" * 78, ""]


def _addresses_of(name: str) -> list[str]:
    """The non-loopback IP addresses `name` resolves to (best effort: none if it does not)."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        for *_, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
            address = str(sockaddr[0])
            if not is_loopback_bind(address) and address not in found:
                found.append(address)
    return found


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bot demo",
        description="Run the bot against a KPS simulator and a Slack playground in the browser.",
    )
    defaults = DemoOptions()
    parser.add_argument(
        "--port",
        type=int,
        default=defaults.port,
        metavar="N",
        help="TCP port of the playground page, the one to open (default %(default)s; 0: any free"
        " one; a taken port falls back to a free one, and the terminal says which)",
    )
    parser.add_argument(
        "--bot-port",
        type=int,
        default=defaults.bot_port,
        metavar="N",
        help="TCP port the bot's /slack/events listens on, on 127.0.0.1 (default %(default)s;"
        " 0 or taken: a free one)",
    )
    parser.add_argument(
        "--sim-port",
        type=int,
        default=defaults.sim_port,
        metavar="N",
        help="TCP port of the KPS/IAM simulator, on 127.0.0.1 (default %(default)s; 0 or taken:"
        " a free one)",
    )
    parser.add_argument(
        "--host",
        default=defaults.host,
        metavar="ADDRESS",
        help="IP address the playground listens on (default %(default)s, this machine only);"
        " 0.0.0.0 lets anyone on the network use it, with no login",
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="random seed: the same N, the same seeded tasks"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request the bot gets")
    return parser


async def run(options: DemoOptions, *, defaulted: bool = False, out: IO[str] = sys.stdout) -> int:
    """Run the demo until SIGINT or SIGTERM; 0 after a clean stop."""
    configure_logging("text", options.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Demo(options) as demo:
        print(banner(demo, defaulted=defaulted), file=out, flush=True)
        await stop.wait()
        print("stopping the demo…", file=out, flush=True)
    return 0


def main(argv: Sequence[str] = (), *, defaulted: bool = False) -> int:
    """`python -m bot demo [--port N] …`; returns the exit status."""
    args = build_parser().parse_args(list(argv))
    options = DemoOptions(
        host=args.host,
        port=args.port,
        bot_port=args.bot_port,
        sim_port=args.sim_port,
        seed=args.seed,
        log_level="INFO" if args.verbose else "WARNING",
    )
    try:
        return asyncio.run(run(options, defaulted=defaulted))
    except KeyboardInterrupt:  # Ctrl-C before the demo was up
        return 130
    except OSError as exc:
        print(f"the demo could not start: {exc}", file=sys.stderr)
        return 1
