"""The demo without a browser: it starts, serves the page, and signs what it sends the bot."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from bot.__main__ import wants_demo
from bot.sandbox.demo import Demo, DemoOptions, banner, build_parser, demo_tasks
from bot.sandbox.fakeslack import Call
from bot.sandbox.guard import host_name
from tests.standin import wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def demo() -> AsyncIterator[Demo]:
    """The demo on free ports (its watcher posts a notice to #kps-alerts at once)."""
    options = DemoOptions(port=0, bot_port=0, sim_port=0, seed=3, poll_interval=3600.0)
    async with Demo(options) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(url, json=body) as answer:
        data: dict[str, Any] = await answer.json()
        assert answer.status == 200, data
        return data


def test_the_demo_runs_only_when_nothing_is_configured() -> None:
    basics = {"PATH": "/bin", "HOME": "/root", "LOG_LEVEL": "DEBUG"}
    assert wants_demo(basics, dotenv_present=False, interactive=True)
    assert not wants_demo({}, dotenv_present=True, interactive=True)
    assert not wants_demo({"SLACK_BOT_TOKEN": "xoxb-1"}, dotenv_present=False, interactive=True)
    assert not wants_demo(
        {"HUAWEICLOUD_REGION": "cn-north-4"}, dotenv_present=False, interactive=True
    )
    assert not wants_demo({"KPS_AUTH_TOKEN": "t"}, dotenv_present=False, interactive=True)


@pytest.mark.parametrize("marker", ["PORT", "DYNO", "KUBERNETES_SERVICE_HOST"])
def test_the_demo_never_starts_by_itself_on_a_hosting_platform(marker: str) -> None:
    environ = {"PATH": "/bin", "HOME": "/root", marker: "1"}
    assert not wants_demo(environ, dotenv_present=False, interactive=True)


def test_the_demo_never_starts_by_itself_away_from_a_terminal() -> None:
    assert not wants_demo({"PATH": "/bin"}, dotenv_present=False, interactive=False)


@pytest.mark.parametrize(
    "hosted",
    [
        # A Heroku dyno whose config vars were lost: only what the platform sets is left.
        {"PORT": "5000", "DYNO": "web.1", "DATABASE_URL": "postgres://u:p@db:5432/d"},
        # No platform marker at all, but no terminal either (a CI job, a service unit).
        {},
    ],
)
def test_python_m_bot_without_settings_and_without_a_terminal_fails(
    tmp_path: Path, hosted: dict[str, str]
) -> None:
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(hosted, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "kps-bot cannot start" in result.stderr
    assert "SLACK_BOT_TOKEN is required" in result.stderr
    assert "playground" not in result.stdout + result.stderr


def test_the_bot_never_imports_the_sandbox() -> None:
    """Only `python -m bot demo` (bot/__main__.py, inside a function) may load bot.sandbox."""
    found = []
    for path in sorted((ROOT / "bot").rglob("*.py")):
        if (ROOT / "bot" / "sandbox") in path.parents:
            continue
        tree = ast.parse(path.read_text(), str(path))
        lazy = {
            id(node)
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            if not any(name == "bot.sandbox" or name.startswith("bot.sandbox.") for name in names):
                continue
            allowed = path == ROOT / "bot" / "__main__.py" and id(node) in lazy
            if not allowed:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_demo_tasks_are_a_few_dozen_with_stale_ones_and_every_operation() -> None:
    now = time.time()
    tasks = demo_tasks(now=now, rng=random.Random(1))
    stale = [
        t for t in tasks if t.task_time_ms is not None and now * 1000 - t.task_time_ms > 30 * 60_000
    ]
    operations = {t.operate_type.partition("_")[2] for t in tasks}
    assert 30 <= len(tasks) <= 50
    assert 5 <= len(stale) <= 10
    assert operations == {"RESET", "REPLACE", "UNBIND", "BIND"}
    assert any(t.status.startswith("READY_") for t in tasks)
    assert len({t.task_id for t in tasks}) == len(tasks)


async def test_a_taken_port_falls_back_to_a_free_one_and_the_banner_says_so() -> None:
    import socket

    with socket.socket() as a, socket.socket() as b, socket.socket() as c:
        for taken in (a, b, c):
            taken.bind(("127.0.0.1", 0))
            taken.listen()
        page, bot, sim = (s.getsockname()[1] for s in (a, b, c))
        options = DemoOptions(port=page, bot_port=bot, sim_port=sim, poll_interval=3600.0)
        async with Demo(options) as demo:
            assert demo.settings is not None
            got = {
                "the playground": urlsplit(demo.url).port,
                "the bot": demo.settings.port,
                "the KPS simulator": urlsplit(demo.sim.url).port,
            }
            shown = banner(demo, defaulted=False)
            async with aiohttp.ClientSession() as http, http.get(demo.bot_url + "/healthz") as up:
                assert up.status == 200
    assert page not in got.values() and bot not in got.values() and sim not in got.values()
    for (what, port), wanted in zip(got.items(), (page, bot, sim), strict=True):
        [line] = [line for line in shown.splitlines() if f"port {wanted} " in line]
        assert what in line and f"port {port} " in line


async def test_a_free_port_is_kept_and_nothing_is_said() -> None:
    options = DemoOptions(port=0, bot_port=0, sim_port=0, poll_interval=3600.0)
    async with Demo(options) as first:
        assert first.settings is not None
        ports = (urlsplit(first.url).port, first.settings.port, urlsplit(first.sim.url).port)
    assert ports[0] is not None and ports[2] is not None
    wanted = DemoOptions(port=ports[0], bot_port=ports[1], sim_port=ports[2], poll_interval=3600)
    async with Demo(wanted) as demo:
        assert demo.settings is not None
        assert (urlsplit(demo.url).port, demo.settings.port, urlsplit(demo.sim.url).port) == ports
        assert demo.moved == []
        assert "taken" not in banner(demo, defaulted=False)


def test_every_demo_option_says_what_it_is_and_its_unit() -> None:
    helps = {a.dest: a.help or "" for a in build_parser()._actions if a.dest != "help"}
    assert all(helps.values()), helps
    for port in ("port", "bot_port", "sim_port"):
        assert "TCP port" in helps[port] and "default" in helps[port]
    assert "IP address" in helps["host"] and "0.0.0.0" in helps["host"]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LocalHost", "localhost"),
        ("[::1]:3000", "::1"),
        ("[::1]", "::1"),
        ("evil.example:80", "evil.example"),
        ("::1", None),  # IPv6 without brackets
        ("[::1]x", None),
        ("localhost:80x", None),
        ("", None),
        (None, None),
    ],
)
def test_host_names_are_read_as_a_server_would(header: str | None, name: str | None) -> None:
    assert host_name(header) == name


async def test_the_page_and_its_files_are_served(demo: Demo, http: aiohttp.ClientSession) -> None:
    async with http.get(demo.url) as page:
        html = await page.text()
        policy = page.headers["Content-Security-Policy"]
    assert page.status == 200
    assert "<title>kps-bot playground</title>" in html
    assert "script-src 'self'" in policy
    for name, kind in (("app.js", "javascript"), ("render.js", "javascript"), ("style.css", "css")):
        async with http.get(f"{demo.slack.url}/playground/static/{name}") as answer:
            assert answer.status == 200
            assert kind in answer.headers["Content-Type"]
            assert len(await answer.read()) > 1000
    # routes.py sits beside static/: a name that climbs out must not reach it.
    async with http.get(f"{demo.slack.url}/playground/static/..%2Froutes.py") as answer:
        assert answer.status == 404


async def test_a_kps_command_from_the_playground_is_signed_and_answered(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    total = len(demo.sim.running())
    sent = await post(
        http, f"{demo.slack.url}/playground/send", {"channel": "C0GENERAL", "text": "/kps"}
    )
    calls = await wait_for(
        demo.slack,
        "response_url",
        where=lambda c: f"1–10 of {total}" in json.dumps(c.args, ensure_ascii=False),
    )

    assert sent == {"ok": True, "status": 200}  # the bot accepted the signature
    assert calls[0].args["response_type"] == "ephemeral"
    assert demo.playground is not None
    shown = [m for m in demo.playground.timeline.messages.values() if m["ephemeral"]]
    assert len(shown) == 1
    assert shown[0]["channel"] == "C0GENERAL"
    assert shown[0]["command"] == "/kps"
    assert shown[0]["blocks"] == calls[0].args["blocks"]


async def test_next_replaces_the_page_it_was_clicked_on(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    assert demo.playground is not None
    timeline = demo.playground.timeline
    await post(http, f"{demo.slack.url}/playground/send", {"channel": "C0GENERAL", "text": "/kps"})
    await wait_for(demo.slack, "response_url")
    [page] = [m for m in timeline.messages.values() if m["ephemeral"]]
    block, element = locate(page["blocks"], "Next →")

    await post(
        http,
        f"{demo.slack.url}/playground/click",
        {"message_id": page["id"], "block": block, "element": element},
    )
    await wait_for(demo.slack, "response_url", 2)

    assert [m["id"] for m in timeline.messages.values() if m["ephemeral"]] == [page["id"]]
    assert "11–20 of" in json.dumps(timeline.messages[page["id"]]["blocks"], ensure_ascii=False)


async def test_a_mention_posts_the_message_and_the_bot_answers_in_its_thread(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    body = {"channel": "C0GENERAL", "text": "@kps-bot tasks web & <co>"}
    await post(http, f"{demo.slack.url}/playground/send", body)
    [reply] = await wait_for(demo.slack, "chat.postMessage", where=in_general)

    [mine] = demo.slack.messages["C0GENERAL"][:1]
    assert mine["user"] == "U0DEMO"
    assert mine["text"] == "<@U0BOT> tasks web &amp; &lt;co&gt;"  # as Slack escapes typed text
    assert reply.args["thread_ts"] == mine["ts"]
    assert demo.slack.thread("C0GENERAL", mine["ts"])[0]["text"] == reply.args["text"]


async def test_the_home_tab_and_its_button(demo: Demo, http: aiohttp.ClientSession) -> None:
    assert demo.playground is not None
    await post(http, f"{demo.slack.url}/playground/home", {})
    [published] = await wait_for(demo.slack, "views.publish")
    view = demo.playground.timeline.views["U0DEMO"]
    block, element = locate(view["blocks"], "List running tasks")

    await post(
        http,
        f"{demo.slack.url}/playground/click",
        {"view_user": "U0DEMO", "block": block, "element": element},
    )
    [dm] = await wait_for(
        demo.slack, "chat.postMessage", where=lambda c: c.args["channel"] == "U0DEMO"
    )

    assert published.args["user_id"] == "U0DEMO"
    assert dm.result is not None and dm.result["channel"].startswith("D")
    assert dm.result["channel"] == demo.playground.page_config()["dm"]


async def test_the_control_panel_drives_the_simulator(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    base = f"{demo.slack.url}/playground/sim"
    added = (await post(http, f"{base}/add", {"operate_type": "RUNNING_BIND"}))["task"]
    task = demo.sim.find_task(added["task_id"])
    assert task is not None and task.status == "RUNNING_BIND"

    await post(http, f"{base}/age", {"task_id": task.task_id})
    assert task.task_time_ms is not None
    assert 30 * 60_000 < time.time() * 1000 - task.task_time_ms < 33 * 60_000

    await post(http, f"{base}/finish", {"task_id": task.task_id, "failed": True})
    assert task.status == "FAILED_BIND" and task.error_code

    await post(http, f"{base}/kps", {"mode": "failing"})
    await post(http, f"{demo.slack.url}/playground/send", {"channel": "C0GENERAL", "text": "/kps"})
    [failure] = await wait_for(demo.slack, "response_url", timeout=20)
    assert "503" in json.dumps(failure.args)

    await post(http, f"{base}/kps", {"mode": "slow"})
    assert demo.sim.latency > 0
    await post(http, f"{base}/kps", {"mode": "healthy"})
    async with http.get(f"{base}/tasks") as answer:
        listed = await answer.json()
    assert listed["stats"]["faults_pending"] == 0 and listed["stats"]["latency"] == 0
    assert any(t["task_id"] == task.task_id for t in listed["tasks"])


async def test_the_event_stream_starts_with_a_snapshot_and_follows_changes(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{demo.slack.url}/playground/events") as stream:
        first = await next_event(stream)
        await post(
            http, f"{demo.slack.url}/playground/send", {"channel": "C0GENERAL", "text": "/kps"}
        )
        kinds = []
        while "message" not in kinds:
            kinds.append((await next_event(stream))["type"])

    assert first["type"] == "snapshot"
    assert first["config"]["stale_channel"] == "C0ALERTS"
    assert kinds[-1] == "message" and "call" in kinds  # the log entry, then the message


async def test_only_json_is_accepted_and_unknown_commands_are_refused(
    demo: Demo, http: aiohttp.ClientSession
) -> None:
    form = {"channel": "C0GENERAL", "text": "/kps"}
    async with http.post(f"{demo.slack.url}/playground/send", data=form) as answer:
        assert answer.status == 415
    body = {"channel": "C0GENERAL", "text": "/deploy prod"}
    async with http.post(f"{demo.slack.url}/playground/send", json=body) as answer:
        assert answer.status == 400
        assert "/deploy is not a command here" in (await answer.json())["error"]
    assert demo.slack.calls_to("response_url") == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/", None),
        ("GET", "/playground/state", None),
        ("GET", "/playground/events", None),
        ("GET", "/playground/sim/tasks", None),
        ("POST", "/playground/send", {"channel": "C0GENERAL", "text": "/kps"}),
        ("POST", "/playground/home", {}),
        ("POST", "/playground/sim/kps", {"mode": "failing"}),
    ],
)
async def test_the_playground_answers_only_requests_addressed_to_this_machine(
    demo: Demo, http: aiohttp.ClientSession, method: str, path: str, body: Any
) -> None:
    # DNS rebinding: the page's own name resolves to 127.0.0.1, so the browser would let it read
    # the answers; the Host header still names that site.
    headers = {"Host": "kps.rebind.evil.example"}
    url = demo.slack.url + path
    async with http.request(method, url, json=body, headers=headers) as answer:
        assert answer.status == 403
        assert "C0GENERAL" not in await answer.text()
    assert demo.slack.calls_to("response_url") == demo.slack.calls_to("views.publish") == []
    assert demo.sim.stats()["faults_pending"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/playground/home", "{}"),
        ("/playground/send", '{"channel": "C0GENERAL", "text": "@kps-bot tasks"}'),
        ("/playground/click", '{"view_user": "U0DEMO", "block": 0, "element": 0}'),
        ("/playground/sim/kps", '{"mode": "failing"}'),
        ("/playground/sim/add", "{}"),
    ],
)
async def test_a_page_elsewhere_cannot_act_through_the_playground(
    demo: Demo, http: aiohttp.ClientSession, path: str, body: str
) -> None:
    # What a web page on any site may POST to loopback without a preflight: text/plain.
    headers = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example"}
    tasks = len(demo.sim.tasks)
    async with http.post(demo.slack.url + path, data=body, headers=headers) as answer:
        assert answer.status == 415
    assert demo.slack.calls_to("views.publish") == []
    assert demo.slack.messages.get("C0GENERAL", []) == []
    assert demo.sim.stats()["faults_pending"] == 0 and len(demo.sim.tasks) == tasks


async def test_a_loopback_demo_shows_no_warning(demo: Demo) -> None:
    assert "WARNING" not in banner(demo, defaulted=False)


async def test_listening_beyond_loopback_warns_loudly_and_names_the_address() -> None:
    options = DemoOptions(host="0.0.0.0", port=0, bot_port=0, sim_port=0, poll_interval=3600.0)
    async with Demo(options) as demo, aiohttp.ClientSession() as http:
        port = urlsplit(demo.url).port
        shown = banner(demo, defaulted=False)
        # Another address of this machine reaches it now; 127.0.0.2 stands in for a LAN address.
        # Addressed to the address it arrived on, it is answered; a rebinding name is not.
        other = f"http://127.0.0.2:{port}/playground/state"
        async with http.get(other) as direct:
            assert direct.status == 200
        async with http.get(other, headers={"Host": f"evil.example:{port}"}) as rebound:
            assert rebound.status == 403
        # Only the playground is exposed: the simulator and the bot stay on loopback.
        assert urlsplit(demo.sim.url).hostname == "127.0.0.1"
        assert urlsplit(demo.bot_url).hostname == "127.0.0.1"
    [first, *_] = [line for line in shown.splitlines() if "WARNING" in line]
    assert f"0.0.0.0:{port}" in first and "every network interface" in first
    assert "no login" in shown


async def test_python_m_bot_at_a_terminal_with_nothing_configured_starts_the_demo(
    tmp_path: Path,
) -> None:
    # Only the basics of an environment: no Slack, KPS or Huawei Cloud variables, no .env, no
    # hosting platform; stdin and stdout are a terminal (a pseudo-terminal), as for a person.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env["PYTHONPATH"] = str(ROOT)
    leader, follower = os.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=tmp_path, env=env,
            stdin=follower, stdout=follower, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(follower)  # the child holds its own copy; reads end (EIO) when it exits
    terminal = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(terminal), os.fdopen(leader, "rb", buffering=0)
    )
    try:
        lines: list[str] = []
        async with asyncio.timeout(30):
            # The banner's last line; what follows it is only written at the stop.
            while not any("Ctrl-C stops the demo" in line for line in lines):
                line = (await terminal.readline()).decode()
                assert line, f"the demo stopped: {lines}"
                lines.append(line)
        url = next(line for line in lines if "Open the playground" in line).split()[-1]
        async with aiohttp.ClientSession() as http, http.get(url) as page:
            assert page.status == 200
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        transport.close()
    assert "No .env and no Slack or Huawei Cloud settings found" in lines[0]
    assert any(".env.example" in line for line in lines)
    assert code == 0


def in_general(call: Call) -> bool:
    return call.args.get("channel") == "C0GENERAL"


def locate(blocks: list[dict[str, Any]], label: str) -> tuple[int, int]:
    """Where the button labelled `label` is: its block's index and its index in that block."""
    for i, block in enumerate(blocks):
        for j, element in enumerate(block.get("elements") or []):
            if element.get("type") == "button" and element["text"]["text"] == label:
                return i, j
    raise AssertionError(f"no button {label!r}")


async def next_event(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next `data:` event on a server-sent event stream."""
    while True:
        line = (await stream.content.readline()).decode()
        if line.startswith("data: "):
            event: dict[str, Any] = json.loads(line[len("data: ") :])
            return event
