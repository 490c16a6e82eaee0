"""AK/SK request signing (SDK-HMAC-SHA256) as the API gateway checks it, from the algorithm.

Written from the algorithm (kps-api.md §5 in the shared research notes), not from a client, so a
test that signs with the bot's code and checks here compares two independent implementations.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

from aiohttp import web

from bot.sandbox.simulator.answers import apig_error

_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
_SDK_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
_MAX_CLOCK_SKEW: Final = 15 * 60  # APIG refuses an X-Sdk-Date more than 15 min off (§5)


def _canonical_uri(raw_path: str) -> str:
    """The signed form of a path: each segment RFC 3986-quoted, always ending in `/`."""
    uri = "/".join(quote(segment, safe="~") for segment in unquote(raw_path).split("/"))
    return uri if uri.endswith("/") else uri + "/"


def _canonical_query(raw_query: str) -> str:
    """The signed form of a query string: decoded pairs sorted, re-quoted with safe='~'."""
    pairs = []
    for part in raw_query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    pairs.sort()
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)


def expected_signature(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: Iterable[str],
    body: bytes,
    secret_key: str,
) -> str:
    """The hex signature the API gateway expects; `headers` keyed by lowercased name.

    Raises KeyError when a signed header (or X-Sdk-Date) is missing.
    """
    names = list(signed_headers)
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
    if not body:
        payload_hash = _EMPTY_SHA256
    else:
        # The SDK signs this header's value instead of the body for non-JSON content types.
        payload_hash = headers.get("x-sdk-content-sha256") or hashlib.sha256(body).hexdigest()
    canonical_request = "\n".join(
        (
            method.upper(),
            _canonical_uri(raw_path),
            _canonical_query(raw_query),
            canonical_headers,
            ";".join(names),
            payload_hash,
        )
    )
    string_to_sign = "\n".join(
        (
            "SDK-HMAC-SHA256",
            headers["x-sdk-date"],
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        )
    )
    return hmac.new(secret_key.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def _parse_authorization(value: str) -> dict[str, str] | None:
    """Access, SignedHeaders and Signature from an SDK-HMAC-SHA256 header; None if malformed."""
    # "SDK-HMAC-SHA256 Access=AK, SignedHeaders=a;b, Signature=hex": a space after the algorithm,
    # ", " between the fields.
    algorithm, _, rest = value.partition(" ")
    if algorithm != "SDK-HMAC-SHA256":
        return None
    parts = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if sep:
            parts[key] = val
    if not {"Access", "SignedHeaders", "Signature"} <= parts.keys():
        return None
    return parts


async def check_signature(
    request: web.Request,
    authorization: str,
    *,
    aksk: Mapping[str, str],
    security_tokens: Collection[str],
    now: float,
) -> web.Response | None:
    """None when the request is signed by a known AK, in time; else the gateway's refusal."""

    def refuse(detail: str) -> web.Response:
        return apig_error(
            request, 401, "APIG.0301", f"Incorrect IAM authentication information: {detail}"
        )

    parts = _parse_authorization(authorization)
    if parts is None:
        return refuse("verify aksk signature fail")
    secret_key = aksk.get(parts["Access"])
    if secret_key is None:
        return refuse("verify aksk signature fail")
    sdk_date = request.headers.get("X-Sdk-Date", "")
    try:
        signed_at = datetime.strptime(sdk_date, _SDK_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return refuse("verify aksk signature fail")
    if abs(signed_at.timestamp() - now) > _MAX_CLOCK_SKEW:
        return apig_error(
            request,
            401,
            "APIG.0303",
            "Incorrect app authentication information: signature expired",
        )
    if security_tokens and (request.headers.get("X-Security-Token") not in security_tokens):
        return refuse("verify security token fail")
    headers = {name.lower(): ",".join(request.headers.getall(name)) for name in request.headers}
    try:
        expected = expected_signature(
            method=request.method,
            raw_path=request.rel_url.raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=headers,
            signed_headers=[h for h in parts["SignedHeaders"].split(";") if h],
            body=await request.read(),
            secret_key=secret_key,
        )
    except KeyError:
        return refuse("verify aksk signature fail")
    if not hmac.compare_digest(expected, parts["Signature"]):
        return refuse("verify aksk signature fail")
    return None
