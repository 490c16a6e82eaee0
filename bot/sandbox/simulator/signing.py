"""SDK-HMAC-SHA256 as the API gateway checks it, recomputed from the published algorithm.

Written from the algorithm (kps-api.md §5 in the shared research notes), not from a client, so a
test that signs with the bot's code and checks here compares two independent implementations.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import quote, unquote

_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()


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


def parse_authorization(value: str) -> dict[str, str] | None:
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
