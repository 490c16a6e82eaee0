"""Block Kit primitives: mrkdwn escaping, clipping, date words, blocks, `Message`, Slack's limits.

Every builder (pages, Home tab, stale notices) stands on these: one escape, one clip, one way to
shrink a message until it fits, one strict codec for button values. Nothing here imports a
builder, the store or an HTTP library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypeVar

from bot.logs import redact
from bot.tasks import as_utc, elapsed

MESSAGE_MAX_BLOCKS: Final = 50  # docs.slack.dev/reference/block-kit/blocks
# Slack answers msg_blocks_too_long near 13k characters of blocks (bolt-js#2509); keep a margin.
MESSAGE_MAX_CHARS: Final = 12_000
SECTION_TEXT_MAX: Final = 3000
HEADER_TEXT_MAX: Final = 150
BUTTON_VALUE_MAX: Final = 2000
FALLBACK_TEXT_MAX: Final = 400  # top-level `text`: notifications show one short line
_CONTEXT_TEXT: Final = 2000
_BUTTON_TEXT: Final = 75

Block = dict[str, Any]

# C0/C1 controls, DEL, the Unicode line/paragraph separators and the bidi overrides and isolates
# (which can make a name render reversed): all break a one-line name, so each becomes a space.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate cannot be sent as UTF-8
USER_ID: Final = re.compile(r"^[UW][A-Z0-9]{2,40}$")
# mrkdwn has no escape for its formatting characters, and `verbatim` only stops auto-linking
# (research/slack-bolt.md), so in KPS text each becomes a look-alike, as jsx-slack's <Escape>
# does inside links. `_` and `~` between two letters or digits never format and stay, so
# names such as web_server_01 read (and copy) as KPS spelled them; `*` could close the bold
# a name is shown in, and a backtick opens code anywhere, so those always go.
_FORMATTING = re.compile(r"[*`]|[_~](?![^\W_])|(?<![^\W_])[_~]")
_LOOK_ALIKE: Final = {"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"}
# How far past what is shown an upstream message is searched for secrets: a secret that starts
# inside the shown part is replaced whole as long as it is shorter than this (IAM security
# tokens run to a few thousand characters), and a 16 MB error body is not scanned in full.
_SECRET_SPAN: Final = 16_384
UPSTREAM_TEXT_MAX: Final = 300  # an upstream error message as shown in Slack


class BadButtonValue(ValueError):
    """A button value that is not one this bot wrote."""


# --- text ---------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Control characters become spaces and lone surrogates U+FFFD: what `escape` shows."""
    return _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", text))


def escape(text: str) -> str:
    """Escape text for mrkdwn (`&`, `<`, `>` only) and turn control characters into spaces."""
    return one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """Shorten escaped text to at most `limit` characters with `…`, never inside `&…;` or `<…>`."""
    if limit < 1:
        raise ValueError(f"clip limit must be at least 1, got {limit}")
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    bracket = cut.rfind("<")
    if bracket != -1 and ">" not in cut[bracket:]:
        cut = cut[:bracket]
    return cut.rstrip() + "…"


def safe_text(text: str, limit: int) -> str:
    """Untrusted text escaped, clipped to `limit` characters, its `*_~` and backticks inert."""
    return _FORMATTING.sub(lambda found: _LOOK_ALIKE[found.group()], _escaped(text, limit))


def _escaped(text: str, limit: int) -> str:
    # Escaping never shortens text, so the first limit + 1 characters decide what is shown; the
    # rest of a 10,000-character name is never escaped.
    return clip(escape(text.strip()[: limit + 1]), limit).strip()


def code_span(text: str, limit: int) -> str:
    """Untrusted text as an inline code span, or "(empty)"."""
    # Inside a code span `*`, `_` and `~` are shown as they are, so ids stay exact; a backtick
    # would end the span early, so it becomes U+02CB, which looks the same.
    inner = _escaped(text, limit).replace("`", "\u02cb")
    return f"`{inner}`" if inner else "(empty)"


def upstream_span(text: str, limit: int = UPSTREAM_TEXT_MAX) -> str:
    """A KPS or IAM message for Slack: secrets redacted, then clipped, as an inline code span."""
    # Redacted before escaping and clipping: `&` in a password becomes `&amp;` and a clip may
    # cut a secret in half, and either would hide it from the redaction at the edge.
    return code_span(redact(text[: limit + _SECRET_SPAN]), limit)


def upstream_words(text: str, limit: int = UPSTREAM_TEXT_MAX) -> str:
    """`upstream_span` as plain mrkdwn text (`safe_text`), for a line that is not code."""
    return safe_text(redact(text[: limit + _SECRET_SPAN]), limit)


def redact_payload(payload: Any) -> Any:
    """A copy of a JSON-able Slack payload with secrets redacted in every string, as in logs."""
    if isinstance(payload, str):
        return _redact_shown(payload)
    if isinstance(payload, Mapping):
        return {key: redact_payload(value) for key, value in payload.items()}
    if isinstance(payload, list | tuple):
        return [redact_payload(item) for item in payload]
    return payload


def _redact_shown(text: str) -> str:
    redacted = redact(text)
    # A secret holding `&`, `<` or `>` reaches mrkdwn escaped, where its registered forms do
    # not match; read back as the user will see it, it does. Such a string is then escaped
    # whole again, so a date token or mention in it shows as text: rare, and safe.
    shown = redacted.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    if shown == redacted:
        return redacted
    cleaned = redact(shown)
    return redacted if cleaned == shown else escape(cleaned)


def mention(user_id: str) -> str:
    """A user mention for a Slack user id; anything else is shown as text, never as a mention."""
    return f"<@{user_id}>" if USER_ID.match(user_id) else safe_text(user_id, 100) or "someone"


def plural(count: int, word: str) -> str:
    """`word` with an s unless there is exactly one."""
    return word if count == 1 else word + "s"


# --- dates and durations -----------------------------------------------------------------------


def format_date(moment: datetime) -> str:
    """A Slack date token shown in the reader's time zone, with a plain UTC fallback."""
    fallback = format_utc(moment)
    utc = as_utc(moment)
    if utc is None:
        return fallback
    try:
        unix = int(utc.timestamp())
    except (OverflowError, ValueError, OSError):
        return fallback
    if unix < 0:  # Slack's date token takes no negative timestamps
        return fallback
    return f"<!date^{unix}^{{date_short_pretty}} {{time}}|{fallback}>"


def format_utc(moment: datetime) -> str:
    """A moment as plain text, "2024-05-01 09:46 UTC"; naive times are taken as UTC."""
    utc = as_utc(moment)
    if utc is None:
        return "unknown"
    return f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d} {utc.hour:02d}:{utc.minute:02d} UTC"


def format_duration(delta: timedelta) -> str:
    """A duration in words: "45 min", "2 h 14 min", "3 d 4 h" (rounded down to the minute)."""
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def format_age(started_at: datetime | None, now: datetime) -> str:
    """How long a task has run: "just now", "45 min", …; "unknown" without a usable start."""
    age = elapsed(started_at, now)
    if age is None:
        return "unknown"
    if age < timedelta(minutes=1):
        return "just now"
    return format_duration(age)


# --- where and when ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewContext:
    """Where the tasks are, when they were read and are drawn, and when one counts as stale."""

    project_id: str
    region: str | None
    now: datetime
    stale_after: timedelta
    fetched_at: datetime | None = None  # when KPS was read; None: at `now`
    renotify_after: timedelta | None = None  # stale notices only: the reminder interval

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or (
            self.fetched_at is not None and self.fetched_at.tzinfo is None
        ):
            raise ValueError("now and fetched_at must be timezone-aware (UTC)")


def where_and_when(ctx: ViewContext, verb: str, moment: datetime) -> str:
    """The context line under a title: project, region, and `verb` with the moment."""
    parts = [f"Project {code_span(ctx.project_id, 100)}"]
    if ctx.region:
        parts.append(f"Region {code_span(ctx.region, 60)}")
    parts.append(f"{verb} {format_date(moment)}")
    return " · ".join(parts)


# --- messages and their limits -----------------------------------------------------------------


def payload_chars(payload: dict[str, Any]) -> int:
    """A payload's size as Slack's total limit counts it: characters (not bytes) of its JSON."""
    return len(json.dumps(payload, ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class Message:
    """A Slack message: `text` is the notification fallback, `blocks` what the client shows."""

    text: str
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("a message needs a non-empty fallback text")
        if len(self.blocks) > MESSAGE_MAX_BLOCKS:
            raise ValueError(f"{len(self.blocks)} blocks, Slack takes {MESSAGE_MAX_BLOCKS}")
        size = payload_chars({"text": self.text, "blocks": list(self.blocks)})
        if size > MESSAGE_MAX_CHARS:
            raise ValueError(f"message JSON is {size} characters, limit {MESSAGE_MAX_CHARS}")

    def as_payload(self) -> dict[str, Any]:
        """Keyword arguments for `respond()` or `chat.postMessage`: a redacted copy."""
        # Every way a Message leaves (response_url, chat.postMessage/update, an ack, the
        # outbox's stored body) goes through here, so none can carry a secret to Slack.
        payload: dict[str, Any] = redact_payload({"text": self.text, "blocks": list(self.blocks)})
        return payload


@dataclass(frozen=True, slots=True, kw_only=True)
class Clips:
    """How many escaped characters each KPS string may take in one task line."""

    name: int
    ident: int
    operation: int
    error: int = 0
    # Shorter lines: ids share the task's section, dates go plain or are left out.
    compact: bool = False


_Tier = TypeVar("_Tier")


def fit(text: str, tiers: Sequence[_Tier], render: Callable[[_Tier], list[Block]]) -> Message:
    """The message `render` draws at the first tier that fits Slack's limits (else the last)."""
    blocks: list[Block] = []
    for tier in tiers:
        blocks = render(tier)
        if payload_chars({"text": text, "blocks": blocks}) <= MESSAGE_MAX_CHARS:
            break
    return Message(text=text, blocks=tuple(blocks))


# --- button values -----------------------------------------------------------------------------


class ButtonValue(Protocol):
    """Anything a button carries: it writes itself as the button's value."""

    def encode(self) -> str: ...


def encode_value(fields: dict[str, Any]) -> str:
    """Compact versioned JSON for a button value; `decode_value` reads it back."""
    return json.dumps({"v": 1, **fields}, separators=(",", ":"), ensure_ascii=False)


def decode_value(value: object, keys: Collection[str]) -> dict[str, Any]:
    """The fields of a value `encode_value` wrote, only `keys` allowed; else `BadButtonValue`."""
    if not isinstance(value, str):
        raise BadButtonValue(f"button value must be text, got {type(value).__name__}")
    if len(value) > BUTTON_VALUE_MAX:
        raise BadButtonValue(f"button value is {len(value)} characters, at most 2000 expected")
    try:
        data = json.loads(value, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise BadButtonValue(f"button value is not the bot's JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadButtonValue("button value must be a JSON object")
    version = data.pop("v", None)
    if type(version) is not int or version != 1:
        raise BadButtonValue(f"unknown button value version: {short_repr(version)}")
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise BadButtonValue(f"unknown keys in button value: {short_repr(', '.join(unknown))}")
    return data


def int_field(data: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    """A whole-number field of a decoded value (never a bool); else `BadButtonValue`."""
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadButtonValue(f"{what} must be a whole number, got {short_repr(value)}")
    return value


def text_field(data: Mapping[str, Any], key: str, what: str) -> str:
    """A text field of a decoded value, "" when absent; else `BadButtonValue`."""
    value = data.get(key, "")
    if not isinstance(value, str):
        raise BadButtonValue(f"{what} must be text, got {short_repr(value)}")
    return value


def short_repr(value: object) -> str:
    """A value for an error message: at most 40 characters, never a nested structure."""
    if isinstance(value, (dict, list)):  # never repr a nested value: it may be 1000 levels deep
        return "a JSON object" if isinstance(value, dict) else "a JSON list"
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {short_repr(key)}")
        data[key] = value
    return data


# --- blocks -------------------------------------------------------------------------------------


def mrkdwn(text: str, limit: int) -> dict[str, Any]:
    """A mrkdwn text object clipped to `limit`."""
    # verbatim: Slack must not auto-link URLs or channel names found in KPS strings.
    return {"type": "mrkdwn", "text": clip(text, limit), "verbatim": True}


def plain(text: str, limit: int) -> dict[str, Any]:
    """A plain_text object clipped to `limit`."""
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


def header_block(text: str) -> Block:
    """A header block, clipped to Slack's 150 characters."""
    return {"type": "header", "text": plain(text, HEADER_TEXT_MAX)}


def section_block(text: str) -> Block:
    """A section block of mrkdwn, clipped to Slack's 3000 characters."""
    return {"type": "section", "text": mrkdwn(text, SECTION_TEXT_MAX)}


def context_block(text: str) -> Block:
    """A context block of one mrkdwn element, clipped to 2000 characters."""
    return {"type": "context", "elements": [mrkdwn(text, _CONTEXT_TEXT)]}


def divider_block() -> Block:
    """A divider."""
    return {"type": "divider"}


def actions_block(buttons: list[Block]) -> Block:
    """An actions block holding `buttons`."""
    return {"type": "actions", "elements": buttons}


def button(label: str, action_id: str, ref: ButtonValue, *, primary: bool = False) -> Block:
    """A button whose value is `ref.encode()`, its label clipped to Slack's 75 characters."""
    element: Block = {
        "type": "button",
        "text": plain(label, _BUTTON_TEXT),
        "action_id": action_id,
        "value": ref.encode(),
    }
    if primary:
        element["style"] = "primary"
    return element
