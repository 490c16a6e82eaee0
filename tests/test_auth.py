"""IAM password auth and static tokens, against a loopback IAM + KPS stand-in."""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web

from bot.auth import IamPasswordAuth, StaticTokenAuth
from bot.errors import KPSAPIError, KPSBadResponse, KPSResponseTooLarge
from bot.kps import KPSClient
from bot.logs import REDACTED, redact
from bot.sandbox.simulator import Simulator
from bot.secret import Secret

USERNAME = "ops-bot"
PASSWORD = "Pa55word-that-must-never-show"
DOMAIN = "example-account"
PROJECT = "0123456789abcdef0123456789abcdef"
TOKEN_PREFIX = "MIIsecret-token-"  # every issued token starts with this; it must never be shown
START = 1_800_000_000.0


class FakeClock:
    """Seconds since the epoch, moved by the test; IAM and the bot read the same one."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Cloud:
    """What the stand-in IAM and KPS saw, and how they should behave."""

    clock: FakeClock
    lifetime: float = 24 * 3600.0
    # ok | no-header | bad-body | bad-expiry | no-expiry | bomb | drop | hang | error-500
    iam_mode: str = "ok"
    kps_rejects_all: bool = False
    issued: dict[str, float] = field(default_factory=dict)  # token -> expires_at
    revoked: set[str] = field(default_factory=set)
    iam_requests: int = 0
    kps_tokens: list[str | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # Tokens with +, / and =, as real (base64) IAM tokens have, in runs too short for the
    # MII… shape rule: only the registered value can hide them once escaped.
    base64_tokens: bool = False

    def issued_tokens(self) -> list[str]:
        return list(self.issued)


def _iam_app(cloud: Cloud) -> web.Application:
    async def tokens(request: web.Request) -> web.StreamResponse:
        cloud.iam_requests += 1
        if cloud.iam_mode == "hang":
            await cloud.release.wait()
        if cloud.iam_mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if cloud.iam_mode == "error-500":
            return web.Response(status=500, text="<html><body>bad gateway</body></html>")
        problem = _check_token_request(request, await request.text())
        if problem:
            return web.json_response(
                {"error_code": "IAM.0011", "error_msg": problem, "request_id": "req-bad"},
                status=400,
            )
        body = json.loads(await request.text())
        if body["auth"]["identity"]["password"]["user"]["password"] != PASSWORD:
            # Keystone's shape, as IAM sends it for a wrong password
            # (../shared/research/kps-api.md §3.1).
            return web.json_response(
                {
                    "error": {
                        "code": 401,
                        "message": "The username or password is wrong.",
                        "title": "Unauthorized",
                    }
                },
                status=401,
                headers={"X-Request-Id": "iam-req-401"},
            )
        token = f"{TOKEN_PREFIX}{len(cloud.issued) + 1}"
        if cloud.base64_tokens:
            token = f"MII{len(cloud.issued) + 1}{secrets.token_hex(6)}+{secrets.token_hex(6)}/"
            token += f"{secrets.token_hex(6)}+{secrets.token_hex(6)}=="
        expires_at = cloud.clock() + cloud.lifetime
        cloud.issued[token] = expires_at
        stamp = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        payload = {
            "token": {
                "expires_at": stamp,
                "issued_at": datetime.fromtimestamp(cloud.clock(), UTC).isoformat(),
                "methods": ["password"],
                "project": {"id": PROJECT, "name": "cn-north-4"},
            }
        }
        if cloud.iam_mode == "bad-expiry":
            payload["token"]["expires_at"] = "next Tuesday"
        if cloud.iam_mode == "no-expiry":
            del payload["token"]["expires_at"]
        headers = {} if cloud.iam_mode == "no-header" else {"X-Subject-Token": token}
        if cloud.iam_mode == "bomb":
            # 8 MB of padding after the JSON, 8 KB on the wire.
            body = gzip.compress(json.dumps(payload).encode() + b" " * (8 << 20))
            headers["Content-Encoding"] = "gzip"
            return web.Response(status=201, body=body, headers=headers)
        text = "{not json" if cloud.iam_mode == "bad-body" else json.dumps(payload)
        return web.Response(status=201, text=text, content_type="application/json", headers=headers)

    async def running_tasks(request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token")
        cloud.kps_tokens.append(token)
        valid = (
            token in cloud.issued
            and token not in cloud.revoked
            and cloud.clock() < cloud.issued[token]
            and request.match_info["project"] == PROJECT
            and not cloud.kps_rejects_all
        )
        if not valid:
            return web.json_response(
                {"error_code": "APIG.0307", "error_msg": "The token must be updated."},
                status=401,
            )
        return web.json_response({"total": 0, "tasks": []})

    app = web.Application()
    app.router.add_post("/v3/auth/tokens", tokens)
    app.router.add_get("/v3/{project}/running-tasks", running_tasks)
    return app


def _check_token_request(request: web.Request, text: str) -> str | None:
    """What is wrong with a token request, judged by IAM's documented shape (§4)."""
    if request.query.get("nocatalog") != "true":
        return "nocatalog=true missing"
    if request.headers.get("Content-Type") != "application/json;charset=utf8":
        return "wrong content type"
    try:
        auth = json.loads(text)["auth"]
        user = auth["identity"]["password"]["user"]
        shape_ok = (
            auth["identity"]["methods"] == ["password"]
            and user["name"] == USERNAME
            and user["domain"] == {"name": DOMAIN}
            and isinstance(user["password"], str)
            and auth["scope"] == {"project": {"id": PROJECT}}
        )
    except (ValueError, KeyError, TypeError):
        return "malformed body"
    return None if shape_ok else "unexpected body"


@pytest.fixture
async def cloud() -> AsyncIterator[Cloud]:
    yield Cloud(clock=FakeClock())


@pytest.fixture
async def base_url(cloud: Cloud) -> AsyncIterator[str]:
    runner = web.AppRunner(_iam_app(cloud))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    cloud.release.set()
    await runner.cleanup()


def _auth(
    base_url: str, cloud: Cloud, *, password: str = PASSWORD, margin: float | None = None
) -> IamPasswordAuth:
    return IamPasswordAuth(
        iam_endpoint=base_url + "/",
        username=USERNAME,
        password=Secret(password),
        domain=DOMAIN,
        project_id=PROJECT,
        renew_margin=margin,
        clock=cloud.clock,
    )


def _tasks_path() -> str:
    return f"/v3/{PROJECT}/running-tasks"


async def test_token_is_obtained_once_and_sent(base_url: str, cloud: Cloud) -> None:
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        first = await client.get(_tasks_path())
        second = await client.get(_tasks_path())

    assert (first.status_code, second.status_code) == (200, 200)
    assert cloud.iam_requests == 1
    assert cloud.kps_tokens == [f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}1"]


@pytest.mark.parametrize(
    ("lifetime", "margin", "expected_margin"),
    [
        (24 * 3600.0, None, 3600.0),  # a real token: one hour early
        (1000.0, None, 100.0),  # a short token: 10 % of its lifetime
        (1000.0, 30.0, 30.0),  # an explicit margin wins
    ],
)
async def test_token_is_renewed_ahead_of_expiry(
    base_url: str, cloud: Cloud, lifetime: float, margin: float | None, expected_margin: float
) -> None:
    cloud.lifetime = lifetime
    auth = _auth(base_url, cloud, margin=margin)
    async with httpx.AsyncClient(base_url=base_url, auth=auth) as client:
        await client.get(_tasks_path())
        cloud.clock.now = START + lifetime - expected_margin - 1
        await client.get(_tasks_path())
        before_margin = cloud.iam_requests
        cloud.clock.now = START + lifetime - expected_margin + 1
        response = await client.get(_tasks_path())

    assert before_margin == 1
    assert response.status_code == 200
    assert cloud.iam_requests == 2
    assert cloud.kps_tokens == [f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}2"]


async def test_concurrent_first_calls_share_one_token_request(base_url: str, cloud: Cloud) -> None:
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        responses = await asyncio.gather(*(client.get(_tasks_path()) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert cloud.iam_requests == 1
    assert set(cloud.kps_tokens) == {f"{TOKEN_PREFIX}1"}


async def test_concurrent_calls_with_an_expired_token_share_one_renewal(
    base_url: str, cloud: Cloud
) -> None:
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        await client.get(_tasks_path())
        cloud.clock.now = START + cloud.lifetime + 5
        responses = await asyncio.gather(*(client.get(_tasks_path()) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert cloud.iam_requests == 2
    assert set(cloud.kps_tokens[1:]) == {f"{TOKEN_PREFIX}2"}


async def test_a_401_renews_once_and_resends_once(base_url: str, cloud: Cloud) -> None:
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        await client.get(_tasks_path())
        cloud.revoked.add(f"{TOKEN_PREFIX}1")  # e.g. the password changed at IAM
        response = await client.get(_tasks_path())

    assert response.status_code == 200
    assert cloud.iam_requests == 2
    assert cloud.kps_tokens == [f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}2"]


async def test_a_second_401_is_returned_as_it_is(base_url: str, cloud: Cloud) -> None:
    cloud.kps_rejects_all = True
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        response = await client.get(_tasks_path())

    assert response.status_code == 401
    assert response.json()["error_code"] == "APIG.0307"
    assert cloud.iam_requests == 2  # the first token, then one renewal
    assert cloud.kps_tokens == [f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}2"]


async def test_concurrent_401s_share_one_renewal(base_url: str, cloud: Cloud) -> None:
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        await client.get(_tasks_path())
        cloud.revoked.add(f"{TOKEN_PREFIX}1")
        responses = await asyncio.gather(*(client.get(_tasks_path()) for _ in range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    assert cloud.iam_requests == 2
    assert cloud.issued_tokens() == [f"{TOKEN_PREFIX}1", f"{TOKEN_PREFIX}2"]


async def test_wrong_password_raises_iam_error_without_secrets(base_url: str, cloud: Cloud) -> None:
    wrong = "Wrong-password-also-secret"
    async with httpx.AsyncClient(
        base_url=base_url, auth=_auth(base_url, cloud, password=wrong)
    ) as client:
        with pytest.raises(KPSAPIError) as caught:
            await client.get(_tasks_path())

    error = caught.value
    assert error.service == "IAM"
    assert error.status == 401
    assert error.error_code == "401"
    assert "The username or password is wrong." in error.error_msg
    assert error.request_id == "iam-req-401"
    assert not error.retryable
    assert cloud.kps_tokens == []  # KPS was never called without a token
    for shown in (str(error), repr(error)):
        assert wrong not in shown
        assert "IAM" in str(error)


async def test_iam_server_error_is_an_iam_error(base_url: str, cloud: Cloud) -> None:
    cloud.iam_mode = "error-500"
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        with pytest.raises(KPSAPIError) as caught:
            await client.get(_tasks_path())

    assert caught.value.service == "IAM"
    assert caught.value.status == 500
    assert caught.value.retryable
    assert "<html" not in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "detail"),
    [("no-header", "X-Subject-Token"), ("bad-body", "expires_at")],
)
async def test_unreadable_token_response_is_a_bad_response(
    base_url: str, cloud: Cloud, mode: str, detail: str
) -> None:
    cloud.iam_mode = mode
    auth = _auth(base_url, cloud)
    async with httpx.AsyncClient(base_url=base_url, auth=auth) as client:
        with pytest.raises(KPSBadResponse) as caught:
            await client.get(_tasks_path())
        cloud.iam_mode = "ok"
        recovered = await client.get(_tasks_path())

    assert detail in str(caught.value)
    assert caught.value.status == 201
    assert TOKEN_PREFIX not in str(caught.value) + repr(caught.value)
    assert recovered.status_code == 200  # nothing half-stored, the lock was let go


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("no-header", "the token response has no X-Subject-Token header"),
        ("bad-body", "the token response body is not JSON"),
        ("no-expiry", "the token response has no token.expires_at"),
        ("bad-expiry", "token.expires_at 'next Tuesday' is not an ISO 8601 time"),
    ],
)
async def test_an_unreadable_token_response_names_iam_and_what_was_wrong(
    base_url: str, cloud: Cloud, mode: str, said: str
) -> None:
    # Issue 10, item 12: users read "KPS sent an answer the bot cannot read (HTTP 201)".
    cloud.iam_mode = mode
    async with httpx.AsyncClient(auth=_auth(base_url, cloud), timeout=5) as http:
        kps = KPSClient(http, endpoint=base_url, project_id=PROJECT)
        with pytest.raises(KPSBadResponse) as caught:
            await kps.list_running_tasks()

    error = caught.value
    assert error.service == "IAM" and error.status == 201
    assert str(error).startswith(f"IAM sent a response that could not be read: {said}")
    assert "KPS" not in str(error)
    assert cloud.iam_requests == 1  # not retried: asking again gets the same answer
    assert cloud.kps_tokens == []  # KPS was never asked


async def test_an_iam_gzip_bomb_is_refused_at_the_cap(base_url: str, cloud: Cloud) -> None:
    cloud.iam_mode = "bomb"
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        with pytest.raises(KPSResponseTooLarge) as caught:
            await client.get(_tasks_path())
    assert caught.value.service == "IAM"
    assert str(caught.value).startswith("IAM sent a response that could not be read: the answer")


async def test_transport_errors_propagate_and_release_the_lock(base_url: str, cloud: Cloud) -> None:
    cloud.iam_mode = "drop"
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(_tasks_path())
        cloud.iam_mode = "ok"
        recovered = await asyncio.wait_for(client.get(_tasks_path()), timeout=10)

    assert recovered.status_code == 200


async def test_token_request_uses_the_clients_timeout(base_url: str, cloud: Cloud) -> None:
    cloud.iam_mode = "hang"
    auth = _auth(base_url, cloud)
    async with httpx.AsyncClient(base_url=base_url, auth=auth, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            # Without the client's timeout the token request would wait for ever.
            await asyncio.wait_for(client.get(_tasks_path()), timeout=10)


def test_a_sync_client_is_refused() -> None:
    auth = IamPasswordAuth(
        iam_endpoint="http://127.0.0.1:9",
        username=USERNAME,
        password=Secret(PASSWORD),
        domain=DOMAIN,
        project_id=PROJECT,
    )
    with httpx.Client(auth=auth) as client, pytest.raises(RuntimeError, match="AsyncClient"):
        client.get("http://127.0.0.1:9/")


async def test_repr_shows_no_password_or_token(base_url: str, cloud: Cloud) -> None:
    auth = _auth(base_url, cloud)
    async with httpx.AsyncClient(base_url=base_url, auth=auth) as client:
        await client.get(_tasks_path())

    shown = repr(auth) + str(auth)
    assert PASSWORD not in shown
    assert TOKEN_PREFIX not in shown
    assert USERNAME in shown and PROJECT in shown


async def test_static_token_is_sent(base_url: str, cloud: Cloud) -> None:
    token = f"{TOKEN_PREFIX}static"
    cloud.issued[token] = START + 3600
    auth = StaticTokenAuth(Secret(token))
    async with httpx.AsyncClient(base_url=base_url, auth=auth) as client:
        response = await client.get(_tasks_path())

    assert response.status_code == 200
    assert cloud.kps_tokens == [token]
    assert cloud.iam_requests == 0
    assert token not in repr(auth) + str(auth)


async def test_against_the_simulator() -> None:
    """The same behaviour against the project's full KPS/IAM simulator."""
    clock = FakeClock()
    simulator = Simulator(
        project_id=PROJECT,
        users={(DOMAIN, USERNAME): PASSWORD},
        token_lifetime=1000.0,
        clock=clock,
    )
    async with simulator as sim:
        auth = IamPasswordAuth(
            iam_endpoint=sim.url,
            username=USERNAME,
            password=Secret(PASSWORD),
            domain=DOMAIN,
            project_id=PROJECT,
            clock=clock,
        )
        async with httpx.AsyncClient(base_url=sim.url, auth=auth) as client:
            first = await asyncio.gather(*(client.get(_tasks_path()) for _ in range(20)))
            after_first = sim.count("POST", "/v3/auth/tokens")
            sim.expire_tokens()  # revoked early, as far as the bot can tell
            revoked = await client.get(_tasks_path())
            after_revoke = sim.count("POST", "/v3/auth/tokens")
            clock.now += 950  # inside the 100 s renewal margin of the new token
            renewed = await client.get(_tasks_path())

    assert [r.status_code for r in first] == [200] * 20
    assert after_first == 1
    assert revoked.status_code == 200
    assert after_revoke == 2
    assert renewed.status_code == 200
    assert sim.count("POST", "/v3/auth/tokens") == 3
    assert sim.count("GET", _tasks_path()) == 20 + 2 + 1


def _echoes(token: str) -> list[str]:
    """How a gateway error might quote a token back: URL-quoted, JSON-escaped, \\u-escaped."""
    document = json.dumps({"token": token})
    return [
        f"GET /v3/x?echo={quote(token, safe='')}",
        document,
        document.replace("+", "\\u002b"),
        document.replace("/", "\\/").replace("=", "\\u003D"),
        f"echo={quote(token, safe='/')}",  # quoted in part
    ]


async def test_issued_tokens_are_redacted_even_when_escaped(base_url: str, cloud: Cloud) -> None:
    # A KPS or gateway error echoing the request (URL or JSON) would otherwise carry the live
    # token into the logs, the store and Slack: %2B or \u002b breaks the MII… shape rule.
    cloud.base64_tokens = True
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        assert (await client.get(_tasks_path())).status_code == 200
    (token,) = cloud.issued_tokens()
    assert "+" in token and "/" in token
    pieces = [piece for piece in token.replace("/", "+").split("+") if len(piece) > 8]

    for text in _echoes(token):
        shown = redact(text)
        assert REDACTED in shown, text
        assert not any(piece in shown for piece in pieces), shown


async def test_only_the_latest_tokens_stay_registered(base_url: str, cloud: Cloud) -> None:
    # Renewal registers each token; the redactor's pattern must not grow for ever (a gateway
    # answering 401 to everything makes a token per request).
    cloud.base64_tokens = True
    cloud.lifetime = 1000.0
    async with httpx.AsyncClient(base_url=base_url, auth=_auth(base_url, cloud)) as client:
        for _ in range(10):
            assert (await client.get(_tasks_path())).status_code == 200
            cloud.clock.now += 950  # past the renewal point of the current token

    tokens = cloud.issued_tokens()
    assert len(tokens) == 10
    first, *_, latest = tokens
    echo = f"echo={quote(first, safe='')}"
    assert redact(echo) == echo  # forgotten: it is no longer sent, so nothing echoes it
    for token in tokens[-8:]:
        assert redact(f"echo={quote(token, safe='')}") == f"echo={REDACTED}"
    assert latest not in redact(json.dumps({"t": latest}).replace("+", "\\u002b"))
