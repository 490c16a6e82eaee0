"""`python -m bot.sandbox.simulator`: the simulator on its own, seeded with realistic tasks."""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys

from bot.sandbox.simulator.server import Simulator
from bot.sandbox.simulator.tasks import seed_tasks


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bot.sandbox.simulator",
        description="Run the KPS/IAM simulator until Ctrl-C or SIGTERM.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="IP address to listen on (default %(default)s, this machine only; the admin API"
        " under /_sim/ has no login)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8081,
        metavar="N",
        help="TCP port (default %(default)s; 0: any free one)",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=37,
        metavar="N",
        help="running tasks to seed (default %(default)s)",
    )
    parser.add_argument("--token", help="a static X-Auth-Token that never expires")
    parser.add_argument("--user", metavar="DOMAIN:USER:PASSWORD", help="an IAM password user")
    parser.add_argument("--aksk", metavar="AK:SK", help="an AK/SK pair for request signing")
    parser.add_argument(
        "--seed", type=int, metavar="N", help="random seed: the same N, the same seeded tasks"
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay added to every KPS answer, in seconds (default %(default)s)",
    )
    parser.add_argument(
        "--token-lifetime",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="how long an IAM token it issues stays valid, in seconds (default %(default)g, a day)",
    )
    parser.add_argument(
        "--project-id",
        default="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        help="the project id KPS paths must carry (default %(default)s)",
    )
    parser.add_argument(
        "--project-name",
        default="cn-north-4",
        metavar="REGION",
        help="the project (region) name IAM scopes tokens to (default %(default)s)",
    )
    return parser


def _build(args: argparse.Namespace) -> Simulator:
    users: dict[tuple[str, str], str] = {}
    if args.user:
        domain, _, rest = args.user.partition(":")
        name, _, password = rest.partition(":")
        if not (domain and name and password):
            raise SystemExit("--user must look like DOMAIN:USER:PASSWORD")
        users[(domain, name)] = password
    aksk: dict[str, str] = {}
    if args.aksk:
        ak, _, sk = args.aksk.partition(":")
        if not (ak and sk):
            raise SystemExit("--aksk must look like AK:SK")
        aksk[ak] = sk
    return Simulator(
        project_id=args.project_id,
        project_name=args.project_name,
        tasks=seed_tasks(args.tasks, rng=random.Random(args.seed)),
        latency=args.latency,
        token_lifetime=args.token_lifetime,
        users=users,
        static_tokens=[args.token] if args.token else [],
        aksk=aksk,
    )


def _banner(sim: Simulator, args: argparse.Namespace) -> str:
    lines = [
        f"KPS/IAM simulator listening on {sim.url}",
        f"  KPS_ENDPOINT={sim.url}",
        f"  IAM_ENDPOINT={sim.url}",
        f"  HUAWEICLOUD_SDK_PROJECT_ID={sim.project_id}",
        f"  HUAWEICLOUD_REGION={sim.project_name}",
    ]
    # These are the simulator's own throwaway credentials, given on its command line.
    if args.token:
        lines.append(f"  auth: KPS_AUTH_TOKEN={args.token}  (static token, never expires)")
    if args.user:
        domain, name, password = args.user.split(":", 2)
        lines.append(
            f"  auth: HUAWEICLOUD_DOMAIN={domain} HUAWEICLOUD_USERNAME={name} "
            f"HUAWEICLOUD_PASSWORD={password}"
        )
    if args.aksk:
        ak, sk = args.aksk.split(":", 1)
        lines.append(f"  auth: HUAWEICLOUD_SDK_AK={ak} HUAWEICLOUD_SDK_SK={sk}")
    if not (args.token or args.user or args.aksk):
        lines.append("  auth: none configured, every request is accepted")
    lines.append(f"{len(sim.running())} running tasks; admin API under {sim.url}/_sim/")
    lines.append("Ctrl-C or SIGTERM stops it.")
    return "\n".join(lines)


async def _serve(args: argparse.Namespace) -> None:
    sim = _build(args)
    await sim.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(_banner(sim, args), flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator standalone with seeded tasks; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # e.g. the port is taken
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0
