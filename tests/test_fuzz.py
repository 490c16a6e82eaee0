"""Fuzzing outside input: command text, button values, Slack payloads, KPS bodies, settings.

Each parser must turn anything into a typed value or its own error, never another exception;
the bot must answer any signed payload without a 5xx and without showing a traceback. What
hypothesis found is kept below as explicit examples.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.app import Runtime, build_runtime
from bot.blockkit import BadButtonValue
from bot.blocks import (
    ACTION_LIST,
    ACTION_NEXT,
    ACTION_PREVIOUS,
    ACTION_REFRESH,
    ACTION_RETRY,
    ACTION_SHARE,
    PageRef,
)
from bot.config import SECRET_VARIABLES, SETTING_VARIABLES, Settings, SettingsError, load_settings
from bot.errors import KPSError
from bot.intent import MAX_QUERY, ListTasks, ShowHelp, Unknown, parse_command, parse_mention
from bot.kps import KPSClient, RetryPolicy, Snapshot
from bot.notices import ACTION_ACK, ACTION_STALE_LIST, SNOOZE_ACTIONS, NoticeRef
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from bot.secret import Secret
from bot.stale import as_alert
from bot.tasks import Task
from tests.conftest import ALERTS, SIGNING_SECRET, make_settings

FAST = settings(max_examples=150, deadline=None)

# Characters that mean something to mrkdwn, JSON, URLs, regexes or a terminal.
NASTY = '<>&*_~`|^!@#"\\\n\t\r\x00\x01\x1b\x7f\u0085\u2028\u202e\ufeff名🙂é%+=?/ '
text = st.one_of(st.text(max_size=60), st.text(alphabet=NASTY + "ab", max_size=60))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


# --- slash-command and mention text ------------------------------------------------------------


@FAST
@given(
    raw=st.one_of(
        st.none(),
        text,
        st.builds(
            "{} {}".format,
            st.sampled_from(
                ["tasks", "TASKS", "ls", "list", "task", "help", "--help", "?", "-h", "  tasks  "]
            ),
            text,
        ),
    )
)
@example(raw="tasks " + "x" * (MAX_QUERY + 1))
@example(raw="help me")
@example(raw="\x00tasks\x00 web")
def test_command_text_always_gives_an_intent(raw: str | None) -> None:
    intent = parse_command(raw)
    assert isinstance(intent, ListTasks | ShowHelp | Unknown)
    if isinstance(intent, ListTasks):
        assert len(intent.query) <= MAX_QUERY
        assert intent.query == intent.query.strip() and "\x00" not in intent.query
        # Asking again for what was understood gives the same answer.
        assert parse_command(f"tasks {intent.query}") == intent
    if isinstance(intent, Unknown):
        assert intent.text and "\x00" not in intent.text


@FAST
@given(
    parts=st.lists(
        st.one_of(text, st.sampled_from(["<@U0BOT>", "<@U0BOT|kps-bot>", "<@W123>", "tasks"])),
        max_size=6,
    )
)
@example(parts=["<@U<@U1>1>", "tasks"])
@example(parts=["<@U0BOT>"])
def test_mention_text_always_gives_an_intent_without_mentions(parts: list[str]) -> None:
    intent = parse_mention(" ".join(parts))
    assert isinstance(intent, ListTasks | ShowHelp | Unknown)
    if isinstance(intent, ListTasks):
        assert "<@U0BOT" not in intent.query and "<@W123>" not in intent.query


# --- button values -----------------------------------------------------------------------------

ref_keys = st.dictionaries(
    st.sampled_from(["v", "o", "n", "q", "s", "h", "r", "x"]),
    st.one_of(json_values, st.integers(min_value=0, max_value=50), st.just(1)),
    max_size=6,
)
button_values = st.one_of(
    st.none(),
    json_values,
    text,
    ref_keys.map(json.dumps),
    st.builds(
        lambda n, h, o: json.dumps({"v": 1, "n": n, "h": h, "o": o}),
        json_values,
        json_values,
        json_values,
    ),
)


@FAST
@given(value=button_values)
@example(value='{"v":1,"n":1,"h":true}')
@example(value='{"v":1,"n":1e999}')
@example(value='{"v":1,"n":' + "9" * 5000 + "}")
@example(value="[" * 5000)
@example(value='{"v":1,"n":1,"r":1.0}')
def test_notice_button_values_parse_or_refuse(value: Any) -> None:
    try:
        ref = NoticeRef.parse(value)
    except BadButtonValue as error:
        assert str(error)
        return
    encoded = ref.encode()
    assert len(encoded) <= 2000
    assert NoticeRef.parse(encoded) == ref


@FAST
@given(value=button_values)
@example(value='{"v":1,"o":0,"n":10,"q":"\\ud800"}')
@example(value='{"v":1,"o":0,"n":10,"o":5}')
@example(value='{"v":true,"o":0,"n":10}')
def test_page_button_values_parse_or_refuse(value: Any) -> None:
    try:
        ref = PageRef.parse(value)
    except BadButtonValue as error:
        assert str(error)
        return
    encoded = ref.encode()
    assert len(encoded) <= 2000
    assert PageRef.parse(encoded) == ref


# --- KPS bodies --------------------------------------------------------------------------------

field_values = st.one_of(
    json_values,
    st.uuids().map(str),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(["1e999", "nan", "-1", "", "1714000000000", "١٢٣", "0x10", " 5 "]),
)
task_items = st.fixed_dictionaries(
    {},
    optional={
        key: field_values
        for key in (
            "task_id",
            "operate_type",
            "task_time",
            "server_name",
            "server_id",
            "keypair_name",
            "task_error_code",
            "task_error_msg",
            "task_status",
        )
    },
)
page_bodies = st.fixed_dictionaries(
    {},
    optional={
        "total": st.one_of(st.integers(min_value=-3, max_value=10**20), json_values),
        "tasks": st.one_of(st.lists(task_items, max_size=4), json_values),
        "error_code": field_values,
        "error_msg": field_values,
    },
)
bodies = st.one_of(
    page_bodies.map(json.dumps),
    task_items.map(json.dumps),
    json_values.map(json.dumps),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["", "null", "<html>502</html>", '{"total": 1, "tasks": [{}]', "NaN"]),
)
statuses = st.one_of(st.just(200), st.sampled_from([201, 204, 301, 400, 401, 404, 429, 500, 503]))
retry_after = st.one_of(
    st.none(),
    text,
    st.sampled_from(["soon", "nan", "inf", "-1", "1e400", "Mon, 99 Xyz 2020", "0"]),
)


async def _no_sleep(_: float) -> None:
    return None


def kps_answering(status: int, body: str, retry_after: str | None) -> Callable[[], KPSClient]:
    """A KPS client whose every request gets this answer (two attempts, no real waiting)."""

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after.encode("ascii", "replace").decode()
        return httpx.Response(
            status, content=body.encode("utf-8", "surrogatepass"), headers=headers
        )

    def make() -> KPSClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        return KPSClient(
            http,
            endpoint="http://kps.test",
            project_id="p",
            retry=RetryPolicy(attempts=2),
            sleep=_no_sleep,
        )

    return make


@FAST
@given(status=statuses, body=bodies, retry_after=retry_after)
# Found by this fuzz: a Retry-After that is neither seconds nor an HTTP date raised ValueError
# out of the client instead of being ignored (bot/retryafter.py parse_retry_after).
@example(status=503, body="{}", retry_after="soon")
@example(status=429, body="{}", retry_after="Mon, 99 Xyz 2020")
@example(
    status=200,
    body='{"total": 1, "tasks": [{"task_id": "t", "task_time": "1e999"}]}',
    retry_after=None,
)
@example(
    status=200,
    body='{"total": 1, "tasks": [{"task_id": "t", "task_time": "nan"}]}',
    retry_after=None,
)
@example(
    status=200,
    body='{"total": 2, "tasks": [{"task_id": "t", "task_time": -1e20}]}',
    retry_after=None,
)
async def test_kps_bodies_give_typed_values_or_kps_errors(
    status: int, body: str, retry_after: str | None
) -> None:
    client = kps_answering(status, body, retry_after)()
    calls: list[Callable[[], Any]] = [
        client.list_running_tasks,
        client.list_failed_tasks,
        lambda: client.get_task_status("7f1c0a8e-0000-4000-8000-000000000001"),
        client.walk_running_tasks,
    ]
    for call in calls:
        try:
            result = await call()
        except KPSError as error:
            assert str(error)  # shown to users: must say something
            continue
        if isinstance(result, Snapshot):
            assert all(isinstance(t, Task) for t in result.tasks)
        else:
            assert result is not None


def test_a_retry_after_of_nan_falls_back_to_backoff() -> None:
    """Found by this fuzz: "nan" parsed as a float, and asyncio.sleep(nan) does not wait."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                503, json={"error_code": "KPS.0503"}, headers={"Retry-After": "nan"}
            )

        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            client = KPSClient(
                http,
                endpoint="http://kps.test",
                project_id="p",
                retry=RetryPolicy(attempts=2, base_delay=1.0),
                sleep=sleep,
                jitter=lambda: 0.5,
            )
            with pytest.raises(KPSError):
                await client.list_running_tasks()

    asyncio.run(run())
    assert waits == [0.5]  # the backoff (base 1 s × jitter 0.5), not nan


# --- the settings loader -----------------------------------------------------------------------

SECRET_MARK = "s3cr3t"
secret_values = st.builds(
    lambda prefix, rest: f"{prefix}{SECRET_MARK}{rest}",
    st.sampled_from(["", "xoxb-", "xapp-", "MII", "postgresql+asyncpg://u:"]),
    st.text(alphabet="abcXYZ019-_.:/@", min_size=1, max_size=12),
)
plain_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "xoxb-1-2",
            "xapp-1-2",
            "https://kms.cn-north-4.myhuaweicloud.com",
            "http://127.0.0.1:1",
            "http://user:pw@host",
            "https://x?y=1",
            "cn-north-4",
            "C0ALERTS",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "30",
            "0",
            "1.5",
            "1e3",
            "-1",
            "99999999999999999999",
            "json",
            "DEBUG",
            "sqlite+aiosqlite:///x.db",
            "postgresql+asyncpg://h:notanumber/db",
            "postgres://u@h/db",
            "://",
        ]
    ),
).filter(lambda v: SECRET_MARK not in v)


@st.composite
def environments(draw: st.DrawFn) -> dict[str, str]:
    """Env maps over the bot's variables: secrets marked, others plain or copies of a secret."""
    env: dict[str, str] = {}
    secrets_given: list[str] = []
    for name in draw(st.lists(st.sampled_from(SECRET_VARIABLES), unique=True)):
        env[name] = draw(secret_values)
        secrets_given.append(env[name])
    others = [n for n in SETTING_VARIABLES if n not in SECRET_VARIABLES] + ["UNRELATED"]
    for name in draw(st.lists(st.sampled_from(others), unique=True)):
        pasted = st.sampled_from(secrets_given) if secrets_given else plain_values
        env[name] = draw(st.one_of(plain_values, pasted))
    return env


@FAST
@given(env=environments())
@example(env={"STATE_URL": "postgresql+asyncpg://u:s3cr3t@h:notaport/db"})
@example(env={"KPS_ENDPOINT": "https://s3cr3t@kms.example"})
@example(env={"SLACK_BOT_TOKEN": "s3cr3tX", "HUAWEICLOUD_REGION": "s3cr3tX"})
def test_settings_loader_raises_only_settings_error_and_never_echoes_a_secret(
    env: dict[str, str],
) -> None:
    try:
        loaded = load_settings(env)
    except SettingsError as error:
        said = str(error) + repr(error) + " ".join(error.problems)
        assert error.problems
        assert SECRET_MARK not in said, said
        return
    assert isinstance(loaded, Settings)
    assert SECRET_MARK not in repr(loaded)


# --- Slack payloads through the running app ----------------------------------------------------

_MISSING = object()
ACTION_IDS = [
    ACTION_NEXT,
    ACTION_PREVIOUS,
    ACTION_REFRESH,
    ACTION_RETRY,
    ACTION_SHARE,
    ACTION_LIST,
    ACTION_ACK,
    ACTION_STALE_LIST,
    *SNOOZE_ACTIONS,
    "unknown_action",
]


def _drop_missing(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not _MISSING}


good_values = st.one_of(
    st.builds(
        lambda o, q: PageRef(offset=o, page_size=10, query=q).encode(),
        st.integers(min_value=0, max_value=60),
        st.text(max_size=20),
    ),
    st.builds(
        lambda h, o: NoticeRef(1, hours=h, offset=o).encode(),
        st.sampled_from([0, 1, 4, 24]),
        st.integers(min_value=0, max_value=60),
    ),
    st.builds(lambda n: NoticeRef(n).encode(), st.integers(min_value=1, max_value=2**31 - 1)),
)


@st.composite
def payloads(draw: st.DrawFn, *, well_formed: bool) -> tuple[str, str]:
    """(body, content type) of a slash command, a button click or an event, as Slack sends.

    well_formed: every field Slack always sends is there with its type; values are arbitrary.
    Otherwise fields go missing and take other types too.
    """
    kind = draw(st.sampled_from(["command", "action", "mention", "home"]))
    odd: st.SearchStrategy[Any] = (
        st.just(_MISSING) if well_formed else st.one_of(st.just(_MISSING), json_values)
    )
    # Slack user ids are U… or W… (Enterprise Grid); anything goes in a malformed payload.
    valid_ids = st.from_regex(r"[UW][A-Z0-9]{2,10}", fullmatch=True)
    ids = valid_ids if well_formed else st.one_of(valid_ids, text)
    # Bolt reads `user` and `channel` before any listener runs and assumes a string or an
    # object there (slack_bolt/request/internals.py); other types crash Bolt, not the bot.
    bolt_read: st.SearchStrategy[Any] = st.one_of(
        st.just(_MISSING),
        text,
        st.lists(json_scalars, max_size=2),
        st.dictionaries(st.sampled_from(["id", "name"]), json_scalars, max_size=2),
    )
    # Slack sends a response_url with every command and message button; only a Home tab button
    # has none. (When a listener fails right after its ack, Bolt waits out its 3 s ack timeout
    # and answers 404: payloads that fail that way would make this fuzz slow, not find more.)
    response_url = st.sampled_from(["{url}", "{url}", "not a url", ""])
    if kind == "command":
        form = _drop_missing(
            {
                "command": "/kps",
                "text": draw(text),
                "user_id": draw(ids),
                "channel_id": draw(ids),
                "team_id": "T0TEST",
                "response_url": draw(response_url),
                "trigger_id": "1.2.3",
            }
        )
        return urlencode(form), "application/x-www-form-urlencoded"
    if kind == "action":
        action = {
            "type": "button",
            "action_id": draw(st.sampled_from(ACTION_IDS)),
            "block_id": "b",
            "value": draw(st.one_of(good_values, text, button_values.map(str))),
            "action_ts": "1.0",
        }
        if not well_formed and draw(st.booleans()):
            action["value"] = draw(odd)
            if action["value"] is _MISSING:
                del action["value"]
        user = draw(st.builds(lambda i: {"id": i}, ids) if well_formed else bolt_read)
        container = {
            "type": "message",
            "message_ts": draw(st.sampled_from(["1.0", "9.9", ""])),
            "channel_id": draw(st.sampled_from(["C0GENERAL", ALERTS, "C0NONE"])),
            "is_ephemeral": draw(st.booleans()),
        }
        payload = _drop_missing(
            {
                "type": "block_actions",
                "team": {"id": "T0TEST"},
                "user": user,
                "api_app_id": "A0KPS",
                "container": container if well_formed else draw(st.one_of(st.just(container), odd)),
                # Bolt itself reads actions[0] before any listener runs (an empty list is a 500
                # from Bolt), and Slack always sends one action: only its fields vary.
                "actions": [action],
                "response_url": _MISSING
                if action["action_id"] == ACTION_LIST
                else draw(response_url),
            }
        )
        return urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded"
    event: dict[str, Any] = {"type": "app_mention" if kind == "mention" else "app_home_opened"}
    if kind == "mention":
        event.update(
            text=draw(text),
            user=draw(ids),
            channel=draw(st.sampled_from(["C0GENERAL", ALERTS])),
            ts=f"{draw(st.integers(min_value=1, max_value=2**40))}.000100",
        )
        if draw(st.booleans()):
            event["thread_ts"] = "1.000001"
    else:
        event.update(user=draw(ids), tab=draw(st.sampled_from(["home", "messages"])))
    if not well_formed:
        for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=2)):
            value = draw(bolt_read if key in ("user", "channel") else odd)
            if value is _MISSING:
                event.pop(key, None)
            else:
                event[key] = value
    body = {
        "type": "event_callback",
        "team_id": "T0TEST",
        "api_app_id": "A0KPS",
        "event": event,
        "event_id": f"Ev{draw(st.integers(min_value=0, max_value=10**12))}",
        "event_time": int(time.time()),
    }
    return json.dumps(body), "application/json"


class ErrorRecords(logging.Handler):
    """Keeps the ERROR records (the app's error hook logs every unhandled listener error)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
async def runtime(sim: Simulator, slack: FakeSlack, state_url: str) -> AsyncIterator[Runtime]:
    """The bot's runtime (app, clients, store) wired to the simulator and stand-in; no watcher
    loop, so nothing reaches Slack but what the fuzzed requests cause. Notice 1 exists."""
    settings = make_settings(sim, slack, stale_channel_id=ALERTS, state_url=Secret(state_url))
    built = build_runtime(settings)
    assert built.store is not None
    await built.store.migrate()
    now = datetime.now(UTC)
    tasks = [
        as_alert(Task(f"task-{i}", "RUNNING_RESET", now, f"web-{i}", "s", "kp"), now=now)
        for i in range(25)
    ]
    await built.store.announce(channel=ALERTS, now=now, tasks=tasks)
    yield built
    built.watcher = None  # never started
    await built.aclose()


async def dispatch(runtime: Runtime, slack: FakeSlack, body: str, content_type: str) -> Any:
    """Sign and dispatch one request; wait for the listener Bolt runs after the ack."""
    body = body.replace("%7Burl%7D", slack.response_url("fuzz")).replace(
        "{url}", slack.response_url("fuzz")
    )
    stamp = str(int(time.time()))
    signature = (
        SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=stamp, body=body) or ""
    )
    headers: dict[str, str | Sequence[str]] = {
        "content-type": content_type,
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": signature,
    }
    before = asyncio.all_tasks()
    response = await runtime.app.async_dispatch(AsyncBoltRequest(body=body, headers=headers))
    # Bolt runs the listener in a task of its own after the ack; the simulator's and the
    # stand-in's connection handlers start tasks too, which live on with their connections.
    started = {t for t in asyncio.all_tasks() - before if _from_bolt(t)}
    if started:
        _, late = await asyncio.wait(started, timeout=15)
        assert not late, "a listener did not finish within 15 s"
    return response


def _from_bolt(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "slack_bolt" in code.co_filename


def shown_to_users(slack: FakeSlack, since: int) -> str:
    return json.dumps([c.args for c in slack.calls[since:]], ensure_ascii=False)


async def check_answer(
    runtime: Runtime, slack: FakeSlack, body: str, content_type: str, *, strict: bool
) -> None:
    errors = ErrorRecords()
    root = logging.getLogger()
    root.addHandler(errors)
    since = len(slack.calls)
    try:
        response = await dispatch(runtime, slack, body, content_type)
    finally:
        root.removeHandler(errors)
    assert response.status < 500, (response.status, response.body)
    said = shown_to_users(slack, since)
    assert "Traceback" not in said and 'File "' not in said
    if strict:
        assert not errors.records, [
            (r.getMessage(), r.exc_info[1] if r.exc_info else None) for r in errors.records
        ]


FUZZ_APP = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ_APP
@given(request=payloads(well_formed=True))
async def test_well_formed_payloads_are_answered_without_an_unhandled_error(
    runtime: Runtime, slack: FakeSlack, request: tuple[str, str]
) -> None:
    await check_answer(runtime, slack, *request, strict=True)


@FUZZ_APP
@given(request=payloads(well_formed=False))
async def test_any_signed_payload_is_answered_without_a_5xx_or_a_shown_traceback(
    runtime: Runtime, slack: FakeSlack, request: tuple[str, str]
) -> None:
    await check_answer(runtime, slack, *request, strict=False)


async def test_an_action_payload_whose_user_is_a_list_is_answered(
    runtime: Runtime, slack: FakeSlack
) -> None:
    """Found by this fuzz: the request-logging middleware read `user` as an object and failed
    with AttributeError before any listener ran, so Bolt answered 500 (bot/app.py _describe)."""
    payload = {
        "type": "block_actions",
        "team": {"id": "T0TEST"},
        "user": ["U0ALICE"],
        "api_app_id": "A0KPS",
        "container": {"type": "message", "message_ts": "1.0", "channel_id": "C0GENERAL"},
        "actions": [{"type": "button", "action_id": ACTION_NEXT, "value": PageRef(10).encode()}],
        "response_url": "{url}",
    }
    body = urlencode({"payload": json.dumps(payload)})
    await check_answer(runtime, slack, body, "application/x-www-form-urlencoded", strict=True)
    (page,) = [c for c in slack.calls if c.method == "response_url"]
    assert "11–20 of 37" in json.dumps(page.args["blocks"], ensure_ascii=False)
