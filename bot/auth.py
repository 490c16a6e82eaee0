"""The three ways to authenticate KPS calls, as `httpx.Auth` objects for one shared client."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, unquote

import httpx

from bot.body import ACCEPT_ENCODING, BodyTooLarge, BodyUndecodable, read_body
from bot.errors import KPSBadResponse, KPSResponseTooLarge, decode_error, request_id_of
from bot.logs import register_secret, unregister_secret
from bot.secret import Secret

ALGORITHM: Final = "SDK-HMAC-SHA256"
SDK_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()

# Only these are signed, whatever else is on the request: the gateway accepts any subset that
# includes x-sdk-date (../shared/research/kps-api.md §5 [S15b]), and headers httpx or a proxy
# add later (User-Agent, Accept-Encoding, Content-Length) then cannot break the signature.
_SIGNED_HEADERS: Final = (
    "content-type",
    "host",
    "x-project-id",
    "x-sdk-content-sha256",
    "x-sdk-date",
    "x-security-token",
)

# IAM tokens live 24 h (§4): renew an hour early, or 10 % of the lifetime early when that is
# less, so short-lived tokens (a simulator's, a test's) are not renewed on every request.
_MAX_RENEW_MARGIN: Final = 3600.0
_RENEW_FRACTION: Final = 0.1

# The most of an IAM answer, or of a KPS 401 that is about to be retried, the bot reads. A token
# response without its catalog (nocatalog=true) is a few KB; with one, tens of KB.
_MAX_IAM_BODY: Final = 1024 * 1024

# How many of its latest tokens one IamPasswordAuth keeps registered with the log redactor.
_REDACTED_TOKENS: Final = 8


class StaticTokenAuth(httpx.Auth):
    """Sends a ready IAM token as `X-Auth-Token`; it is never renewed."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenAuth()"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-Auth-Token"] = self._token.reveal()
        yield request


@dataclass(frozen=True, slots=True)
class _Token:
    value: Secret
    expires_at: float  # epoch seconds, from IAM's `token.expires_at`
    renew_at: float


class IamPasswordAuth(httpx.Auth):
    """Gets a project-scoped IAM token with a password, shares it and renews it before it expires.

    The token request is yielded from the auth flow, so httpx sends it on the same client (same
    transport, proxies and timeouts) without running it through this auth again.
    """

    requires_request_body = True  # the request may be sent twice, after a 401

    def __init__(
        self,
        *,
        iam_endpoint: str,
        username: str,
        password: Secret,
        domain: str,
        project_id: str,
        renew_margin: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = f"{iam_endpoint.rstrip('/')}/v3/auth/tokens"
        self._username = username
        self._password = password
        self._domain = domain
        self._project_id = project_id
        self._renew_margin = renew_margin
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        # Tokens registered with the log redactor, newest last (see `_remember`).
        self._registered: deque[str] = deque()

    def __repr__(self) -> str:
        return (
            f"IamPasswordAuth(iam_endpoint={self._url.removesuffix('/v3/auth/tokens')!r}, "
            f"username={self._username!r}, domain={self._domain!r}, "
            f"project_id={self._project_id!r})"
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        # The shared renewal lock is an asyncio.Lock; a sync client would silently bypass it.
        raise RuntimeError("IamPasswordAuth works only with httpx.AsyncClient")
        yield request  # pragma: no cover - makes this a generator, as httpx expects

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = self._token
        if token is None or self._clock() >= token.renew_at:
            async with self._lock:
                # Another caller may have renewed while this one waited for the lock.
                token = self._token
                if token is None or self._clock() >= token.renew_at:
                    answer = yield self._token_request(request)
                    token = await self._accept(answer)
        request.headers["X-Auth-Token"] = token.value.reveal()
        response = yield request
        if response.status_code != 401:
            return
        # httpx reads a response in full before the auth flow's next request; read it here
        # within a cap instead, so a hostile 401 body cannot grow without bound.
        await _read(response, "KPS")
        # A token can be revoked before it expires (password change, permission change, up to
        # 30 min later per §4): renew once and resend once; a second 401 goes back as it is.
        async with self._lock:
            if self._token is token:  # nobody renewed since this token failed
                answer = yield self._token_request(request)
                await self._accept(answer)
            token = self._token or token
        request.headers["X-Auth-Token"] = token.value.reveal()
        yield request

    def _token_request(self, original: httpx.Request) -> httpx.Request:
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._username,
                            "password": self._password.reveal(),
                            "domain": {"name": self._domain},
                        }
                    },
                },
                "scope": {"project": {"id": self._project_id}},
            }
        }
        # A bare Request carries no timeout; borrow the one the client gave the KPS request.
        extensions = {k: v for k, v in original.extensions.items() if k == "timeout"}
        return httpx.Request(
            "POST",
            self._url,
            params={"nocatalog": "true"},  # the service catalog is large and unused
            headers={
                "Content-Type": "application/json;charset=utf8",
                "Accept-Encoding": ACCEPT_ENCODING,
            },
            content=json.dumps(body).encode(),
            extensions=extensions,
        )

    async def _accept(self, response: httpx.Response) -> _Token:
        body = await _read(response, "IAM")
        if not response.is_success:
            raise decode_error(
                response.status_code,
                response.headers,
                response.content,
                reason=response.reason_phrase,
                service="IAM",
            )

        def bad(detail: str) -> KPSBadResponse:
            # Said as IAM's fault: users were told KPS sent something unreadable (issue 10, 12).
            rid = request_id_of(response.headers)
            return KPSBadResponse(
                detail, status=response.status_code, request_id=rid, service="IAM"
            )

        value = response.headers.get("X-Subject-Token")
        if not value:
            raise bad("the token response has no X-Subject-Token header, so there is no token")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise bad("the token response body is not JSON, so no token.expires_at") from None
        fields = document.get("token") if isinstance(document, dict) else None
        text = fields.get("expires_at") if isinstance(fields, dict) else None
        if text is None:
            raise bad("the token response has no token.expires_at")
        try:
            expires_at = _parse_expiry(text)
        except (ValueError, TypeError, OverflowError):
            shown = repr(text)[:40]
            raise bad(f"token.expires_at {shown} is not an ISO 8601 time") from None
        now = self._clock()
        margin = self._renew_margin
        if margin is None:
            margin = min(_MAX_RENEW_MARGIN, _RENEW_FRACTION * max(expires_at - now, 0.0))
        token = _Token(Secret(value), expires_at, expires_at - margin)
        self._remember(value)
        self._token = token
        return token

    def _remember(self, value: str) -> None:
        # Registered so that an error echoing the token URL-quoted or JSON-escaped (which the
        # shape rules miss) never carries it into logs, the store or Slack. Only the last
        # _REDACTED_TOKENS stay registered: renewals come about daily, but a gateway answering
        # 401 to everything makes one per request, and the redactor's pattern would grow
        # without bound. An older token is no longer sent, so no new error can echo it.
        register_secret(value)
        self._registered.append(value)
        while len(self._registered) > _REDACTED_TOKENS:
            unregister_secret(self._registered.popleft())


async def _read(response: httpx.Response, service: str) -> bytes:
    """A response's body within `_MAX_IAM_BODY`, refused in that service's name past it."""
    try:
        return await read_body(response, _MAX_IAM_BODY)
    except BodyTooLarge as exc:
        rid = request_id_of(response.headers)
        status = response.status_code
        raise KPSResponseTooLarge(
            exc.limit, status=status, request_id=rid, service=service
        ) from None
    except BodyUndecodable as exc:
        rid = request_id_of(response.headers)
        status = response.status_code
        raise KPSBadResponse(str(exc), status=status, request_id=rid, service=service) from None


def _parse_expiry(text: Any) -> float:
    """Epoch seconds of an IAM `expires_at` such as `2020-01-04T09:05:22.701000Z`."""
    if not isinstance(text, str):
        raise TypeError("expires_at is not a string")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AkSkAuth(httpx.Auth):
    """Signs every request with SDK-HMAC-SHA256, as Huawei Cloud's SDKs do."""

    requires_request_body = True  # the body's hash is part of the signature

    def __init__(
        self,
        *,
        ak: str,
        sk: Secret,
        project_id: str,
        security_token: Secret | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._ak = ak
        self._sk = sk
        self._project_id = project_id
        self._security_token = security_token
        self._clock = clock

    def __repr__(self) -> str:
        temporary = self._security_token is not None
        return f"AkSkAuth(project_id={self._project_id!r}, temporary={temporary})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # Set afresh on every pass, so a request object sent again gets a current date.
        request.headers["X-Sdk-Date"] = self._clock().astimezone(UTC).strftime(SDK_DATE_FORMAT)
        request.headers["X-Project-Id"] = self._project_id
        if self._security_token is not None:
            request.headers["X-Security-Token"] = self._security_token.reveal()
        if "Host" not in request.headers:
            request.headers["Host"] = request.url.netloc.decode("ascii")
        query = canonical_query(request.url.params.multi_items())
        if query:
            # Send the query exactly as signed, as the SDK does: httpx writes a space as `+`,
            # which a gateway may read as a literal plus and then compute another signature.
            request.url = request.url.copy_with(query=query.encode("ascii"))
        signed = {
            name: request.headers[name] for name in _SIGNED_HEADERS if name in request.headers
        }
        _, authorization = sign(
            request.method,
            request.url,
            signed,
            request.content,
            ak=self._ak,
            sk=self._sk.reveal(),
        )
        request.headers["Authorization"] = authorization
        yield request


def sign(
    method: str,
    url: httpx.URL,
    headers: Mapping[str, str],
    body: bytes,
    *,
    ak: str,
    sk: str,
) -> tuple[str, str]:
    """Sign over every header given (X-Sdk-Date required): (signed headers, Authorization)."""
    names = signed_header_names(headers)
    request_text = canonical_request(method, url, headers, body)
    sdk_date = _header(headers, "x-sdk-date")
    if sdk_date is None:
        raise ValueError("X-Sdk-Date is required to sign a request")
    datetime.strptime(sdk_date.strip(), SDK_DATE_FORMAT)  # a malformed date fails here, not at KPS
    string_to_sign = "\n".join(
        (ALGORITHM, sdk_date.strip(), hashlib.sha256(request_text.encode()).hexdigest())
    )
    signature = hmac.new(sk.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed = ";".join(names)
    return signed, f"{ALGORITHM} Access={ak}, SignedHeaders={signed}, Signature={signature}"


def signed_header_names(headers: Mapping[str, str]) -> list[str]:
    """Lower-cased, sorted header names; like the SDK, names with `_` are never signed."""
    return sorted({name.lower() for name in headers if "_" not in name})


def canonical_request(method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes) -> str:
    """The six-line canonical request of the SDK-HMAC-SHA256 algorithm."""
    names = signed_header_names(headers)
    values = {name.lower(): str(value).strip() for name, value in headers.items()}
    canonical_headers = "".join(f"{name}:{values[name]}\n" for name in names)
    return "\n".join(
        (
            method.upper(),
            # The path as sent, still escaped: `url.path` is decoded, and canonical_uri decodes
            # once more, as the SDK does with its escaped URI; decoding twice turned an id
            # holding `%2F` into two segments and a signature KPS refuses.
            canonical_uri(url.raw_path.split(b"?", 1)[0].decode("ascii")),
            canonical_query(url.params.multi_items()),
            canonical_headers,
            ";".join(names),
            _payload_hash(headers, body),
        )
    )


def canonical_uri(path: str) -> str:
    """Each path segment RFC 3986-escaped, always ending in `/` (the URI sent keeps none)."""
    escaped = "/".join(_escape(segment) for segment in unquote(path).split("/"))
    return escaped if escaped.endswith("/") else escaped + "/"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """`key=value` pairs sorted by key then value, both RFC 3986-escaped, joined with `&`."""
    return "&".join(f"{_escape(key)}={_escape(value)}" for key, value in sorted(pairs))


def _payload_hash(headers: Mapping[str, str], body: bytes) -> str:
    if not body:
        return _EMPTY_SHA256
    declared = _header(headers, "x-sdk-content-sha256")
    return declared if declared else hashlib.sha256(body).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _escape(text: str) -> str:
    return quote(text, safe="~")
