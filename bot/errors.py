"""The one exception family for everything that can go wrong talking to KPS or IAM."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

_RAW_TEXT_LIMIT = 300  # enough to recognise an HTML error page, short enough for a Slack message
_MAX_ERROR_JSON = 64 * 1024  # the most of an error body decode_error parses as JSON


class KPSError(Exception):
    """Base of every KPS/IAM failure; `str()` is safe to show a user."""

    retryable: bool = False


class KPSAPIError(KPSError):
    """KPS, IAM or their API gateway answered with an error status."""

    def __init__(
        self,
        status: int,
        error_code: str,
        error_msg: str,
        request_id: str | None,
        *,
        service: str = "KPS",
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id
        self.service = service
        super().__init__(self._describe())

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status == 429 or self.status >= 500

    def _describe(self) -> str:
        rid = f", request id {self.request_id}" if self.request_id else ""
        return (
            f"{self.service} answered HTTP {self.status}: {self.error_code} {self.error_msg}{rid}"
        )


class KPSTimeout(KPSError):
    """KPS did not answer in time."""

    retryable = True


class KPSConnectionError(KPSError):
    """KPS could not be reached at all (DNS, refused, TLS, reset)."""

    retryable = True


class KPSBadResponse(KPSError):
    """KPS answered 2xx with a body that is not the documented JSON."""

    def __init__(
        self, detail: str, *, status: int, request_id: str | None, service: str = "KPS"
    ) -> None:
        self.detail = detail
        self.status = status
        self.request_id = request_id
        self.service = service  # "IAM" when the token service sent it
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{service} sent a response that could not be read: {detail}{rid}")


def request_id_of(headers: Mapping[str, str]) -> str | None:
    """The request id Huawei Cloud puts in a response header (names matched without case)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return lowered.get("x-request-id") or lowered.get("x-openstack-request-id") or None


def decode_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    reason: str | None = None,
    service: str = "KPS",
) -> KPSAPIError:
    """Turn any error body shape Huawei Cloud is known to send into one `KPSAPIError`.

    Pure, like gidgethub's `decipher_response`: it takes the status, headers and body, not a
    client's response object, so modules that render errors never load an HTTP client. `reason`
    is the status line's phrase when the server sent one. Shapes, in the order the SDK's
    DefaultExceptionHandler tries them (../shared/research/kps-api.md §3): flat
    `{"error_code","error_msg"}`
    (KPS, APIG.*/APIGW.* with `request_id`), nested `{"error": {...}}` (KMS on the same host),
    Keystone `{"error": {"code","message","title"}}` (IAM), camelCase variants; else the status
    and the start of the raw text.
    """
    request_id = request_id_of(headers)
    parsed: Any = None
    # No error needs more than a few KB of JSON; parsing megabytes would stall the event loop,
    # so a larger body is shown as raw text. RecursionError: deeply nested brackets.
    if len(body) <= _MAX_ERROR_JSON:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            parsed = None
    found = _find_code_and_message(parsed) if isinstance(parsed, dict) else None
    if isinstance(parsed, dict) and request_id is None:
        rid = parsed.get("request_id")
        request_id = rid if isinstance(rid, str) and rid else None
    if found is None:
        phrase = _reason_phrase(status) if reason is None else reason
        raw = _raw_text(body[:_MAX_ERROR_JSON], phrase)  # the start is all it shows
        return KPSAPIError(status, str(status), raw, request_id, service=service)
    code, message = found
    return KPSAPIError(status, code, message, request_id, service=service)


def _find_code_and_message(body: dict[str, Any], depth: int = 0) -> tuple[str, str] | None:
    for code_key, msg_key in (("error_code", "error_msg"), ("errorCode", "errorMsg")):
        if code_key in body or msg_key in body:
            return _text(body.get(code_key)), _text(body.get(msg_key))
    if "code" in body and "message" in body:
        title = body.get("title")
        message = _text(body.get("message"))
        if isinstance(title, str) and title and title not in message:
            message = f"{title}: {message}"
        return _text(body.get("code")), message
    if depth < 3:
        for value in body.values():
            if isinstance(value, dict):
                found = _find_code_and_message(value, depth + 1)
                if found is not None:
                    return found
    return None


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _raw_text(body: bytes, reason: str) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return reason or "no body"
    if text.lstrip().startswith("<"):
        # An HTML error page from a proxy or gateway: its markup means nothing to a user.
        return f"{reason or 'error'} (HTML error page)"
    return text[:_RAW_TEXT_LIMIT]


class KPSResponseTooLarge(KPSBadResponse):
    """KPS (or IAM) sent a body larger than the bot will read; not retried."""

    def __init__(
        self, limit: int, *, status: int, request_id: str | None, service: str = "KPS"
    ) -> None:
        self.limit = limit
        detail = f"the answer is larger than {limit:,} bytes, the most the bot reads"
        super().__init__(detail, status=status, request_id=request_id, service=service)


class KPSThrottled(KPSAPIError):
    """KPS answered 429 and the bot stopped asking: its attempts ran out or the wait was too long.

    `retry_after` is KPS's `Retry-After` in seconds, when it sent one.
    """

    def __init__(self, error: KPSAPIError, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__(
            error.status, error.error_code, error.error_msg, error.request_id, service=error.service
        )

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return False  # the bot has already given up on this request

    def _describe(self) -> str:
        wait = self.retry_after
        asks = f"; it asks to wait {wait:,.0f} s (Retry-After)" if wait is not None else ""
        return f"{self.service} is throttling requests{asks}. {super()._describe()}"
