"""Logging set-up: one line per record (text or JSON), a correlation id, and secret redaction."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import threading
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Final
from urllib.parse import quote

REDACTED: Final = "[redacted]"
LOG_FORMATS: Final = ("text", "json")

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

# A bare value ends at whitespace, a quote or a closing bracket; one already redacted is left be.
_VALUE = r"""(?!\[redacted\])[^\s'",;)}\]]+"""
# Between a header's name and its value: "Name: v", "Name=v", {'Name': 'v'}, and the
# (b'Name', b'v') pairs httpcore logs at DEBUG for every response.
_HEADER_GAP = r"""(?:['"]?\s*[:=]\s*|['"]\s*,\s*)(?-i:b)?['"]?"""
# Each rule with the words (lower case) that any text it matches contains: a rule whose words
# are all absent is skipped, which spares a dozen regex passes over almost every Slack message.
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...]] = (
    # Slack bot, user, app-level and refresh tokens (xoxb-, xoxp-, xapp-, xoxe.xoxp-…).
    (
        re.compile(r"\b(?:xox[a-z]\.)?xox[a-z]-[A-Za-z0-9-]+|\bxapp-[A-Za-z0-9-]+"),
        REDACTED,
        ("xox", "xapp-"),
    ),
    # IAM tokens (X-Auth-Token, X-Subject-Token, X-Security-Token) and the replayable Slack
    # signature, however the header is written.
    (
        re.compile(
            r"(?i)(\bX-(?:Auth-Token|Subject-Token|Security-Token|Slack-Signature)"
            rf"{_HEADER_GAP}){_VALUE}"
        ),
        rf"\g<1>{REDACTED}",
        ("-token", "signature"),
    ),
    # Any other Authorization value, keeping its scheme word. The AK/SK one is left to the
    # Signature= rule below: its Access= and SignedHeaders= help debugging and are not secret.
    (
        re.compile(
            rf"(?i)(\bAuthorization{_HEADER_GAP})(?!SDK-HMAC-|\(redacted\))"
            rf"((?:Basic|Bearer|Token|Digest|OAuth)\s+)?{_VALUE}"
        ),
        rf"\g<1>\g<2>{REDACTED}",
        ("authorization",),
    ),
    # An IAM (PKI) token on its own, e.g. echoed in an error body: base64 DER starts with MII.
    (re.compile(r"\bMII[A-Za-z0-9+/=_-]{40,}"), REDACTED, ("mii",)),
    # The AK/SK signature: Authorization: SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…
    (re.compile(rf"(?i)(\bSignature=){_VALUE}"), rf"\g<1>{REDACTED}", ("signature=",)),
    (re.compile(rf"(?i)(\bBearer\s+){_VALUE}"), rf"\g<1>{REDACTED}", ("bearer",)),
    # The password in a URL such as postgresql+asyncpg://kps:password@db/kps.
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+@"), rf"\g<1>{REDACTED}@", ("://",)),
    # password=…, "client_secret": "…", security_token: … ({ or [ after the key is a nested
    # object, whose own keys are matched in turn).
    (
        re.compile(
            r"""(?i)(\b[\w.-]*(?:password|passwd|secret|token)[\w.-]*['"]?\s*[:=]\s*)"""
            r"""("[^"]*"|'[^']*'|[^\s'",;&)}\]{\[]+)"""
        ),
        rf"\g<1>{REDACTED}",
        ("passw", "secret", "token"),
    ),
)
# Letters that a (?i) rule matches as s, i or k but that lower() keeps apart (re's own case
# folding): mapped first, so the word test never skips a rule that would match.
_CASE_FOLD: Final = (("\u017f", "s"), ("\u0131", "i"), ("\u0130", "i"), ("\u212a", "k"))


def _fold(text: str) -> str:
    """`text` in lower case as the (?i) rules see it (str.replace: translate() is 10x slower)."""
    for letter, plain in _CASE_FOLD:
        if letter in text:
            text = text.replace(letter, plain)
    return text.lower()


_FORMATTER: Final = logging.Formatter()
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "correlation_id",
}
_BARE: Final = re.compile(r"""[^\s"'=]+""")  # a text value needs quotes if it has these
_OBJECT_LIMIT: Final = 300
_installed: logging.Handler | None = None  # the handler configure_logging put on the root logger
_SECRET_KEY = re.compile(r"(?i)password|passwd|secret|token|signature|^sk$|^authorization$")


_ALNUM_RUN: Final = re.compile(r"[A-Za-z0-9]+")


def _hex(number: int, width: int) -> str:
    """A regex for `number` in hex, digits in either case (encoders differ)."""
    digits = f"{number:0{width}x}"
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in digits)


def _forms(value: str) -> set[str]:
    # httpcore logs headers as bytes reprs, which escape quotes and non-ASCII their own way.
    return {value, quote(value, safe=""), json.dumps(value)[1:-1], repr(value.encode())[2:-1]}


def _char(char: str) -> str:
    """A regex for one character of a secret as it may appear escaped, in part or whole."""
    if char.isascii() and char.isalnum():
        return char
    forms = {re.escape(char), re.escape(json.dumps(char)[1:-1])}
    # %2B or %2b in a URL; \u002b in JSON (some encoders escape +, /, = and the like); \/.
    forms.add("".join(f"%{_hex(byte, 2)}" for byte in char.encode()))
    if ord(char) <= 0xFFFF:
        forms.add(rf"\\u{_hex(ord(char), 4)}")
    if char == "/":
        forms.add(r"\\/")
    return f"(?:{'|'.join(sorted(forms, key=len, reverse=True))})"


def _any_form(value: str) -> str:
    """A regex matching `value` with any mix of URL and JSON escapes, or as a bytes repr."""
    flexible = "".join(_char(char) for char in value)
    literal = "|".join(re.escape(form) for form in sorted(_forms(value), key=len, reverse=True))
    return f"{flexible}|{literal}"


def _needles(value: str) -> set[str]:
    """Substrings every escaped form of `value` contains, for `redact`'s cheap first test."""
    runs = _ALNUM_RUN.findall(value)
    # Escapes never touch letters and digits, so the longest run of them survives every form.
    return {max(runs, key=len)} if runs else _forms(value)


class Redactor:
    """Replaces credentials in text: known token shapes plus exact values registered at start-up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # How many times each secret was registered: `unregister` undoes one registration, so a
        # value registered twice (say, a token also set as a static secret) stays hidden.
        self._counts: dict[str, int] = {}
        # The substrings that betray a secret and the pattern that finds it, swapped as one
        # tuple: `redact` runs on other threads too (aiosqlite logs from its worker), so it must
        # never see a set that is being changed, nor a pattern that does not match its needles.
        self._state: tuple[frozenset[str], re.Pattern[str] | None] = (frozenset(), None)

    def register(self, value: str) -> None:
        """Hide this exact value, and its URL-, JSON- and bytes-escaped forms, from now on."""
        if not value:
            return
        with self._lock:
            self._counts[value] = self._counts.get(value, 0) + 1
            self._rebuild()

    def unregister(self, value: str) -> None:
        """Undo one `register(value)`: the value shows again once no registration is left."""
        with self._lock:
            left = self._counts.pop(value, 0) - 1
            if left > 0:
                self._counts[value] = left
            self._rebuild()

    def _rebuild(self) -> None:
        needles: set[str] = set()
        for value in self._counts:
            needles |= _needles(value)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(self._counts, key=len, reverse=True)
        exact = re.compile("|".join(_any_form(value) for value in ordered)) if ordered else None
        self._state = (frozenset(needles), exact)

    def redact(self, text: str) -> str:
        """Return `text` with every credential replaced by [redacted]."""
        needles, exact = self._state
        # Plain substring tests first: far cheaper than the regex they spare.
        if exact is not None and any(needle in text for needle in needles):
            text = exact.sub(REDACTED, text)
        lowered = _fold(text)
        for pattern, replacement, words in _PATTERNS:
            if any(word in lowered for word in words):
                text = pattern.sub(replacement, text)
        return text

    def redact_value(self, value: Any, key: str = "") -> Any:
        """Redact strings inside an `extra` value; values under secret-sounding keys go whole."""
        if isinstance(value, str):
            return REDACTED if _SECRET_KEY.search(key) else self.redact(value)
        if isinstance(value, Mapping):
            return {k: self.redact_value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_value(item, key) for item in value]
        return value


_redactor = Redactor()


def register_secret(value: str) -> None:
    """Hide this exact value in every log line and `redact` result from now on."""
    _redactor.register(value)


def unregister_secret(value: str) -> None:
    """Undo one `register_secret(value)`, for a secret that can no longer be used."""
    _redactor.unregister(value)


def redact(text: str, limit: int | None = None) -> str:
    """`text` redacted as log lines are, then clipped to `limit` characters (for Slack text)."""
    # Redact before clipping: a registered secret cut in half would no longer match.
    text = _redactor.redact(text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def new_correlation_id() -> str:
    """Start a correlation id for the current request or scan and return it."""
    value = secrets.token_hex(4)
    correlation_id.set(value)
    return value


class CorrelationFilter(logging.Filter):
    """Stamps each record with the correlation id of the context that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = correlation_id.get()
        return True


class RedactionFilter(logging.Filter):
    """Redacts the formatted message, the traceback, the stack and `extra` values of a record."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or _redactor

    def filter(self, record: logging.LogRecord) -> bool:
        redact = self._redactor.redact
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format string
            message = f"{record.msg} (log arguments did not match the format)"
        # Redact after %-formatting: a secret may arrive through the arguments.
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in _extras(record).items():
            setattr(record, key, self._redactor.redact_value(value, key))
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [correlation id] message key=value…`, any traceback on the same line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name]
        if cid := getattr(record, "correlation_id", None):
            parts.append(f"[{cid}]")
        parts.append(record.getMessage())
        parts.extend(f"{key}={_text_value(value)}" for key, value in _extras(record).items())
        if trace := _trace(record):
            parts.append(f"| {trace}")
        # One line per record, so that a log collector keeps a traceback in one entry.
        return " ".join(parts).replace("\r", "").replace("\n", "\\n")


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation id, exc, extras."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if cid := getattr(record, "correlation_id", None):
            payload["correlation_id"] = cid
        if trace := _trace(record):
            payload["exc"] = trace
        for key, value in _extras(record).items():
            if key not in payload and _json_safe(value):
                payload[key] = value
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(
    fmt: str = "text", level: str = "INFO", stream: IO[str] | None = None
) -> None:
    """Send every record to `stream` (default stderr) as one redacted text or JSON line."""
    global _installed  # logging configuration is process-wide by nature
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())

    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(numeric)
    _installed = handler
    # httpx logs every request at INFO; at one KPS poll a minute that is noise unless debugging.
    logging.getLogger("httpx").setLevel(
        logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING
    )


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _trace(record: logging.LogRecord) -> str:
    text = record.exc_text or ""
    if record.exc_info and not text:
        text = _FORMATTER.formatException(record.exc_info)
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


def _text_value(value: Any) -> str:
    """An `extra` value for a text line: bare when that cannot be misread, else JSON-quoted."""
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    if _json_safe(value):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    # The redaction filter reaches only strings inside extras; an object's str() is new text.
    return json.dumps(redact(str(value), _OBJECT_LIMIT), ensure_ascii=False)


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
