"""Logging: one text or JSON line per record, the correlation id, and redaction of secrets."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import re
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.kps import KPSClient
from bot.logs import (
    _PATTERNS,
    REDACTED,
    Redactor,
    configure_logging,
    correlation_id,
    new_correlation_id,
    redact,
    register_secret,
)
from bot.sandbox.simulator import Fault, Simulator
from tests.conftest import PROJECT

TEXT_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<level>[A-Z]+) (?P<logger>\S+)"
    r"(?: \[(?P<cid>[0-9a-f]+)\])? (?P<message>.*)"
)

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """Configure logging into a StringIO; restore the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    httpx_level = logging.getLogger("httpx").level

    def setup(fmt: str = "text", level: str = "INFO") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(fmt, level, stream)
        return stream

    yield setup
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(httpx_level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def in_new_context(function: Callable[[], None]) -> None:
    """Run without leaking a correlation id into other tests."""
    contextvars.copy_context().run(function)


log = logging.getLogger("tests.logs")


def test_text_line_shape(configure: Configure) -> None:
    stream = configure("text")

    log.info("scanned %d running tasks", 3)

    (line,) = lines(stream)
    match = TEXT_LINE.fullmatch(line)
    assert match, line
    assert match["level"] == "INFO"
    assert match["logger"] == "tests.logs"
    assert match["cid"] is None
    assert match["message"] == "scanned 3 running tasks"


def test_json_line_shape_with_extras(configure: Configure) -> None:
    stream = configure("json")

    log.warning("KPS slow", extra={"elapsed_ms": 1234, "tasks": ["t1", "t2"], "client": object()})

    (line,) = lines(stream)
    record = json.loads(line)
    assert record.pop("time").endswith("Z")
    assert record == {
        "level": "WARNING",
        "logger": "tests.logs",
        "message": "KPS slow",
        "elapsed_ms": 1234,
        "tasks": ["t1", "t2"],
    }  # the object() extra is not JSON-safe, so it is left out


def test_level_filters_records(configure: Configure) -> None:
    stream = configure("text", "WARNING")

    log.info("quiet")
    log.error("loud")

    assert [TEXT_LINE.fullmatch(line)["message"] for line in lines(stream)] == ["loud"]  # type: ignore[index]


def test_reconfiguring_replaces_the_handler(configure: Configure) -> None:
    first = configure("text")
    second = configure("json")

    log.info("once")

    assert lines(first) == []
    assert len(lines(second)) == 1


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "INFO", io.StringIO())
    with pytest.raises(ValueError, match="log level"):
        configure_logging("text", "LOUD", io.StringIO())


def test_correlation_id_on_every_line_in_its_context(configure: Configure) -> None:
    text = configure("text")
    seen: list[str] = []

    def handle_request() -> None:
        seen.append(new_correlation_id())
        log.info("first")
        log.info("second")

    in_new_context(handle_request)
    log.info("outside")

    cids = [TEXT_LINE.fullmatch(line)["cid"] for line in lines(text)]  # type: ignore[index]
    assert re.fullmatch(r"[0-9a-f]{8}", seen[0])
    assert cids == [seen[0], seen[0], None]


def test_correlation_id_in_json(configure: Configure) -> None:
    stream = configure("json")

    def scan() -> None:
        cid = new_correlation_id()
        log.info("scan")
        assert json.loads(lines(stream)[-1])["correlation_id"] == cid

    in_new_context(scan)
    log.info("no scan")

    assert "correlation_id" not in json.loads(lines(stream)[-1])


async def test_concurrent_tasks_keep_their_own_correlation_ids(configure: Configure) -> None:
    stream = configure("json")

    async def request(name: str) -> str:
        cid = new_correlation_id()
        await asyncio.sleep(0)
        log.info(name)
        return cid

    cids = await asyncio.gather(request("a"), request("b"))

    by_message = {r["message"]: r["correlation_id"] for r in map(json.loads, lines(stream))}
    assert by_message == {"a": cids[0], "b": cids[1]}
    assert cids[0] != cids[1]
    assert correlation_id.get() is None  # tasks ran in copies of this context


SECRET_MESSAGES = [
    ("slack bot token xoxb-1234-5678-AbCdEfGh", "xoxb-1234-5678-AbCdEfGh"),
    ("user token xoxp-1-2-3-ZZZ in text", "xoxp-1-2-3-ZZZ"),
    ("refresh xoxe.xoxp-1-RefreshTok", "RefreshTok"),
    ("app token xapp-1-A0-123-abcdef", "xapp-1-A0-123-abcdef"),
    ("headers X-Auth-Token: MIIBauthTOKEN+/= sent", "MIIBauthTOKEN+/="),
    ("{'X-Subject-Token': 'MIISubjectTOKEN', 'Content-Type': 'json'}", "MIISubjectTOKEN"),
    ('{"x-security-token": "TempSecurityTOKEN"}', "TempSecurityTOKEN"),
    (
        "Authorization: SDK-HMAC-SHA256 Access=AKID, SignedHeaders=host;x-sdk-date, "
        "Signature=7be6668032f70418fcc22abc52071e57",
        "7be6668032f70418fcc22abc52071e57",
    ),
    ("Authorization: Bearer opaqueBEARER", "opaqueBEARER"),
    ("login password=hunter2hunter2 ok", "hunter2hunter2"),
    ('{"user": {"name": "u", "password": "quoted pass word"}}', "quoted pass word"),
    ("client_secret: 'sEcReT-value'", "sEcReT-value"),
    ("db postgresql+asyncpg://kps:dbPASS@db:5432/kps", "dbPASS"),
    # Issue 10 item 9: headers as httpcore logs them at DEBUG, (name, value) byte pairs.
    ("[(b'X-Subject-Token', b'MIIpairTOKEN-_'), (b'Content-Type', b'json')]", "MIIpairTOKEN"),
    ("[(b'x-auth-token', b'lowerPAIRtoken')]", "lowerPAIRtoken"),
    ('[("X-Security-Token", "TempPairTOKEN")]', "TempPairTOKEN"),
    ("[(b'Authorization', b'Basic dXNlcjpwYXNzd29yZA==')]", "dXNlcjpwYXNzd29yZA=="),
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ("authorization=rawAUTHvalue", "rawAUTHvalue"),
    ("legacy workspace token xoxa-2-LegacyTOK", "xoxa-2-LegacyTOK"),
    ("refresh xoxr-1-RefreshTOK", "xoxr-1-RefreshTOK"),
    ("IAM said: bad request echoing MII" + "A1b2+/" * 10 + " back", "A1b2+/A1b2"),
]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(("message", "secret"), SECRET_MESSAGES)
def test_secrets_in_messages_are_redacted(
    configure: Configure, fmt: str, message: str, secret: str
) -> None:
    stream = configure(fmt)

    log.info("request: %s", message)

    output = stream.getvalue()
    assert secret not in output
    assert REDACTED in output
    assert "request: " in output


def test_redaction_keeps_what_is_not_secret(configure: Configure) -> None:
    stream = configure("text")

    log.info(
        "Authorization: SDK-HMAC-SHA256 Access=AKID, SignedHeaders=host;x-sdk-date, "
        "Signature=abcdef0123456789 for project 0123abcd"
    )

    message = TEXT_LINE.fullmatch(lines(stream)[0])["message"]  # type: ignore[index]
    assert message == (
        "Authorization: SDK-HMAC-SHA256 Access=AKID, SignedHeaders=host;x-sdk-date, "
        f"Signature={REDACTED} for project 0123abcd"
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_redacted_and_kept_on_one_line(configure: Configure, fmt: str) -> None:
    stream = configure(fmt)
    token = "xoxb-999-888-TracebackTOKEN"

    try:
        raise RuntimeError(f"Slack refused {token} with password=traceback-pass")
    except RuntimeError:
        log.exception("listener failed")

    output = stream.getvalue()
    assert token not in output
    assert "traceback-pass" not in output
    (line,) = lines(stream)
    if fmt == "json":
        exc = json.loads(line)["exc"]
        assert exc.startswith("Traceback (most recent call last):")
        assert exc.endswith(f"RuntimeError: Slack refused {REDACTED} with password={REDACTED}")
    else:
        assert "listener failed | Traceback (most recent call last):\\n" in line
        assert line.endswith(f"RuntimeError: Slack refused {REDACTED} with password={REDACTED}")


def test_registered_secrets_are_redacted_in_any_form(configure: Configure) -> None:
    stream = configure("json")
    secret = f"plain {secrets.token_hex(8)}/&"
    register_secret(secret)

    log.info("got %s", secret)
    log.info("url-encoded %s", "x=" + quote(secret, safe="") + "&y=1")
    try:
        raise ValueError(secret)
    except ValueError:
        log.exception("failed")
    log.info("extra", extra={"detail": {"note": f"has {secret} inside"}})

    output = stream.getvalue()
    assert secret not in output
    assert secrets_fragment(secret) not in output
    records = [json.loads(line) for line in lines(stream)]
    assert records[0]["message"] == f"got {REDACTED}"
    assert records[1]["message"] == f"url-encoded x={REDACTED}&y=1"
    assert records[2]["exc"].endswith(f"ValueError: {REDACTED}")
    assert records[3]["detail"] == {"note": f"has {REDACTED} inside"}


def test_registered_secret_is_redacted_as_a_logged_bytes_header(configure: Configure) -> None:
    stream = configure("text")
    secret = f"pä'ss-{secrets.token_hex(6)}"
    register_secret(secret)

    log.info("headers %s", [(b"X-Custom", secret.encode())])

    output = stream.getvalue()
    assert secret.split("-")[1] not in output
    assert f"[(b'X-Custom', b\"{REDACTED}\")]" in output


def secrets_fragment(secret: str) -> str:
    return secret.split(" ")[1].split("/")[0]


def test_extras_under_secret_keys_are_redacted(configure: Configure) -> None:
    stream = configure("json")

    log.info(
        "calling KPS",
        extra={"headers": {"X-Auth-Token": "MIIextraTOKEN", "Accept": "application/json"}},
    )

    record = json.loads(lines(stream)[0])
    assert record["headers"] == {"X-Auth-Token": REDACTED, "Accept": "application/json"}


def test_other_libraries_records_are_redacted_too(configure: Configure) -> None:
    stream = configure("text", "DEBUG")

    logging.getLogger("slack_sdk.web.async_base_client").debug(
        "Sending a request - headers: {'Authorization': '(redacted)', 'token': 'xoxb-11-22-LIBtok'}"
    )

    assert "LIBtok" not in stream.getvalue()
    assert "slack_sdk.web.async_base_client" in stream.getvalue()


def test_mismatched_format_arguments_do_not_raise_or_leak(configure: Configure) -> None:
    stream = configure("text")
    # Handled by our handler alone: pytest's own capture handler fails the test on a bad format.
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    record = log.makeRecord(
        log.name, logging.INFO, __file__, 1, "pair %s %s", ("xoxb-1-2-One",), None
    )

    handler.handle(record)

    output = stream.getvalue()
    assert "xoxb-1-2-One" not in output
    assert "pair %s %s (log arguments did not match the format)" in output


def test_httpx_request_lines_are_quiet_unless_debugging(configure: Configure) -> None:
    info = configure("text", "INFO")
    logging.getLogger("httpx").info('HTTP Request: GET http://kps "HTTP/1.1 200 OK"')
    debug = configure("text", "DEBUG")
    logging.getLogger("httpx").info('HTTP Request: GET http://kps "HTTP/1.1 200 OK"')

    assert lines(info) == []
    assert len(lines(debug)) == 1


async def test_iam_token_from_a_real_login_stays_out_of_debug_logs(configure: Configure) -> None:
    # Issue 10 item 9: httpcore logs every response header at DEBUG, X-Subject-Token included.
    stream = configure("text", "DEBUG")
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "ops-bot", "password": "pw-0", "domain": {"name": "acme"}}
                },
            },
            "scope": {"project": {"id": PROJECT}},
        }
    }
    async with (
        Simulator(project_id=PROJECT, users={("acme", "ops-bot"): "pw-0"}) as sim,
        httpx.AsyncClient() as http,
    ):
        response = await http.post(f"{sim.url}/v3/auth/tokens", json=body)
    token = response.headers["X-Subject-Token"]

    output = stream.getvalue()
    assert response.status_code == 201 and len(token) > 20
    assert token not in output and token[3:23] not in output
    (headers,) = [line for line in lines(stream) if "receive_response_headers.complete" in line]
    assert f"(b'X-Subject-Token', b'{REDACTED}')" in headers
    assert "(b'Content-Type', b'application/json')" in headers  # the rest stays readable


def test_redact_applies_the_log_redaction_and_clips() -> None:
    # Issue 10 item 3: the function the Slack side runs every outgoing string through.
    secret = f"echoed-{secrets.token_hex(8)}"
    register_secret(secret)
    text = f"IAM 400: password={secret} X-Auth-Token: MIItok xoxb-1-2-abc {quote(secret, safe='')}"

    assert redact(text) == (
        f"IAM 400: password={REDACTED} X-Auth-Token: {REDACTED} {REDACTED} {REDACTED}"
    )
    assert redact("plain words", limit=100) == "plain words"
    assert redact("abcdefghij", limit=5) == "abcd…"
    # Redaction first: a secret straddling the limit leaves no fragment behind.
    clipped = redact(f"{'x' * 20}{secret}{'y' * 20}", limit=30)
    assert clipped == f"{'x' * 20}[redacted…"
    assert secret[:8] not in clipped


def test_text_lines_show_extras_as_key_value(configure: Configure) -> None:
    # Issue 10: "listening" had no port, "KPS call failed, retrying" no path or attempt.
    stream = configure("text")

    log.info("listening", extra={"port": 3000, "path": "/slack/events"})
    log.warning(
        "odd",
        extra={
            "why": "connect timed out",
            "ok": True,
            "none": None,
            "ids": ["a b", 2],
            "obj": ValueError("token=objSECRET"),
            "password": "extraPASS",
            "quoted": 'say "hi"',
        },
    )

    first, second = (TEXT_LINE.fullmatch(line)["message"] for line in lines(stream))  # type: ignore[index]
    assert first == "listening port=3000 path=/slack/events"
    assert second == (
        'odd why="connect timed out" ok=true none=null ids=["a b",2]'
        f' obj="token={REDACTED}" password={REDACTED}'
        ' quoted="say \\"hi\\""'
    )


async def test_kps_retry_line_names_path_attempt_wait_and_cause(
    configure: Configure, sim: Simulator, kps_client: KPSClient
) -> None:
    stream = configure("text")
    sim.inject(Fault(kind="status", status=503, times=1))

    await kps_client.list_running_tasks()

    (line,) = [line for line in lines(stream) if "KPS call failed, retrying" in line]
    fields = dict(re.findall(r' (\w+)=("[^"]*"|\S+)', line))
    assert fields["path"].endswith("/running-tasks")
    assert fields["attempt"] == "1"
    assert 0 <= float(fields["wait_s"]) <= 0.05
    assert "503" in fields["error"]


_RULE_PIECES = st.sampled_from(
    [
        "password",
        "PASSWD",
        "paſsword",
        "secret",
        "ſecret",
        "token",
        "toKen",
        "TOKEN",
        "authorization",
        "AUTHORıZATION",
        "Authorİzation",
        "Bearer ",
        "bearer\t",
        "Signature=",
        "X-Auth-Token",
        "x-subject-token",
        "X-Slack-Signature",
        "MII",
        "xoxb-",
        "xapp-",
        "xoxe.xoxp-",
        "://",
        "postgresql+asyncpg://u:",
        "@",
        "=",
        ": ",
        "'",
        '"',
        " ",
        "\n",
        "b'",
        "(b'",
        ", b'",
        "abc",
        "A1/+",
        "-",
        "SDK-HMAC-SHA256",
    ]
)


@given(
    st.lists(st.one_of(_RULE_PIECES, st.text(max_size=8)), max_size=12).map("".join),
)
def test_skipping_rules_by_their_words_never_changes_what_is_redacted(text: str) -> None:
    # The word test is only a shortcut: redact() must equal every rule applied to the text.
    every_rule = text
    for pattern, replacement, _ in _PATTERNS:
        every_rule = pattern.sub(replacement, every_rule)
    assert redact(text) == every_rule


def test_registering_while_another_thread_redacts_never_raises() -> None:
    # aiosqlite logs from its worker thread, so `redact` may run while the event loop registers
    # a renewed IAM token: iterating a set that grows under it raised "Set changed size".
    redactor = Redactor()
    for _ in range(30):
        redactor.register(secrets.token_hex(8))
    failures: list[BaseException] = []
    done = threading.Event()

    def redact_until_done() -> None:
        try:
            while not done.is_set():
                redactor.redact("nothing secret in here at all")
        except BaseException as exc:  # the failure under test, reported to the main thread
            failures.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL back and forth as often as possible
    worker = threading.Thread(target=redact_until_done)
    worker.start()
    try:
        for _ in range(100):
            value = secrets.token_hex(8)
            redactor.register(value)
            redactor.unregister(value)
    finally:
        done.set()
        worker.join()
        sys.setswitchinterval(switch)
    assert failures == []


def test_unregister_undoes_one_registration() -> None:
    redactor = Redactor()
    value = f"shared-{secrets.token_hex(8)}"
    redactor.register(value)
    redactor.register(value)  # say, a static secret that IAM also issued
    redactor.unregister(value)
    assert redactor.redact(f"x {value} y") == f"x {REDACTED} y"
    redactor.unregister(value)
    assert redactor.redact(f"x {value} y") == f"x {value} y"
    redactor.unregister(value)  # one too many: harmless
    assert redactor.redact("plain") == "plain"
