"""Pure Block Kit builders: mrkdwn escaping, Slack's size limits and the paging button values."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from bot.errors import KPSAPIError, KPSBadResponse, KPSConnectionError, KPSError, KPSTimeout
from bot.tasks import Task, operation_label

# Action ids: handlers register these exact strings. Stale-notice buttons will use `kps_stale_*`.
ACTION_PREVIOUS: Final = "kps_page_previous"
ACTION_NEXT: Final = "kps_page_next"
ACTION_REFRESH: Final = "kps_page_refresh"
ACTION_SHARE: Final = "kps_page_share"
ACTION_RETRY: Final = "kps_page_retry"
ACTION_LIST: Final = "kps_home_list"
# A click on one of these replaces the message holding the button with the page its PageRef names.
# Share (posts a copy to the channel) and List (Home tab, which has no response_url) carry a
# PageRef too but are handled apart.
PAGING_ACTIONS: Final = (ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_RETRY)

MAX_PAGE_SIZE: Final = 20  # CONTRACT: PAGE_SIZE is 1-20; 20 tasks x 2 blocks stay under 50 blocks
# As bot.intent.MAX_QUERY. Four buttons carry the words, so they count four times in a page.
MAX_QUERY_CHARS: Final = 200
MAX_OFFSET: Final = 1_000_000_000
MESSAGE_MAX_BLOCKS: Final = 50  # docs.slack.dev/reference/block-kit/blocks
# Slack answers msg_blocks_too_long near 13k characters of blocks (bolt-js#2509); keep a margin.
MESSAGE_MAX_CHARS: Final = 12_000

_SECTION_TEXT: Final = 3000
_CONTEXT_TEXT: Final = 2000
_HEADER_TEXT: Final = 150
_BUTTON_TEXT: Final = 75
_BUTTON_VALUE: Final = 2000
_FALLBACK_TEXT: Final = 400  # top-level `text`: notifications show one short line
_PROBLEMS_SHOWN: Final = 10
# Clock skew between KPS and the bot: a start this little in the future still reads "just now".
_SKEW: Final = timedelta(seconds=60)

_HEADER_ALL: Final = "Running key-pair tasks"
_USAGE_LINES: Final = (
    "`/kps` or `/kps tasks`: the first page of running key-pair tasks",
    "`/kps tasks &lt;words&gt;`: only tasks whose server or key pair name contains the words",
    "`/kps help`: this help",
    "`@kps-bot tasks`: the same list, from a mention in any channel the bot is in",
)

Block = dict[str, Any]
_Block = Block

# C0/C1 controls, DEL, the Unicode line/paragraph separators and the bidi overrides and isolates
# (which can make a name render reversed): all break a one-line name, so each becomes a space.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone surrogate cannot be sent as UTF-8
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,40}$")


class BadButtonValue(ValueError):
    """A button value that is not a PageRef this bot wrote."""


def escape(text: str) -> str:
    """Escape text for mrkdwn (`&`, `<`, `>` only) and turn control characters into spaces."""
    text = _SURROGATE.sub("\ufffd", text)
    text = _CONTROL.sub(" ", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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


def format_date(moment: datetime) -> str:
    """A Slack date token shown in the reader's time zone, with a plain UTC fallback."""
    fallback = format_utc(moment)
    utc = _as_utc(moment)
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
    utc = _as_utc(moment)
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
    age = _age(started_at, now)
    if age is None:
        return "unknown"
    if age < timedelta(minutes=1):
        return "just now"
    return format_duration(age)


def payload_chars(payload: dict[str, Any]) -> int:
    """A payload's size as Slack's total limit counts it: characters (not bytes) of its JSON."""
    return len(json.dumps(payload, ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class Message:
    """A Slack message: `text` is the notification fallback, `blocks` what the client shows."""

    text: str
    blocks: tuple[_Block, ...]

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("a message needs a non-empty fallback text")
        if len(self.blocks) > MESSAGE_MAX_BLOCKS:
            raise ValueError(f"{len(self.blocks)} blocks, Slack takes {MESSAGE_MAX_BLOCKS}")
        size = payload_chars(self.as_payload())
        if size > MESSAGE_MAX_CHARS:
            raise ValueError(f"message JSON is {size} characters, limit {MESSAGE_MAX_CHARS}")

    def as_payload(self) -> dict[str, Any]:
        """Keyword arguments for `respond()` or `chat.postMessage` (a copy, safe to change)."""
        return {"text": self.text, "blocks": copy.deepcopy(list(self.blocks))}


@dataclass(frozen=True, slots=True)
class PageRef:
    """What a paging button carries: where the page starts, its size and the filter words."""

    offset: int = 0
    page_size: int = 10
    query: str = ""
    # Who shared the page into the channel: its Next/Previous keep saying so and offer no Share.
    shared_by: str = ""

    def __post_init__(self) -> None:
        if type(self.offset) is not int or not 0 <= self.offset <= MAX_OFFSET:
            raise ValueError(f"offset must be a whole number 0-{MAX_OFFSET}")
        if type(self.page_size) is not int or not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page size must be a whole number 1-{MAX_PAGE_SIZE}")
        if not isinstance(self.query, str) or len(self.query) > MAX_QUERY_CHARS:
            raise ValueError(f"query must be text of at most {MAX_QUERY_CHARS} characters")
        # Control characters would cost 7 characters each in every button's JSON, and a lone
        # surrogate cannot be sent as UTF-8: both become what escape() shows for them.
        clean = _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", self.query))
        object.__setattr__(self, "query", clean)
        if not isinstance(self.shared_by, str) or (
            self.shared_by and not _USER_ID.match(self.shared_by)
        ):
            raise ValueError("shared_by must be a Slack user id")

    def encode(self) -> str:
        """Compact versioned JSON for a button value; at most ~1.3k characters, Slack takes 2000."""
        data: dict[str, Any] = {"v": 1, "o": self.offset, "n": self.page_size}
        if self.query:
            data["q"] = self.query
        if self.shared_by:
            data["s"] = self.shared_by
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, value: str) -> PageRef:
        """Read a button value written by `encode`; anything else raises `BadButtonValue`."""
        if not isinstance(value, str):
            raise BadButtonValue(f"button value must be text, got {type(value).__name__}")
        if len(value) > _BUTTON_VALUE:
            raise BadButtonValue(f"button value is {len(value)} characters, at most 2000 expected")
        try:
            data = json.loads(value, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:
            raise BadButtonValue(f"button value is not the bot's JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BadButtonValue("button value must be a JSON object")
        version = data.get("v")
        if type(version) is not int or version != 1:
            raise BadButtonValue(f"unknown button value version: {_short(version)}")
        unknown = sorted(set(data) - {"v", "o", "n", "q", "s"})
        if unknown:
            raise BadButtonValue(f"unknown keys in button value: {_short(', '.join(unknown))}")
        offset, size, query = data.get("o"), data.get("n"), data.get("q", "")
        shared_by = data.get("s", "")
        if type(offset) is not int:
            raise BadButtonValue(f"offset must be a whole number, got {_short(offset)}")
        if type(size) is not int:
            raise BadButtonValue(f"page size must be a whole number, got {_short(size)}")
        if not isinstance(query, str):
            raise BadButtonValue(f"query must be text, got {_short(query)}")
        if not isinstance(shared_by, str):
            raise BadButtonValue(f"shared_by must be text, got {_short(shared_by)}")
        try:
            return cls(offset=offset, page_size=size, query=query, shared_by=shared_by)
        except ValueError as exc:
            raise BadButtonValue(str(exc)) from None


@dataclass(frozen=True, slots=True)
class PageContext:
    """Where and when a page was read, and when a task counts as stale."""

    project_id: str
    region: str | None
    fetched_at: datetime
    now: datetime
    stale_after: timedelta

    def __post_init__(self) -> None:
        if self.now.tzinfo is None or self.fetched_at.tzinfo is None:
            raise ValueError("now and fetched_at must be timezone-aware (UTC)")


@dataclass(frozen=True, slots=True)
class HomeSummary:
    """What the Home tab shows: counts, the oldest task, and anything that went wrong."""

    running: int
    stale: int
    oldest: Task | None
    fetched_at: datetime | None
    problems: tuple[str, ...] = ()
    error: KPSError | None = None


# --- task pages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Clips:
    """How many escaped characters each KPS string may take on a page."""

    name: int
    ident: int
    # Last resort: ids go into the task's section instead of a context block, dates as plain text.
    compact: bool = False


# Tried in order until the page fits MESSAGE_MAX_CHARS: ordinary names fit the first; 20 tasks with
# 10,000-character names and a 200-character filter of quotes still fit the last (see the tests).
_CLIP_TIERS: Final = (
    _Clips(150, 100),
    _Clips(80, 64),
    _Clips(48, 40),
    _Clips(32, 36),
    _Clips(20, 24),
    _Clips(12, 16),
    _Clips(12, 16, compact=True),
    _Clips(6, 8, compact=True),
)


def build_page(
    tasks: Sequence[Task],
    *,
    total: int,
    ref: PageRef,
    ctx: PageContext,
    shared_by: str | None = None,
) -> Message:
    """One page of running tasks with its range, the age of each task and paging buttons."""
    shared_by = shared_by or ref.shared_by or None
    if len(tasks) > ref.page_size:
        raise ValueError(f"{len(tasks)} tasks for a page of {ref.page_size}")
    # KPS counts and lists in two steps; never claim fewer tasks than the page holds.
    total = max(total, 0, ref.offset + len(tasks) if tasks else 0)
    text = _page_fallback(tasks, total, ref)
    blocks: list[_Block] = []
    for clips in _CLIP_TIERS:
        blocks = _page_blocks(tasks, total, ref, ctx, shared_by, clips)
        if payload_chars({"text": text, "blocks": blocks}) <= MESSAGE_MAX_CHARS:
            break
    return Message(text=text, blocks=tuple(blocks))


def _page_blocks(
    tasks: Sequence[Task],
    total: int,
    ref: PageRef,
    ctx: PageContext,
    shared_by: str | None,
    clips: _Clips,
) -> list[_Block]:
    blocks: list[_Block] = [header_block(_page_title(ref.query))]
    if tasks:
        first, last = ref.offset + 1, ref.offset + len(tasks)
        blocks.append(section_block(f"Showing *{first}–{last} of {total}* {_noun(ref.query)}"))
    elif total == 0:
        blocks.append(section_block(_empty_words(ref.query)))
    else:
        blocks.append(
            section_block(
                f"Nothing from task {ref.offset + 1} on any more: {total} {_noun(ref.query)}"
                " in all. Go back a page or refresh."
            )
        )
    where = _where_and_when(ctx, "Fetched", ctx.fetched_at)
    if any(_is_stale(task.started_at, ctx) for task in tasks):
        where += f" · stale: running {format_duration(ctx.stale_after)} or longer"
    blocks.append(context_block(where))
    if total == 0 and ref.query:
        blocks.append(
            context_block(
                "Filter words match server and key pair names. Try fewer words, or `/kps tasks`"
                " for every running task."
            )
        )
    if shared_by is not None:
        blocks.append(context_block(f"Shared by {mention(shared_by)}"))
    if tasks:
        blocks.append(divider_block())
        for task in tasks:
            blocks.extend(_task_blocks(task, ctx, clips))
        blocks.append(divider_block())
    blocks.append(actions_block(_page_buttons(len(tasks), total, ref, shared_by)))
    return blocks


def _task_blocks(task: Task, ctx: PageContext, clips: _Clips) -> list[_Block]:
    name = safe_text(task.server_name, clips.name) or "(no name)"
    keypair = code_span(task.keypair_name, clips.name)
    operation = safe_text(operation_label(task.operate_type), clips.name) or "unknown operation"
    if task.started_at is None:
        started = "unknown"
    else:
        started = format_utc(task.started_at) if clips.compact else format_date(task.started_at)
    line = f"{operation} · started {started} · running {format_age(task.started_at, ctx.now)}"
    if _is_stale(task.started_at, ctx):
        line += " · :warning: *stale*"
    task_id, server_id = (
        code_span(task.task_id, clips.ident),
        code_span(task.server_id, clips.ident),
    )
    ids = f"Task {task_id} · Server {server_id}"
    if clips.compact:
        return [section_block(f"*{name}* · key pair {keypair}\n{line}\n{ids}")]
    return [section_block(f"*{name}* · key pair {keypair}\n{line}"), context_block(ids)]


def _page_buttons(shown: int, total: int, ref: PageRef, shared_by: str | None) -> list[_Block]:
    size = ref.page_size
    buttons: list[_Block] = []
    if ref.offset > 0:
        last_start = (total - 1) // size * size if total else 0
        back = min(max(0, ref.offset - size), last_start)
        buttons.append(button("← Previous", ACTION_PREVIOUS, _moved(ref, back)))
    if ref.offset + shown < total and ref.offset + size <= MAX_OFFSET:
        buttons.append(button("Next →", ACTION_NEXT, _moved(ref, ref.offset + size)))
    here = ref if total else _moved(ref, 0)
    buttons.append(button("↻ Refresh", ACTION_REFRESH, here))
    if shared_by is None and shown:
        buttons.append(button("Share in channel", ACTION_SHARE, ref))
    return buttons


def _page_title(query: str) -> str:
    if not query:
        return _HEADER_ALL
    # `Tasks matching ""` takes 17 characters of the header's 150.
    return f'Tasks matching "{clip(escape(query), _HEADER_TEXT - 17)}"'


def _page_fallback(tasks: Sequence[Task], total: int, ref: PageRef) -> str:
    title = _page_title(ref.query)
    if tasks:
        return f"{title}: {ref.offset + 1}–{ref.offset + len(tasks)} of {total}"
    if total == 0:
        return _empty_words(ref.query)
    return f"{title}: none from {ref.offset + 1} on, {total} in all"


def _noun(query: str) -> str:
    return f'tasks matching "{clip(escape(query), 120)}"' if query else "running tasks"


def _empty_words(query: str) -> str:
    if query:
        return f'No running tasks match "{clip(escape(query), 120)}"'
    return "No running key-pair tasks"


def _moved(ref: PageRef, offset: int) -> PageRef:
    return PageRef(offset=offset, page_size=ref.page_size, query=ref.query, shared_by=ref.shared_by)


# --- errors, help, notices --------------------------------------------------------------------

# An action id, when a handler passes one instead of words, becomes what the click tried to do.
_ACTION_WORDS: Final = {
    ACTION_PREVIOUS: "load the previous page",
    ACTION_NEXT: "load the next page",
    ACTION_REFRESH: "refresh the list",
    ACTION_SHARE: "share the list",
    ACTION_RETRY: "list running tasks",
    ACTION_LIST: "list running tasks",
}


def build_error(error: KPSError, *, ref: PageRef | None, action: str) -> Message:
    """A KPS failure in words, with KPS's code, message and request id, and a Retry button."""
    doing = escape(_ACTION_WORDS.get(action, action)).strip() or "list running tasks"
    doing = clip(doing, 100)
    summary = f"Could not {doing}: {_failure_words(error)}"
    blocks: list[_Block] = [section_block(f":warning: {summary}"), *_failure_blocks(error)]
    if ref is not None:
        blocks.append(actions_block([button("↻ Retry", ACTION_RETRY, ref, primary=True)]))
    text = clip(f"Could not {doing}: {_failure_line(error)}", _FALLBACK_TEXT)
    return Message(text=text, blocks=tuple(blocks))


def _failure_blocks(error: KPSError) -> list[_Block]:
    details = _failure_details(error)
    blocks = [section_block(details)] if details else []
    return [*blocks, context_block(_failure_hint(error))]


def build_help() -> Message:
    """How to use `/kps` and the mention."""
    return Message(text="How to use /kps", blocks=tuple(_usage_blocks("*How to use `/kps`*")))


def build_usage_error(text: str) -> Message:
    """An unknown command, quoted back safely, followed by the usage."""
    quoted = code_span(text, 200) if text.strip() else "that"
    blocks = _usage_blocks(f"I don't know {quoted}. This is what I understand:")
    return Message(
        text=clip(f"I don't know {quoted}. Try /kps help", _FALLBACK_TEXT), blocks=tuple(blocks)
    )


def build_notice(text: str) -> Message:
    """A one-line notice, e.g. "Something went wrong on our side"."""
    words = clip(escape(text).strip(), _SECTION_TEXT)
    if not words:
        raise ValueError("a notice needs some words")
    return Message(text=clip(words, _FALLBACK_TEXT), blocks=(section_block(words),))


def _usage_blocks(intro: str) -> list[_Block]:
    lines = "\n".join(f"• {line}" for line in _USAGE_LINES)
    return [
        section_block(intro),
        section_block(lines),
        context_block(
            "Pages have Previous, Next and Refresh buttons; Share posts a page to the channel."
        ),
    ]


def _failure_words(error: KPSError) -> str:
    if isinstance(error, KPSTimeout):
        return "KPS is not answering (timed out)."
    if isinstance(error, KPSConnectionError):
        return "KPS cannot be reached (the connection failed)."
    if isinstance(error, KPSBadResponse):
        return f"KPS sent an answer the bot cannot read (HTTP {error.status})."
    if isinstance(error, KPSAPIError):
        service = safe_text(error.service, 40) or "KPS"
        return f"{service} answered HTTP {error.status}{_status_words(error.status)}."
    return "KPS failed."


def _status_words(status: int) -> str:
    words = {400: "bad request", 401: "not authorised", 403: "forbidden", 404: "not found"}
    if status in words:
        return f" ({words[status]})"
    if status == 429:
        return " (too many requests)"
    if status >= 500:
        return " (server error)"
    return ""


def _failure_details(error: KPSError) -> str:
    if isinstance(error, KPSAPIError):
        lines = [f"HTTP status: {error.status}"]
        if error.error_code:
            lines.append(f"Error code: {code_span(error.error_code, 200)}")
        if error.error_msg:
            lines.append(f"Message: {code_span(error.error_msg, 1000)}")
        lines.append(f"Request id: {_request_id(error.request_id)}")
        return "\n".join(lines)
    if isinstance(error, KPSBadResponse):
        detail = code_span(error.detail, 1000)
        return f"Detail: {detail}\nRequest id: {_request_id(error.request_id)}"
    return f"Detail: {code_span(str(error), 1000)}" if str(error).strip() else ""


def _failure_line(error: KPSError) -> str:
    # Mobile notifications show only the fallback text, so it names KPS's code and message too.
    if isinstance(error, KPSAPIError) and (error.error_code or error.error_msg):
        said = safe_text(f"{error.error_code[:200]} {error.error_msg[:200]}", 200)
        return f"{_failure_words(error)} {said}"
    return _failure_words(error)


def _request_id(request_id: str | None) -> str:
    return code_span(request_id, 200) if request_id else "none sent"


def _failure_hint(error: KPSError) -> str:
    if isinstance(error, KPSTimeout):
        return "KPS may be slow or overloaded; retry in a moment."
    if isinstance(error, KPSConnectionError):
        return "Check KPS_ENDPOINT and the network between the bot and Huawei Cloud."
    if isinstance(error, KPSBadResponse):
        return (
            "KPS or a proxy in between sent something unexpected; quote the request id to support."
        )
    if isinstance(error, KPSAPIError):
        status = error.status
        if status == 401:
            return (
                "The credentials were refused: check KPS_AUTH_TOKEN (an IAM token lasts 24 h), "
                "the AK/SK pair, or the IAM user name, password and domain."
            )
        if status == 403:
            return (
                "The credentials lack permission: the IAM user needs `kps::getRunningTask` in "
                "project HUAWEICLOUD_SDK_PROJECT_ID (or the account is frozen)."
            )
        if status == 404:
            return "Check KPS_ENDPOINT and HUAWEICLOUD_SDK_PROJECT_ID."
        if status == 429:
            return "KPS is throttling requests; wait a minute, then retry."
        if status >= 500:
            return "KPS has trouble on its side; retry later, and quote the request id to support."
    return "Retry in a moment; if it keeps failing, ask whoever runs the bot to check its log."


# --- Home tab ---------------------------------------------------------------------------------


def build_home(summary: HomeSummary, ctx: PageContext, *, page_size: int = 10) -> dict[str, Any]:
    """The Home tab view: how many tasks run and are stale, the oldest one, problems, a button."""
    blocks: list[_Block] = [header_block("Key-pair tasks")]
    if summary.error is not None:
        words = _failure_words(summary.error)
        blocks.append(section_block(f":warning: Could not read running tasks: {words}"))
        blocks.extend(_failure_blocks(summary.error))
    else:
        blocks.append(section_block(_home_counts(summary, ctx)))
        if summary.oldest is not None:
            blocks.append(section_block(_home_oldest(summary.oldest, ctx)))
    if summary.fetched_at is not None:
        blocks.append(context_block(_where_and_when(ctx, "Updated", summary.fetched_at)))
    if summary.problems:
        blocks.append(section_block(_home_problems(summary.problems)))
    first = PageRef(offset=0, page_size=page_size)
    blocks.append(actions_block([button("List running tasks", ACTION_LIST, first, primary=True)]))
    return {"type": "home", "blocks": blocks}


def _home_counts(summary: HomeSummary, ctx: PageContext) -> str:
    if summary.running <= 0:
        return "No key-pair tasks are running."
    noun = "task is" if summary.running == 1 else "tasks are"
    line = f"*{summary.running}* key-pair {noun} running"
    line += (
        f" · *{max(summary.stale, 0)}* stale (running {format_duration(ctx.stale_after)} or longer)"
    )
    return line


def _home_oldest(task: Task, ctx: PageContext) -> str:
    name = safe_text(task.server_name, 150) or "(no name)"
    operation = safe_text(operation_label(task.operate_type), 80) or "unknown operation"
    age = format_age(task.started_at, ctx.now)
    keypair = code_span(task.keypair_name, 150)
    return f"Oldest: *{name}* · key pair {keypair} · {operation} · running {age}"


def _home_problems(problems: tuple[str, ...]) -> str:
    lines = [f"• {safe_text(p, 250) or '(no details)'}" for p in problems[:_PROBLEMS_SHOWN]]
    if len(problems) > _PROBLEMS_SHOWN:
        lines.append(f"…and {len(problems) - _PROBLEMS_SHOWN} more")
    return "*Problems*\n" + "\n".join(lines)


# --- shared pieces ----------------------------------------------------------------------------


def _where_and_when(ctx: PageContext, verb: str, moment: datetime) -> str:
    parts = [f"Project {code_span(ctx.project_id, 100)}"]
    if ctx.region:
        parts.append(f"Region {code_span(ctx.region, 60)}")
    parts.append(f"{verb} {format_date(moment)}")
    return " · ".join(parts)


def code_span(text: str, limit: int) -> str:
    # Inside a code span `*` and `_` are shown as they are; a backtick would end the span early,
    # so it becomes U+02CB, which looks the same.
    inner = safe_text(text, limit).replace("`", "\u02cb")
    return f"`{inner}`" if inner else "(empty)"


def safe_text(text: str, limit: int) -> str:
    # Escaping never shortens text, so the first limit + 1 characters decide what is shown; the
    # rest of a 10,000-character name is never escaped.
    return clip(escape(text.strip()[: limit + 1]), limit).strip()


def mention(user_id: str) -> str:
    # Slack user ids are U… or W…; anything else is shown as text, never as a mention.
    return f"<@{user_id}>" if _USER_ID.match(user_id) else safe_text(user_id, 100) or "someone"


def _is_stale(started_at: datetime | None, ctx: PageContext) -> bool:
    age = _age(started_at, ctx.now)
    return age is not None and age >= ctx.stale_after


def _age(started_at: datetime | None, now: datetime) -> timedelta | None:
    start, end = _as_utc(started_at), _as_utc(now)
    if start is None or end is None:
        return None
    try:
        age = end - start
    except OverflowError:
        return None
    if age < -_SKEW:
        return None
    return max(age, timedelta(0))


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # KPS times are UTC; a naive one was parsed without its zone
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _short(value: object) -> str:
    if isinstance(value, (dict, list)):  # never repr a nested value: it may be 1000 levels deep
        return "a JSON object" if isinstance(value, dict) else "a JSON list"
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"duplicate key {_short(key)}")
        data[key] = value
    return data


def mrkdwn(text: str, limit: int) -> dict[str, Any]:
    # verbatim: Slack must not auto-link URLs or channel names found in KPS strings.
    return {"type": "mrkdwn", "text": clip(text, limit), "verbatim": True}


def plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


def header_block(text: str) -> _Block:
    return {"type": "header", "text": plain(text, _HEADER_TEXT)}


def section_block(text: str) -> _Block:
    return {"type": "section", "text": mrkdwn(text, _SECTION_TEXT)}


def context_block(text: str) -> _Block:
    return {"type": "context", "elements": [mrkdwn(text, _CONTEXT_TEXT)]}


def divider_block() -> _Block:
    return {"type": "divider"}


def actions_block(buttons: list[_Block]) -> _Block:
    return {"type": "actions", "elements": buttons}


class ButtonValue(Protocol):
    """Anything a button carries: it writes itself as the button's value."""

    def encode(self) -> str: ...


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
