"""The task pages, help, error replies and Home tab, built from `bot.blockkit`; `PageRef` too."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from bot.blockkit import (
    FALLBACK_TEXT_MAX,
    HEADER_TEXT_MAX,
    SECTION_TEXT_MAX,
    USER_ID,
    BadButtonValue,
    Block,
    Clips,
    Message,
    ViewContext,
    actions_block,
    button,
    clip,
    code_span,
    context_block,
    decode_value,
    divider_block,
    encode_value,
    escape,
    fit,
    format_age,
    format_date,
    format_duration,
    format_utc,
    header_block,
    int_field,
    mention,
    one_line,
    plural,
    safe_text,
    section_block,
    text_field,
    upstream_span,
    upstream_words,
    where_and_when,
)
from bot.errors import (
    KPSAPIError,
    KPSBadResponse,
    KPSConnectionError,
    KPSError,
    KPSResponseTooLarge,
    KPSThrottled,
    KPSTimeout,
)
from bot.tasks import Task, is_stale, operation_label

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
_PROBLEMS_SHOWN: Final = 10
_HOME_MAX_BLOCKS: Final = 100  # Slack's limit for a Home view
HOME_NOTE_BLOCK: Final = "kps_home_note"  # the block_id of the Home tab's one note
# Team and app ids go into a slack:// link unescaped, so only their documented shape is used.
_SLACK_ID: Final = re.compile(r"^[AT][A-Z0-9]{2,40}$")
_HEADER_ALL: Final = "Running key-pair tasks"
_USAGE_LINES: Final = (
    "`/kps` or `/kps tasks`: the first page of running key-pair tasks",
    "`/kps tasks &lt;words&gt;`: only tasks whose server or key pair name contains the words",
    "`/kps help`: this help",
    "`@kps-bot tasks`: the same list, from a mention in any channel the bot is in",
)


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
        object.__setattr__(self, "query", one_line(self.query))
        if not isinstance(self.shared_by, str) or (
            self.shared_by and not USER_ID.match(self.shared_by)
        ):
            raise ValueError("shared_by must be a Slack user id")

    def encode(self) -> str:
        """Compact versioned JSON for a button value; at most ~1.3k characters, Slack takes 2000."""
        data: dict[str, Any] = {"o": self.offset, "n": self.page_size}
        if self.query:
            data["q"] = self.query
        if self.shared_by:
            data["s"] = self.shared_by
        return encode_value(data)

    @classmethod
    def parse(cls, value: str) -> PageRef:
        """Read a button value written by `encode`; anything else raises `BadButtonValue`."""
        data = decode_value(value, ("o", "n", "q", "s"))
        try:
            return cls(
                offset=int_field(data, "o", "offset"),
                page_size=int_field(data, "n", "page size"),
                query=text_field(data, "q", "query"),
                shared_by=text_field(data, "s", "shared_by"),
            )
        except ValueError as exc:
            raise BadButtonValue(str(exc)) from None


@dataclass(frozen=True, slots=True)
class HomeSummary:
    """What the Home tab shows: counts, the oldest task, and anything that went wrong."""

    running: int
    stale: int
    oldest: Task | None
    fetched_at: datetime | None
    problems: tuple[str, ...] = ()
    error: KPSError | None = None
    queued: int = 0  # READY_x tasks: listed by KPS as running, not started yet


# --- task pages -------------------------------------------------------------------------------


# Tried in order until the page fits MESSAGE_MAX_CHARS: ordinary names fit the first; 20 tasks with
# 10,000-character names and a 200-character filter of quotes still fit the last (see the tests).
_CLIP_TIERS: Final = tuple(
    Clips(name=name, ident=ident, operation=name, compact=compact)
    for name, ident, compact in (
        (150, 100, False),
        (80, 64, False),
        (48, 40, False),
        (32, 36, False),
        (20, 24, False),
        (12, 16, False),
        (12, 16, True),
        (6, 8, True),
    )
)


def build_page(
    tasks: Sequence[Task],
    *,
    total: int,
    ref: PageRef,
    ctx: ViewContext,
    shared_by: str | None = None,
    rejected: int = 0,
) -> Message:
    """One page of running tasks with its range, the age of each task and paging buttons.

    `rejected` counts task records KPS sent for this page that could not be read.
    """
    shared_by = shared_by or ref.shared_by or None
    if len(tasks) > ref.page_size:
        raise ValueError(f"{len(tasks)} tasks for a page of {ref.page_size}")
    # KPS counts and lists in two steps; never claim fewer tasks than the page holds.
    total = max(total, 0, ref.offset + len(tasks) if tasks else 0)
    text = _page_fallback(tasks, total, ref)
    return fit(
        text,
        _CLIP_TIERS,
        lambda clips: _with_rejected(
            _page_blocks(tasks, total, ref, ctx, shared_by, clips), rejected
        ),
    )


def _with_rejected(blocks: list[Block], rejected: int) -> list[Block]:
    """`blocks` with a line, above the task list, saying how many records were left out."""
    if rejected <= 0:
        return blocks
    noun, verb = ("task record", "is") if rejected == 1 else ("task records", "are")
    line = context_block(f":warning: {rejected} {noun} could not be read and {verb} not shown.")
    at = next((i for i, b in enumerate(blocks) if b["type"] in ("divider", "actions")), len(blocks))
    return [*blocks[:at], line, *blocks[at:]]


def _page_blocks(
    tasks: Sequence[Task],
    total: int,
    ref: PageRef,
    ctx: ViewContext,
    shared_by: str | None,
    clips: Clips,
) -> list[Block]:
    blocks: list[Block] = [header_block(_page_title(ref.query))]
    if tasks:
        line = _showing(ref.offset + 1, ref.offset + len(tasks), total, ref.query)
        queued = sum(1 for task in tasks if task.queued)
        if queued:
            verb = "is" if queued == 1 else "are"
            line += f" · *{queued}* on this page {verb} queued, not started yet"
        blocks.append(section_block(line))
    elif total == 0:
        blocks.append(section_block(_empty_words(ref.query)))
    else:
        blocks.append(
            section_block(
                f"Nothing from task {ref.offset + 1} on any more: {total} {_noun(ref.query, total)}"
                " in all. Go back a page or refresh."
            )
        )
    where = where_and_when(ctx, "Fetched", ctx.fetched_at or ctx.now)
    if any(_is_stale(task, ctx) for task in tasks):
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


def _task_blocks(task: Task, ctx: ViewContext, clips: Clips) -> list[Block]:
    name = safe_text(task.server_name, clips.name) or "(no name)"
    keypair = code_span(task.keypair_name, clips.name)
    operation = safe_text(operation_label(task.operate_type), clips.operation)
    operation = operation or "unknown operation"
    if task.started_at is None:
        started = "unknown"
    else:
        started = format_utc(task.started_at) if clips.compact else format_date(task.started_at)
    age = format_age(task.started_at, ctx.now)
    if not task.queued:
        line = f"{operation} · started {started} · running {age}"
    elif age in ("just now", "unknown"):
        line = f"{operation} · *queued* {started} · not started yet"
    else:
        line = f"{operation} · *queued* {started} · waiting {age} to start"
    if _is_stale(task, ctx):
        line += " · :warning: *stale*"
    task_id, server_id = (
        code_span(task.task_id, clips.ident),
        code_span(task.server_id, clips.ident),
    )
    ids = f"Task {task_id} · Server {server_id}"
    if clips.compact:
        return [section_block(f"*{name}* · key pair {keypair}\n{line}\n{ids}")]
    return [section_block(f"*{name}* · key pair {keypair}\n{line}"), context_block(ids)]


def _page_buttons(shown: int, total: int, ref: PageRef, shared_by: str | None) -> list[Block]:
    size = ref.page_size
    buttons: list[Block] = []
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
    return f'Tasks matching "{clip(escape(query), HEADER_TEXT_MAX - 17)}"'


def _showing(first: int, last: int, total: int, query: str) -> str:
    """The page's range as a person writes it: "1–10 of 37", one task of many, or the only."""
    if first < last:
        return f"Showing *{first}–{last} of {total}* {_noun(query)}"
    if total == 1:
        return f"Showing the only {_noun(query, 1)}"
    return f"Showing task *{first}* of the *{total}* {_noun(query)}"


def _page_fallback(tasks: Sequence[Task], total: int, ref: PageRef) -> str:
    title = _page_title(ref.query)
    first, last = ref.offset + 1, ref.offset + len(tasks)
    if tasks and first < last:
        return f"{title}: {first}–{last} of {total}"
    if tasks:
        return f"{title}: task {first} of {total}"
    if total == 0:
        return _empty_words(ref.query)
    return f"{title}: none from {ref.offset + 1} on, {total} in all"


def _noun(query: str, count: int = 2) -> str:
    tasks = plural(count, "task")
    return f'{tasks} matching "{clip(escape(query), 120)}"' if query else f"running {tasks}"


def _empty_words(query: str) -> str:
    if query:
        return f'No running tasks match "{clip(escape(query), 120)}"'
    return "No running key-pair tasks"


def _moved(ref: PageRef, offset: int) -> PageRef:
    return PageRef(offset=offset, page_size=ref.page_size, query=ref.query, shared_by=ref.shared_by)


def build_loading(ref: PageRef) -> Message:
    """What a page says while KPS is slow to answer; the page replaces it in place."""
    # The page's own title, so the message does not jump when the tasks arrive; no buttons,
    # so nobody clicks a page that is not there yet.
    first = ref.offset + 1
    which = f"tasks from {first} on" if ref.offset else "the running tasks"
    words = f":hourglass_flowing_sand: Loading… asking KPS for {which}."
    return Message(
        text=f"{_page_title(ref.query)}: loading…",
        blocks=(
            header_block(_page_title(ref.query)),
            section_block(words),
            context_block("KPS is taking a moment; this message is replaced when it answers."),
        ),
    )


# --- errors, help, one-line replies ---------------------------------------------------------

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
    blocks: list[Block] = [section_block(f":warning: {summary}"), *_failure_blocks(error)]
    if ref is not None:
        blocks.append(actions_block([button("↻ Retry", ACTION_RETRY, ref, primary=True)]))
    text = clip(f"Could not {doing}: {_failure_line(error)}", FALLBACK_TEXT_MAX)
    return Message(text=text, blocks=tuple(blocks))


def _failure_blocks(error: KPSError) -> list[Block]:
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
        text=clip(f"I don't know {quoted}. Try /kps help", FALLBACK_TEXT_MAX), blocks=tuple(blocks)
    )


def build_line(text: str) -> Message:
    """A one-line reply, e.g. "Something went wrong on our side"."""
    words = clip(escape(text).strip(), SECTION_TEXT_MAX)
    if not words:
        raise ValueError("a one-line reply needs some words")
    return Message(text=clip(words, FALLBACK_TEXT_MAX), blocks=(section_block(words),))


def _usage_blocks(intro: str) -> list[Block]:
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
    service = _service(error)
    if isinstance(error, KPSResponseTooLarge):
        return f"{service} sent an answer too large to read (over {error.limit:,} bytes)."
    if isinstance(error, KPSBadResponse):
        return f"{service} sent an answer the bot cannot read (HTTP {error.status})."
    if isinstance(error, KPSThrottled):
        return f"{service} is throttling requests (HTTP {error.status}, too many requests)."
    if isinstance(error, KPSAPIError):
        return f"{service} answered HTTP {error.status}{_status_words(error.status)}."
    return "KPS failed."


def _service(error: KPSError) -> str:
    """Who failed: "KPS" or "IAM" (the token service), as the error says."""
    service = getattr(error, "service", "KPS")
    return safe_text(service, 40) if isinstance(service, str) and service.strip() else "KPS"


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
        # What KPS, IAM or a gateway said may echo the request, credentials included (issue
        # 10): every upstream string is redacted and clipped before it is shown.
        if error.error_code:
            lines.append(f"Error code: {upstream_span(error.error_code, 200)}")
        if error.error_msg:
            lines.append(f"Message: {upstream_span(error.error_msg)}")
        lines.append(f"Request id: {_request_id(error.request_id)}")
        return "\n".join(lines)
    if isinstance(error, KPSBadResponse):
        detail = upstream_span(error.detail)
        return f"Detail: {detail}\nRequest id: {_request_id(error.request_id)}"
    return f"Detail: {upstream_span(str(error))}" if str(error).strip() else ""


def _failure_line(error: KPSError) -> str:
    # Mobile notifications show only the fallback text, so it names KPS's code and message too.
    if isinstance(error, KPSAPIError) and (error.error_code or error.error_msg):
        said = upstream_words(f"{error.error_code[:200]} {error.error_msg}", 200)
        return f"{_failure_words(error)} {said}"
    return _failure_words(error)


def _request_id(request_id: str | None) -> str:
    return upstream_span(request_id, 200) if request_id else "none sent"


def _failure_hint(error: KPSError) -> str:
    if isinstance(error, KPSTimeout):
        return "KPS may be slow or overloaded; retry in a moment."
    if isinstance(error, KPSConnectionError):
        return "Check KPS_ENDPOINT and the network between the bot and Huawei Cloud."
    service = _service(error)
    if isinstance(error, KPSResponseTooLarge):
        return (
            f"A page of tasks is far smaller than {error.limit:,} bytes, so {service} or a proxy in"
            " between misbehaved; quote the request id to support."
        )
    if isinstance(error, KPSBadResponse):
        return (
            f"{service} or a proxy in between sent something unexpected; quote the request id"
            " to support."
        )
    if isinstance(error, KPSThrottled):
        wait = error.retry_after
        if wait is None or wait <= 0:
            return f"{service} asks for fewer requests; wait a minute, then retry."
        return f"{service} asks to wait {_wait_words(wait)}; retry after that."
    if isinstance(error, KPSAPIError):
        status = error.status
        if service == "IAM" and status in (400, 401, 403):
            return (
                "IAM refused the token request: check HUAWEICLOUD_USERNAME, HUAWEICLOUD_PASSWORD,"
                " HUAWEICLOUD_DOMAIN and IAM_ENDPOINT."
            )
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
            return f"{service} is throttling requests; wait a minute, then retry."
        if status >= 500:
            return (
                f"{service} has trouble on its side; retry later, and quote the request id to"
                " support."
            )
    return "Retry in a moment; if it keeps failing, ask whoever runs the bot to check its log."


def _wait_words(seconds: float) -> str:
    """A Retry-After in words: "30 s", "2 min", "1 h 5 min" (whole seconds, rounded up)."""
    whole = max(1, math.ceil(seconds))
    if whole < 60:
        return f"{whole} s"
    # format_duration rounds down; a wait shown shorter than asked would invite a refusal.
    return format_duration(timedelta(minutes=math.ceil(whole / 60)))


# --- Home tab ---------------------------------------------------------------------------------


def build_home(summary: HomeSummary, ctx: ViewContext, *, page_size: int = 10) -> dict[str, Any]:
    """The Home tab view: how many tasks run and are stale, the oldest one, problems, a button."""
    blocks: list[Block] = [header_block("Key-pair tasks")]
    if summary.error is not None:
        words = _failure_words(summary.error)
        blocks.append(section_block(f":warning: Could not read running tasks: {words}"))
        blocks.extend(_failure_blocks(summary.error))
    else:
        blocks.append(section_block(_home_counts(summary, ctx)))
        if summary.oldest is not None:
            blocks.append(section_block(_home_oldest(summary.oldest, ctx)))
    if summary.fetched_at is not None:
        blocks.append(context_block(where_and_when(ctx, "Updated", summary.fetched_at)))
    if summary.problems:
        blocks.append(section_block(_home_problems(summary.problems)))
    blocks.append(_home_button(page_size))
    return {"type": "home", "blocks": blocks}


def build_home_note(view: Mapping[str, Any], note: str, *, page_size: int = 10) -> dict[str, Any]:
    """The Home view Slack last showed, with `note` under it in place of any earlier note.

    A click on Home carries the view it was made on; redrawing that view keeps the counts the
    user was reading instead of asking KPS again just to add a line.
    """
    shown = view.get("blocks")
    kept: list[Block] = [
        block
        for block in (shown if isinstance(shown, list) else [])
        if isinstance(block, dict) and block.get("block_id") != HOME_NOTE_BLOCK
    ]
    if not kept:
        kept = [header_block("Key-pair tasks"), _home_button(page_size)]
    marked = {**context_block(note), "block_id": HOME_NOTE_BLOCK}
    return {"type": "home", "blocks": [*kept[: _HOME_MAX_BLOCKS - 1], marked]}


def list_sent_note(*, team: str | None, app: str | None, at: datetime) -> str:
    """Home's word that the list went to the user's Messages tab with the bot, and when."""
    where = "Messages tab"
    if team and app and _SLACK_ID.match(team) and _SLACK_ID.match(app):
        where = f"<slack://app?team={team}&amp;id={app}&amp;tab=messages|Messages tab>"
    return (
        f":envelope_with_arrow: Sent the list of running tasks to your {where} ({format_date(at)})."
    )


def list_not_sent_note(error: str) -> str:
    """Home's word that the list could not be sent to the user's Messages tab."""
    said = code_span(error, 100) if error.strip() else "an error"
    return (
        f":warning: Could not send the list to your Messages tab: Slack answered {said}."
        " `/kps` in any channel shows it too."
    )


def _home_button(page_size: int) -> Block:
    first = PageRef(offset=0, page_size=page_size)
    return actions_block([button("List running tasks", ACTION_LIST, first, primary=True)])


def _home_counts(summary: HomeSummary, ctx: ViewContext) -> str:
    queued = f"*{summary.queued}* queued, not started yet" if summary.queued > 0 else ""
    if summary.running <= 0:
        return (
            f"No key-pair tasks are running · {queued}"
            if queued
            else "No key-pair tasks are running."
        )
    noun = "task is" if summary.running == 1 else "tasks are"
    line = f"*{summary.running}* key-pair {noun} running"
    line += (
        f" · *{max(summary.stale, 0)}* stale (running {format_duration(ctx.stale_after)} or longer)"
    )
    return f"{line} · {queued}" if queued else line


def _home_oldest(task: Task, ctx: ViewContext) -> str:
    name = safe_text(task.server_name, 150) or "(no name)"
    operation = safe_text(operation_label(task.operate_type), 80) or "unknown operation"
    age = format_age(task.started_at, ctx.now)
    keypair = code_span(task.keypair_name, 150)
    return f"Oldest: *{name}* · key pair {keypair} · {operation} · running {age}"


def _home_problems(problems: tuple[str, ...]) -> str:
    # A problem may quote an upstream error (the watcher's last one): redacted like it.
    lines = [f"• {upstream_words(p, 250) or '(no details)'}" for p in problems[:_PROBLEMS_SHOWN]]
    if len(problems) > _PROBLEMS_SHOWN:
        lines.append(f"…and {len(problems) - _PROBLEMS_SHOWN} more")
    return "*Problems*\n" + "\n".join(lines)


# --- shared pieces ----------------------------------------------------------------------------


def _is_stale(task: Task, ctx: ViewContext) -> bool:
    return is_stale(task, now=ctx.now, stale_after=ctx.stale_after)
