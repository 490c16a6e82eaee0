"""AK/SK signing: byte-for-byte agreement with Huawei Cloud's own SDK signer, and a live check."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import quote

import httpx
import pytest
from aiohttp import web
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.auth import AkSkAuth, canonical_query, canonical_request, sign
from bot.sandbox.simulator import Simulator
from bot.secret import Secret

AK = "HPUAEXAMPLEAK1234567"
SK = "sk-Very-Secret-0123456789abcdefghijklmnop"
SECURITY_TOKEN = "sts-Temporary-Security-Token-0123456789"
PROJECT = "0123456789abcdef0123456789abcdef"
HOST = "kms.cn-north-4.myhuaweicloud.com"
DATE = datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC)


def signed_by_auth(
    method: str,
    path: str,
    params: Sequence[tuple[str, str]],
    *,
    content_type: str | None,
    body: bytes,
    security_token: str | None,
) -> httpx.Request:
    """The request as AkSkAuth leaves it, signed with a fixed clock."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = httpx.Request(
        method, f"https://{HOST}{path}", params=list(params), headers=headers, content=body
    )
    auth = AkSkAuth(
        ak=AK,
        sk=Secret(SK),
        project_id=PROJECT,
        security_token=Secret(security_token) if security_token else None,
        clock=lambda: DATE,
    )
    return next(auth.auth_flow(request))


def signed_by_sdk(
    method: str,
    path: str,
    params: Sequence[tuple[str, str]],
    *,
    content_type: str | None,
    body: bytes,
    security_token: str | None,
) -> SdkRequest:
    """The same call signed the way the SDK's KPS client signs it (credentials add the headers)."""
    headers = {"X-Sdk-Date": DATE.strftime("%Y%m%dT%H%M%SZ")}
    if content_type:
        headers["Content-Type"] = content_type
    credentials = BasicCredentials(AK, SK, PROJECT)
    if security_token:
        credentials = credentials.with_security_token(security_token)
    request = SdkRequest(
        method=method,
        schema="https",
        host=HOST,
        resource_path=path,
        query_params=list(params),
        header_params=headers,
        body=body,
    )
    signed: SdkRequest = credentials.sign_request(request)
    return signed


CASES = {
    "get-no-query": ("GET", f"/v3/{PROJECT}/running-tasks", [], "application/json", b"", None),
    "get-paging": (
        "GET",
        f"/v3/{PROJECT}/running-tasks",
        [("limit", "10"), ("offset", "20")],
        "application/json",
        b"",
        None,
    ),
    "escaped-query": (
        "GET",
        f"/v3/{PROJECT}/keypairs",
        [("name", "一 (&=?!#%.*)"), ("path", "/tmp/123"), ("tilde", "a~b+c")],
        "application/json",
        b"",
        None,
    ),
    "repeated-keys": (
        "GET",
        f"/v3/{PROJECT}/failed-tasks",
        [("multi", "3"), ("limit", "5"), ("multi", "1"), ("multi", "2")],
        None,
        b"",
        None,
    ),
    "post-json": (
        "POST",
        f"/v3/{PROJECT}/keypairs",
        [],
        "application/json",
        b'{"keypair": {"name": "demo", "type": "ssh"}}',
        None,
    ),
    "security-token": (
        "GET",
        f"/v3/{PROJECT}/running-tasks",
        [("limit", "1000"), ("offset", "0")],
        "application/json",
        b"",
        SECURITY_TOKEN,
    ),
    "post-with-security-token": (
        "DELETE",
        f"/v3/{PROJECT}/failed-tasks",
        [],
        "application/json;charset=utf-8",
        b"{}",
        SECURITY_TOKEN,
    ),
    "quoted-path-segment": (
        "GET",
        f"/v3/{PROJECT}/keypairs/my%20key%2Bx%E4%B8%80",
        [],
        "application/json",
        b"",
        None,
    ),
    "escaped-slash-in-segment": (
        "DELETE",
        f"/v3/{PROJECT}/failed-tasks/a%2Fb",
        [],
        None,
        b"",
        None,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_authorization_equals_the_sdk_signers(
    case: tuple[str, str, list[tuple[str, str]], str | None, bytes, str | None],
) -> None:
    method, path, params, content_type, body, token = case
    ours = signed_by_auth(
        method, path, params, content_type=content_type, body=body, security_token=token
    )
    theirs = signed_by_sdk(
        method, path, params, content_type=content_type, body=body, security_token=token
    )

    assert ours.headers["Authorization"] == theirs.header_params["Authorization"]
    # The query goes out exactly as the SDK sends it (sorted, %20 for a space, never `+`).
    assert ours.url.raw_path.decode("ascii") == theirs.uri
    assert ours.headers["X-Project-Id"] == PROJECT
    assert ours.headers["X-Sdk-Date"] == "20260301T123456Z"
    if token:
        assert ours.headers["X-Security-Token"] == token
        assert "x-security-token" in ours.headers["Authorization"]
    else:
        assert "X-Security-Token" not in ours.headers


def test_sign_matches_the_sdk_on_the_headers_it_is_given() -> None:
    """`sign` signs every header it gets but those with `_`, as the SDK's Signer does."""
    url = httpx.URL(f"https://{HOST}/v3/{PROJECT}/running-tasks?offset=0&limit=10")
    headers = {
        "Content-Type": "application/json",
        "Host": HOST,
        "X-Sdk-Date": "20260301T123456Z",
        "X-Project-Id": PROJECT,
        "User-Agent": "kps-bot",
        "TEST_UNDERSCORE": "never signed",
    }
    signed_headers, authorization = sign("GET", url, headers, b"", ak=AK, sk=SK)

    sdk_request = SdkRequest(
        method="GET",
        schema="https",
        host=HOST,
        resource_path=url.path,
        query_params=[("offset", "0"), ("limit", "10")],
        header_params=dict(headers),
        body=b"",
    )
    Signer(BasicCredentials(AK, SK)).sign(sdk_request)

    assert authorization == sdk_request.header_params["Authorization"]
    assert signed_headers == "content-type;host;user-agent;x-project-id;x-sdk-date"


def test_declared_content_sha256_replaces_the_body_hash_like_the_sdk() -> None:
    """A non-JSON body: the SDK declares UNSIGNED-PAYLOAD, and `sign` honours the declaration."""
    path = f"/v3/{PROJECT}/keypairs/private-key/import"
    body = b"--boundary\r\nbinary key material\r\n--boundary--"
    url = httpx.URL(f"https://{HOST}{path}")
    headers = {
        "Content-Type": "multipart/form-data; boundary=boundary",
        "Host": HOST,
        "X-Sdk-Date": "20260301T123456Z",
        "X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD",
    }
    _, authorization = sign("POST", url, headers, body, ak=AK, sk=SK)

    sdk_request = SdkRequest(
        method="POST",
        schema="https",
        host=HOST,
        resource_path=path,
        query_params=[],
        header_params={k: v for k, v in headers.items() if k != "X-Sdk-Content-Sha256"},
        body=body,
    )
    Signer(BasicCredentials(AK, SK)).sign(sdk_request)

    assert authorization == sdk_request.header_params["Authorization"]
    assert canonical_request("POST", url, headers, body).endswith("\nUNSIGNED-PAYLOAD")
    plain = {k: v for k, v in headers.items() if k != "X-Sdk-Content-Sha256"}
    assert canonical_request("POST", url, plain, body).endswith(
        "\n" + hashlib.sha256(body).hexdigest()
    )


def test_sdk_test_vectors() -> None:
    """huaweicloud-sdk-core tests/test_signer.py (../shared/research/kps-api.md §5)."""
    url = httpx.URL("https://service.endpoint.myhuaweicloud.com/resources?size=1")
    headers = {
        "Host": "service.endpoint.myhuaweicloud.com",
        "X-Sdk-Date": "20200608T023900Z",
        "TEST_UNDERSCORE": "excluded",
    }
    signed_get, get = sign("GET", url, headers, b"", ak="AccessKey", sk="SecretKey")
    _, post = sign("POST", url, headers, b'{"name":"test","id":1}', ak="AccessKey", sk="SecretKey")

    assert signed_get == "host;x-sdk-date"
    assert get == (
        "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=host;x-sdk-date, "
        "Signature=cfb4171acec81de07d50e53d57eb77edd537414d66ddb1d7d780f128e12cd842"
    )
    assert post.endswith(
        "Signature=436b1ac0a1ae03705934bb70ef2f2e09f7bfed2117d731a38235053199323a1f"
    )


def test_sdk_query_encoding_vector() -> None:
    params = {
        "limit": 1,
        "enable": True,
        "test": "一 (&=?!#%.*)",
        "path": "/tmp/123",
        "multi": [1, 2, 3],
    }
    url = httpx.URL("https://service.endpoint.myhuaweicloud.com/resources", params=params)

    assert canonical_query(url.params.multi_items()) == (
        "enable=true&limit=1&multi=1&multi=2&multi=3&path=%2Ftmp%2F123"
        "&test=%E4%B8%80%20%28%26%3D%3F%21%23%25.%2A%29"
    )


def test_official_guide_vector() -> None:
    """The worked example of the API signing guide [S15]."""
    url = httpx.URL(
        "https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs"
        "?limit=2&marker=13551d6b-755d-4757-b956-536f674975c0"
    )
    headers = {
        "Content-Type": "application/json",
        "X-Sdk-Date": "20191115T033655Z",
        "Host": "service.region.example.com",
    }
    request_text = canonical_request("GET", url, headers, b"")
    signed, authorization = sign(
        "GET",
        url,
        headers,
        b"",
        ak="QTWAOYTTINDUT2QVKYUC",
        sk="MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
    )

    assert hashlib.sha256(request_text.encode()).hexdigest() == (
        "b25362e603ee30f4f25e7858e8a7160fd36e803bb2dfe206278659d71a9bcd7a"
    )
    assert signed == "content-type;host;x-sdk-date"
    assert authorization == (
        "SDK-HMAC-SHA256 Access=QTWAOYTTINDUT2QVKYUC, SignedHeaders=content-type;host;x-sdk-date, "
        "Signature=7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
    )


def test_sign_refuses_a_request_without_a_date() -> None:
    url = httpx.URL(f"https://{HOST}/v3/{PROJECT}/running-tasks")
    with pytest.raises(ValueError, match="X-Sdk-Date"):
        sign("GET", url, {"Host": HOST}, b"", ak=AK, sk=SK)
    with pytest.raises(ValueError):
        sign("GET", url, {"Host": HOST, "X-Sdk-Date": "2026-03-01 12:34"}, b"", ak=AK, sk=SK)


def test_date_is_utc_whatever_zone_the_clock_gives() -> None:
    local = DATE.astimezone(timezone(timedelta(hours=8)))
    auth = AkSkAuth(ak=AK, sk=Secret(SK), project_id=PROJECT, clock=lambda: local)
    request = next(auth.auth_flow(httpx.Request("GET", f"https://{HOST}/")))

    assert request.headers["X-Sdk-Date"] == "20260301T123456Z"


def test_headers_added_after_signing_are_not_signed() -> None:
    auth = AkSkAuth(ak=AK, sk=Secret(SK), project_id=PROJECT, clock=lambda: DATE)
    request = httpx.Request(
        "GET", f"https://{HOST}/v3/{PROJECT}/running-tasks", headers={"User-Agent": "kps-bot/1"}
    )
    authorization = next(auth.auth_flow(request)).headers["Authorization"]

    assert "SignedHeaders=host;x-project-id;x-sdk-date," in authorization


_segment = st.text(st.characters(codec="utf-8"), max_size=6)
_pair = st.tuples(_segment, _segment)


@settings(max_examples=150, deadline=None)
@given(
    segments=st.lists(_segment, min_size=1, max_size=4),
    params=st.lists(_pair, max_size=5),
    body=st.binary(max_size=64),
    json_type=st.booleans(),
    token=st.none() | st.text("abcXYZ0189-_=", min_size=1, max_size=12),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
)
def test_any_request_signs_like_the_sdk(
    segments: list[str],
    params: list[tuple[str, str]],
    body: bytes,
    json_type: bool,
    token: str | None,
    method: str,
) -> None:
    # Escape each segment as a client would; both signers then get the path httpx will send.
    encoded = "/" + "/".join(quote(segment, safe="") for segment in segments)
    path = httpx.URL(f"https://{HOST}{encoded}").raw_path.decode("ascii")
    content_type = "application/json" if json_type else None
    ours = signed_by_auth(
        method, path, params, content_type=content_type, body=body, security_token=token
    )
    theirs = signed_by_sdk(
        method, path, params, content_type=content_type, body=body, security_token=token
    )

    assert ours.headers["Authorization"] == theirs.header_params["Authorization"]
    assert ours.url.raw_path.decode("ascii") == theirs.uri


# --- end to end: a loopback server verifies what arrives, with the SDK's signer -----------------


@asynccontextmanager
async def verifying_server(received: list[web.Request]) -> AsyncIterator[str]:
    """A KPS stand-in that answers 200 only to requests the SDK's signer agrees were signed."""

    async def handle(request: web.Request) -> web.Response:
        received.append(request)
        authorization = request.headers.get("Authorization", "")
        signed_names = authorization.partition("SignedHeaders=")[2].partition(",")[0].split(";")
        # Re-sign exactly what arrived over the headers the client says it signed.
        sdk_request = SdkRequest(
            method=request.method,
            schema="http",
            host=request.host,
            resource_path=request.raw_path.split("?")[0],
            query_params=list(request.rel_url.query.items()),
            header_params={name: request.headers[name] for name in signed_names if name},
            body=await request.read(),
        )
        Signer(BasicCredentials(AK, SK)).sign(sdk_request)
        sent = datetime.strptime(request.headers["X-Sdk-Date"], "%Y%m%dT%H%M%SZ")
        # The gateway refuses dates more than 15 minutes off its own clock (§5 [S15]).
        fresh = abs(sent.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=15)
        if sdk_request.header_params["Authorization"] != authorization or not fresh:
            return web.json_response(
                {"error_code": "APIG.0301", "error_msg": "verify aksk signature fail"},
                status=401,
            )
        return web.json_response({"total": 0, "tasks": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_requests_arrive_with_a_signature_the_server_can_verify() -> None:
    received: list[web.Request] = []
    auth = AkSkAuth(ak=AK, sk=Secret(SK), project_id=PROJECT, security_token=Secret(SECURITY_TOKEN))
    async with (
        verifying_server(received) as base,
        httpx.AsyncClient(base_url=base, auth=auth) as client,
    ):
        listing = await client.get(
            f"/v3/{PROJECT}/running-tasks",
            params={"limit": 10, "offset": 0, "name": "a b+c/一"},
            headers={"Content-Type": "application/json"},
        )
        created = await client.post(f"/v3/{PROJECT}/keypairs", json={"keypair": {"name": "k"}})
        deleted = await client.delete(f"/v3/{PROJECT}/failed-tasks/a%20b")

    assert [listing.status_code, created.status_code, deleted.status_code] == [200, 200, 200]
    first = received[0]
    assert first.headers["X-Project-Id"] == PROJECT
    assert first.headers["X-Security-Token"] == SECURITY_TOKEN
    assert first.rel_url.query.getall("name") == ["a b+c/一"]
    assert "user-agent" not in first.headers["Authorization"]


async def test_the_verifier_refuses_a_wrong_secret_key() -> None:
    received: list[web.Request] = []
    auth = AkSkAuth(ak=AK, sk=Secret(SK + "x"), project_id=PROJECT)
    async with (
        verifying_server(received) as base,
        httpx.AsyncClient(base_url=base, auth=auth) as client,
    ):
        response = await client.get(f"/v3/{PROJECT}/running-tasks")

    assert response.status_code == 401
    assert response.json()["error_code"] == "APIG.0301"


def test_repr_shows_no_key() -> None:
    auth = AkSkAuth(ak=AK, sk=Secret(SK), project_id=PROJECT, security_token=Secret(SECURITY_TOKEN))
    shown = repr(auth) + str(auth)

    for secret in (AK, SK, SECURITY_TOKEN):
        assert secret not in shown
    assert PROJECT in shown


async def test_the_simulator_accepts_the_signature() -> None:
    """The project's KPS simulator verifies AK/SK signatures with its own implementation."""
    simulator = Simulator(project_id=PROJECT, aksk={AK: SK}, security_tokens=[SECURITY_TOKEN])
    auth = AkSkAuth(ak=AK, sk=Secret(SK), project_id=PROJECT, security_token=Secret(SECURITY_TOKEN))
    wrong = AkSkAuth(
        ak=AK, sk=Secret(SK[::-1]), project_id=PROJECT, security_token=Secret(SECURITY_TOKEN)
    )
    async with simulator as sim, httpx.AsyncClient(base_url=sim.url) as client:
        path = f"/v3/{PROJECT}/running-tasks"
        accepted = await client.get(path, params={"limit": 10, "offset": 0}, auth=auth)
        refused = await client.get(path, params={"limit": 10, "offset": 0}, auth=wrong)

    assert accepted.status_code == 200
    assert accepted.json()["total"] == 0
    assert refused.status_code == 401
