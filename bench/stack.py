"""The processes around the one under test: KPS simulator, Slack stand-in, and the three servers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.procs import PYTHON, Placement, Proc, free_port, start, wait_ready
from bench.variant import FIXES

PROJECT_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
KPS_TOKEN = "bench-static-token"  # noqa: S105 - the simulator's throwaway token
SIGNING_SECRET = "bench-signing-secret"  # noqa: S105 - signs only benchmark requests
SERVERS = ("floor", "before", "bot", "bot+fix", "peer")
# Extra command-line arguments per server kind, for one-off experiments from a script.
EXTRA_ARGS: dict[str, list[str]] = {}


@dataclass
class Stack:
    """A running simulator and stand-in, and whichever server is under test."""

    sim: Proc
    sim_url: str
    slack: Proc
    slack_url: str
    server: Proc | None = None
    server_url: str = ""

    def procs(self) -> list[Proc]:
        """Every process, the server first."""
        return [p for p in (self.server, self.sim, self.slack) if p is not None]

    def stop(self) -> None:
        """Stop them all."""
        for proc in self.procs():
            proc.stop()


def start_environment(
    placement: Placement, log_dir: Path, *, tasks: int, latency: float, tag: str, wait: bool = True
) -> Stack:
    """Start the KPS simulator and the Slack stand-in on the shared CPUs."""
    sim_port, slack_port = free_port(), free_port()
    sim = start(
        f"{tag}-simulator",
        [
            PYTHON,
            "-m",
            "bot.sandbox.simulator",
            "--port",
            str(sim_port),
            "--tasks",
            str(tasks),
            "--token",
            KPS_TOKEN,
            "--latency",
            str(latency),
            "--seed",
            "5",
        ],
        cpus=placement.rest,
        log_dir=log_dir,
    )
    slack = start(
        f"{tag}-fakeslack",
        [PYTHON, "-m", "bot.sandbox.fakeslack", "--port", str(slack_port)],
        cpus=placement.rest,
        log_dir=log_dir,
    )
    stack = Stack(sim, f"http://127.0.0.1:{sim_port}", slack, f"http://127.0.0.1:{slack_port}")
    if wait:
        wait_environment(stack)
    return stack


def wait_environment(stack: Stack) -> None:
    """Wait until the simulator and the stand-in answer; stop everything if one does not."""
    try:
        wait_ready(stack.sim, stack.sim_url + "/_sim/stats", timeout=180)
        wait_ready(stack.slack, stack.slack_url + "/healthz")
    except Exception:
        stack.stop()
        raise


def bot_env(stack: Stack, port: int, state_file: Path) -> dict[str, str]:
    """The environment the bot reads in HTTP mode, pointed at the simulator and the stand-in."""
    return {
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": stack.slack_url + "/api/",
        "PORT": str(port),
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT_ID,
        "KPS_ENDPOINT": stack.sim_url,
        "IAM_ENDPOINT": stack.sim_url,
        "KPS_AUTH_TOKEN": KPS_TOKEN,
        "LOG_LEVEL": "WARNING",
        "STATE_URL": f"sqlite+aiosqlite:///{state_file}",
    }


def start_server(
    kind: str, stack: Stack, placement: Placement, log_dir: Path, tag: str, *, wait: bool = True
) -> None:
    """Start `kind` (one of SERVERS) on the CPUs for the process under test."""
    port = free_port()
    common = [
        "--port",
        str(port),
        "--secret",
        SIGNING_SECRET,
        "--kps-endpoint",
        stack.sim_url,
        "--project-id",
        PROJECT_ID,
        "--token",
        KPS_TOKEN,
    ]
    env: dict[str, str] = {}
    if kind in ("bot", "before"):
        argv = [PYTHON, "-m", "bot" if kind == "bot" else "bench.before"]
        env = bot_env(stack, port, log_dir / f"{tag}-state.db")
    elif kind.startswith("bot+"):
        # bot+fix: every proposed fix; bot+gate+flight: just those (see bench/variant.py).
        named = kind.split("+")[1:]
        fixes = ",".join(FIXES) if named == ["fix"] else ",".join(named)
        argv = [PYTHON, "-m", "bench.variant", "--fixes", fixes]
        env = bot_env(stack, port, log_dir / f"{tag}-state.db")
    elif kind == "floor":
        argv = [PYTHON, "-m", "bench.floor", *common]
    elif kind == "peer":
        argv = [PYTHON, "-m", "bench.peer", *common, "--slack-api-url", stack.slack_url + "/api/"]
    else:
        raise ValueError(f"unknown server {kind!r}")
    # The bot reads .env from its working directory; the log directory has none.
    argv += EXTRA_ARGS.get(kind, [])
    name = f"{tag}-{kind.replace('+', '-')}"
    proc = start(name, argv, cpus=placement.server, log_dir=log_dir, env=env, cwd=log_dir)
    stack.server = proc
    stack.server_url = f"http://127.0.0.1:{port}"
    if wait:
        wait_ready(proc, stack.server_url + "/healthz")


def start_stack(
    kind: str, placement: Placement, log_dir: Path, *, tasks: int, latency: float, tag: str
) -> Stack:
    """Simulator, stand-in and server `kind`, started side by side; returns once all answer."""
    stack = start_environment(placement, log_dir, tasks=tasks, latency=latency, tag=tag, wait=False)
    try:
        if kind == "peer":
            # Bolt's synchronous App calls auth.test while it is built: the stand-in must be up.
            wait_environment(stack)
        start_server(kind, stack, placement, log_dir, tag, wait=False)
        wait_environment(stack)
        assert stack.server is not None
        wait_ready(stack.server, stack.server_url + "/healthz")
    except Exception:
        stack.stop()
        raise
    return stack


def in_flight(stack: Stack) -> int:
    """Work the server still has in progress (bot and floor report it on /healthz), else 0."""
    try:
        body = httpx.get(stack.server_url + "/healthz", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return 0
    return int(body.get("in_flight", 0)) if isinstance(body, dict) else 0


def first_page_ids(stack: Stack, page_size: int = 10) -> list[str]:
    """The task ids the first page shows: KPS lists oldest first, the simulator likewise."""
    params: dict[str, Any] = {"limit": page_size, "offset": 0}
    url = f"{stack.sim_url}/v3/{PROJECT_ID}/running-tasks"
    response = httpx.get(url, params=params, headers={"X-Auth-Token": KPS_TOKEN}, timeout=10)
    response.raise_for_status()
    return [item["task_id"] for item in response.json()["tasks"]]


def kps_requests(stack: Stack) -> int:
    """How many KPS running-tasks requests the simulator has answered."""
    stats = httpx.get(stack.sim_url + "/_sim/stats", timeout=10).json()
    return int(stats["requests"])


def set_latency(stack: Stack, seconds: float) -> None:
    """Change the simulator's per-request latency."""
    httpx.put(stack.sim_url + "/_sim/latency", json={"seconds": seconds}, timeout=10)
