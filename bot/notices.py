"""Pure Block Kit builders for stale-task notices, their thread replies and the watcher's health.

Built from `bot.blockkit`: every KPS string is escaped and clipped, every message fits Slack's
limits (50 blocks, 3000 characters a section, about 12k characters of JSON in all), and button
values are built and read by one type, `NoticeRef`, through the one strict codec.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from bot.alerts import Alert, NoticeState, WatchState, task_order
from bot.blockkit import (
    FALLBACK_TEXT_MAX,
    MESSAGE_MAX_BLOCKS,
    MESSAGE_MAX_CHARS,
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
    payload_chars,
    plural,
    safe_text,
    section_block,
    upstream_words,
    where_and_when,
)
from bot.logs import redact
from bot.tasks import TaskStatus, operation_label, status_label

ACTION_ACK: Final = "kps_stale_ack"
ACTION_SNOOZE_PREFIX: Final = "kps_stale_snooze_"
ACTION_STALE_LIST: Final = "kps_stale_list"
SNOOZE_HOURS: Final = (1, 4, 24)
# Action ids must differ within a message, so each snooze length has its own.
SNOOZE_ACTIONS: Final = tuple(f"{ACTION_SNOOZE_PREFIX}{h}h" for h in SNOOZE_HOURS)

NOTICE_SHOWN: Final = 20  # tasks named in the notice itself; the rest go to its thread
LIST_PAGE: Final = 20  # tasks per page of the List button's answer
_REMINDER_SHOWN: Final = 20
_REPLY_BLOCKS: Final = MESSAGE_MAX_BLOCKS - 2  # room for a title and a closing line
_MAX_NOTICE_ID: Final = 2**31 - 1
_MAX_OFFSET: Final = 10_000_000


@dataclass(frozen=True, slots=True)
class NoticeRef:
    """What a notice button carries: the notice, a snooze length or a list offset."""

    notice_id: int
    hours: int = 0
    offset: int = 0
    replace: bool = False  # the List answer's own Previous/Next replace it

    def __post_init__(self) -> None:
        if type(self.notice_id) is not int or not 1 <= self.notice_id <= _MAX_NOTICE_ID:
            raise ValueError("notice id must be a positive whole number")
        if type(self.hours) is not int or (self.hours and self.hours not in SNOOZE_HOURS):
            raise ValueError(f"snooze hours must be one of {SNOOZE_HOURS}")
        if type(self.offset) is not int or not 0 <= self.offset <= _MAX_OFFSET:
            raise ValueError(f"offset must be a whole number 0-{_MAX_OFFSET}")

    def encode(self) -> str:
        """Compact versioned JSON, well under Slack's 2000 characters."""
        data: dict[str, Any] = {"n": self.notice_id}
        if self.hours:
            data["h"] = self.hours
        if self.offset:
            data["o"] = self.offset
        if self.replace:
            data["r"] = 1
        return encode_value(data)

    @classmethod
    def parse(cls, value: object) -> NoticeRef:
        """Read a value `encode` wrote; anything else raises `BadButtonValue`."""
        data = decode_value(value, ("n", "h", "o", "r"))
        replace = int_field(data, "r", "replace", 0)
        if replace not in (0, 1):
            raise BadButtonValue(f"replace must be 0 or 1, got {replace}")
        try:
            return cls(
                notice_id=int_field(data, "n", "notice id"),
                hours=int_field(data, "h", "snooze hours", 0),
                offset=int_field(data, "o", "offset", 0),
                replace=replace == 1,
            )
        except ValueError as exc:
            raise BadButtonValue(str(exc)) from None


# Tried in order until a message fits; the last fits 20 worst-case lines (see the tests).
_TIERS: Final = (
    Clips(name=80, operation=40, ident=64, error=160),
    Clips(name=48, operation=32, ident=40, error=80),
    Clips(name=24, operation=24, ident=24, error=40, compact=True),
    Clips(name=12, operation=16, ident=14, error=16, compact=True),
)


# --- the notice -----------------------------------------------------------------------------------


def ordered(alerts: Sequence[Alert]) -> list[Alert]:
    """The order tasks are shown in: oldest first, as in `bot.stale`."""
    return sorted(alerts, key=task_order)


def build_stale_notice(state: NoticeState, ctx: ViewContext) -> Message:
    """The channel message: the first tasks with their state, progress, ack/snooze buttons."""
    tasks = ordered(state.alerts)
    if not tasks:
        raise ValueError("a stale notice needs at least one task")
    shown = tasks[:NOTICE_SHOWN]
    text = _notice_fallback(tasks, ctx)
    return fit(text, _TIERS, lambda clips: _notice_blocks(state, tasks, shown, ctx, clips))


def _notice_blocks(
    state: NoticeState,
    tasks: list[Alert],
    shown: list[Alert],
    ctx: ViewContext,
    clips: Clips,
) -> list[Block]:
    notice = state.notice
    total = len(tasks)
    running = sum(1 for a in tasks if a.running)
    blocks: list[Block] = [header_block(_title(total, running))]
    blocks.append(section_block(_summary(tasks, ctx)))
    blocks.append(context_block(where_and_when(ctx, "Noticed", notice.created_at)))
    blocks.append(divider_block())
    blocks.extend(section_block(_task_line(a, ctx, clips)) for a in shown)
    rest = total - len(shown)
    if rest:
        blocks.append(
            section_block(
                f"…and *{rest}* more stale {plural(rest, 'task')}, listed in this thread"
                " (or use *List all*)."
            )
        )
    blocks.append(divider_block())
    status = _status_line(state, ctx, running)
    if status:
        blocks.append(context_block(status))
    buttons: list[Block] = []
    if running:
        if notice.acked_by is None:
            buttons.append(button("Acknowledge", ACTION_ACK, NoticeRef(notice.id), primary=True))
        for hours, action in zip(SNOOZE_HOURS, SNOOZE_ACTIONS, strict=True):
            buttons.append(button(f"Snooze {hours} h", action, NoticeRef(notice.id, hours=hours)))
    if rest:
        buttons.append(button(f"List all {total}", ACTION_STALE_LIST, NoticeRef(notice.id)))
    if buttons:
        blocks.append(actions_block(buttons))
    return blocks


def _title(total: int, running: int) -> str:
    if running == 0:
        return (
            "Stale key-pair task: finished" if total == 1 else "Stale key-pair tasks: all finished"
        )
    if total == 1:
        return ":hourglass: A key-pair task is stale"
    return f":hourglass: {total} key-pair tasks are stale"


def _summary(tasks: Sequence[Alert], ctx: ViewContext) -> str:
    total = len(tasks)
    went = "A key-pair task" if total == 1 else f"*{total}* key-pair tasks"
    line = f"{went} went stale: running *{format_duration(ctx.stale_after)}* or longer."
    done = [a for a in tasks if not a.running]
    if not done:
        return line
    if total == 1:
        return f"{line}\nIt {_one_ending(done[0])}."
    succeeded = sum(1 for a in done if _phase(a) == "SUCCESS")
    failed = sum(1 for a in done if _phase(a) == "FAILED")
    unknown = len(done) - succeeded - failed
    parts = []
    if succeeded:
        parts.append(f"{succeeded} succeeded")
    if failed:
        parts.append(f"{failed} failed")
    if unknown:
        parts.append(f"{unknown} no longer running (outcome unknown)")
    if len(done) < total:
        lead = f"{len(done)} of {total} finished"
    else:
        lead = "Both finished" if total == 2 else f"All {total} finished"
    return f"{line}\n{lead}: {', '.join(parts)}."


def _one_ending(alert: Alert) -> str:
    """How the only task of a notice ended, after "It"."""
    phase = _phase(alert)
    if phase == "SUCCESS":
        return "finished and succeeded"
    if phase == "FAILED":
        return "finished and failed"
    return "is no longer running (outcome unknown)"


def _status_line(state: NoticeState, ctx: ViewContext, running: int) -> str:
    notice = state.notice
    parts = []
    if notice.acked_by is not None:
        when = f" {format_date(notice.acked_at)}" if notice.acked_at else ""
        parts.append(f":eyes: Acknowledged by {mention(notice.acked_by)}{when}")
    if notice.snoozed_until is not None and notice.snoozed_until > ctx.now and running:
        who = f" by {mention(notice.snoozed_by)}" if notice.snoozed_by else ""
        parts.append(f":zzz: Reminders snoozed{who} until {format_date(notice.snoozed_until)}")
    elif ctx.renotify_after is not None and running and notice.acked_by is None:
        parts.append(
            f"Reminders every {format_duration(ctx.renotify_after)} in the thread"
            " until acknowledged"
        )
    return " · ".join(parts)


def _notice_fallback(tasks: Sequence[Alert], ctx: ViewContext) -> str:
    total = len(tasks)
    names = ", ".join(safe_text(a.server_name, 40) or "(no name)" for a in tasks[:5])
    more = f" and {total - 5} more" if total > 5 else ""
    line = (
        f"{total} key-pair {plural(total, 'task')} running {format_duration(ctx.stale_after)}"
        f" or longer: {names}{more}"
    )
    return clip(line, FALLBACK_TEXT_MAX)


# --- thread replies -------------------------------------------------------------------------------


def build_detail_replies(tasks: Sequence[Alert], ctx: ViewContext) -> list[Message]:
    """The tasks the notice itself has no room for, listed in its thread; none left out."""
    rest = ordered(tasks)[NOTICE_SHOWN:]
    total = len(tasks)
    return _pack(
        rest,
        ctx,
        lambda first, last: f"Stale {_span(NOTICE_SHOWN + first, NOTICE_SHOWN + last, total)}",
        fallback=(
            "The other stale key-pair task"
            if len(rest) == 1
            else f"The other {len(rest)} stale key-pair tasks"
        ),
    )


def build_ending_replies(ended: Sequence[Alert], ctx: ViewContext) -> list[Message]:
    """Thread replies saying how tasks ended and how long they ran; one per ~40 tasks."""
    tasks = ordered(ended)
    count = len(tasks)

    def title(first: int, last: int) -> str:
        if count == 1:
            return "A stale task has ended"
        if first == 1 and last == count:
            return f"{count} stale tasks have ended"
        if first == last:
            return f"Stale task that ended ({first} of {count})"
        return f"Stale tasks that ended ({first}–{last} of {count})"

    fallback = _ending_fallback(tasks)
    return _pack(tasks, ctx, title, fallback=fallback)


def build_reminder(state: NoticeState, ctx: ViewContext) -> Message:
    """A reminder in the notice's thread: what is still running, and for how long."""
    running = [a for a in ordered(state.alerts) if a.running]
    if not running:
        raise ValueError("a reminder needs a running task")
    count = len(running)
    verb = "is" if count == 1 else "are"
    title = f":bell: {count} {plural(count, 'task')} from this notice {verb} still running"
    fallback = f"Reminder: {count} stale key-pair {plural(count, 'task')} still running"
    hint = "Acknowledge or snooze the notice to stop these reminders."
    shown = running[:_REMINDER_SHOWN]
    rest = count - len(shown)
    tail = f"…and {rest} more still running (List all on the notice). {hint}" if rest else hint

    def draw(clips: Clips) -> list[Block]:
        lines = [section_block(_task_line(a, ctx, clips)) for a in shown]
        return [section_block(title), *lines, context_block(tail)]

    return fit(clip(fallback, FALLBACK_TEXT_MAX), _TIERS, draw)


def build_notice_list(state: NoticeState, ctx: ViewContext, *, offset: int) -> Message:
    """One page of a notice's tasks with their state, for the List all button (ephemeral)."""
    tasks = ordered(state.alerts)
    total = len(tasks)
    start = min(max(offset, 0), max(0, (total - 1) // LIST_PAGE * LIST_PAGE))
    page = tasks[start : start + LIST_PAGE]
    notice_id = state.notice.id
    span = _span(start + 1, start + len(page), total)
    title = f"Stale {span} from the notice of {format_date(state.notice.created_at)}"
    buttons: list[Block] = []
    if start > 0:
        back = NoticeRef(notice_id, offset=max(0, start - LIST_PAGE), replace=True)
        buttons.append(button("← Previous", ACTION_STALE_LIST, back))
    if start + len(page) < total:
        ahead = NoticeRef(notice_id, offset=start + LIST_PAGE, replace=True)
        buttons.append(button("Next →", ACTION_STALE_LIST, ahead))
    text = f"Stale {span}"

    def draw(clips: Clips) -> list[Block]:
        lines = [section_block(_task_line(a, ctx, clips)) for a in page]
        return [section_block(title), *lines, *([actions_block(buttons)] if buttons else [])]

    return fit(text, _TIERS, draw)


def build_unknown_notice() -> Message:
    """The answer to a button on a notice the state store no longer holds."""
    words = (
        "This notice is no longer in the bot's state store (it was pruned, or STATE_URL changed),"
        " so it cannot be changed. `/kps` lists the running tasks."
    )
    return Message(text=clip(words, FALLBACK_TEXT_MAX), blocks=(section_block(words),))


def build_notices_off() -> Message:
    """The answer to a notice button on a bot that runs no watcher."""
    words = "Stale-task notices are off on this bot (STALE_CHANNEL_ID is unset)."
    return Message(text=words, blocks=(section_block(words),))


# --- the watcher's own health ---------------------------------------------------------------------


def build_impaired(state: WatchState, ctx: ViewContext, *, poll_interval: float) -> Message:
    """The one notice that watching is impaired: since when, why, and what that means."""
    since = state.failing_since or ctx.now
    error = upstream_words(state.last_error or "unknown error") or "unknown error"
    scans = f"{state.failures} {plural(state.failures, 'scan')}"
    last = "The last scan" if state.failures == 1 else f"The last {scans}"
    lines = (
        f":warning: *Watching for stale key-pair tasks is impaired.* {last} of the running"
        f" tasks failed (since {format_date(since)}).",
        f"Last error: {error}",
        "Until a scan succeeds, new stale tasks are not announced and ended tasks are not"
        f" reported. The bot keeps trying every {_seconds(poll_interval)} and says here when"
        " watching works again.",
    )
    text = clip(f"Watching for stale key-pair tasks is impaired: {scans} failed", FALLBACK_TEXT_MAX)
    return Message(
        text=text,
        blocks=(section_block(lines[0]), section_block(lines[1]), context_block(lines[2])),
    )


def build_recovered(state: WatchState, ctx: ViewContext) -> Message:
    """The one notice that watching works again, after how long."""
    since = state.failing_since
    took = f" after {_took(ctx.now - since)}" if since is not None else ""
    words = (
        f":white_check_mark: *Watching for stale key-pair tasks works again*{took}."
        " Tasks that went stale meanwhile are announced now, and ended ones reported."
    )
    text = f"Watching for stale key-pair tasks works again{took}"
    return Message(text=text, blocks=(section_block(words),))


def watch_problem(state: WatchState) -> str:
    """The Home tab's words for an impaired watcher (plain text; the Home tab escapes it)."""
    since = format_utc(state.failing_since) if state.failing_since else "recently"
    # Redacted before it is cut, and so before the store keeps it: a cut secret goes unseen.
    error = redact((state.last_error or "unknown error")[:20_000])[:200]
    return f"Watching for stale tasks is impaired since {since}: {error}"


# --- task lines -----------------------------------------------------------------------------------


def _task_line(alert: Alert, ctx: ViewContext, clips: Clips) -> str:
    name = safe_text(alert.server_name, clips.name) or "(no name)"
    keypair = code_span(alert.keypair_name, clips.name)
    operation = safe_text(operation_label(alert.operate_type), clips.operation) or "operation"
    task = code_span(alert.task_id, clips.ident)
    if alert.running:
        age = format_age(alert.started_at, ctx.now)
        since = ""
        if alert.started_at is not None and not clips.compact:
            since = f" (since {format_date(alert.started_at)})"
        return (
            f":hourglass_flowing_sand: *{name}* · key pair {keypair} · {operation}"
            f" · running *{age}*{since} · task {task}"
        )
    mark, how = _ending_words(alert, clips)
    return f"{mark} *{name}* · key pair {keypair} · {how} · task {task}"


def _ending_words(alert: Alert, clips: Clips) -> tuple[str, str]:
    ran = _ran(alert)
    outcome = alert.outcome
    if outcome is None:
        return ":black_square_for_stop:", f"no longer running (outcome unknown) · ran {ran}"
    label = safe_text(status_label(outcome), clips.operation) or "ended"
    raw = code_span(outcome, clips.ident)
    phase = _phase(alert)
    if phase == "SUCCESS":
        return ":white_check_mark:", f"{label} ({raw}) after {ran}"
    if phase == "FAILED":
        reason = ""
        said = " ".join(p for p in (alert.error_code, alert.error_msg) if p)
        if said:
            reason = f": {code_span(said, clips.error)}"
        return ":x:", f"*{label}* ({raw}){reason} after {ran}"
    return ":grey_question:", f"ended as {raw} after {ran}"


def _ran(alert: Alert) -> str:
    if alert.started_at is None or alert.finished_at is None:
        return "an unknown time"
    # format_age measures from a start to a moment, as "running 47 min" does.
    ran = format_age(alert.started_at, alert.finished_at)
    if ran == "just now":
        return "under a minute"
    return "an unknown time" if ran == "unknown" else f"about {ran}"


def _phase(alert: Alert) -> str | None:
    if alert.outcome is None:
        return None
    return TaskStatus(alert.task_id, "", alert.outcome).phase


def _ending_fallback(tasks: Sequence[Alert]) -> str:
    if len(tasks) == 1:
        alert = tasks[0]
        name = safe_text(alert.server_name, 60) or "(no name)"
        if alert.outcome is None:
            return clip(f"{name}: no longer running", FALLBACK_TEXT_MAX)
        return clip(f"{name}: {safe_text(status_label(alert.outcome), 80)}", FALLBACK_TEXT_MAX)
    return f"{len(tasks)} stale key-pair tasks have ended"


# --- packing lines into messages ------------------------------------------------------------------


def _pack(
    tasks: Sequence[Alert],
    ctx: ViewContext,
    title: Callable[[int, int], str],
    *,
    fallback: str,
) -> list[Message]:
    """Split task lines over as few messages as fit Slack's limits, in order, none dropped."""
    if not tasks:
        return []
    text = clip(escape(fallback), FALLBACK_TEXT_MAX)
    clips = _TIERS[0]
    lines = [section_block(_task_line(a, ctx, clips)) for a in tasks]
    # A title costs at most this much: one section of up to ~200 characters.
    budget = MESSAGE_MAX_CHARS - payload_chars({"text": text, "blocks": []}) - 400
    groups: list[list[Block]] = []
    current: list[Block] = []
    size = 0
    for block in lines:
        cost = payload_chars(block) + 2
        if current and (len(current) >= _REPLY_BLOCKS or size + cost > budget):
            groups.append(current)
            current, size = [], 0
        current.append(block)
        size += cost
    groups.append(current)
    messages = []
    first = 1
    for group in groups:
        last = first + len(group) - 1
        blocks = [section_block(f"*{title(first, last)}*"), *group]
        messages.append(Message(text=text, blocks=tuple(blocks)))
        first = last + 1
    return messages


# --- small pieces ---------------------------------------------------------------------------------


def _span(first: int, last: int, total: int) -> str:
    """A range of tasks, "tasks 1–20 of 45", or "task 21 of 21" when it holds one."""
    if first >= last:
        return f"task {first} of {total}"
    return f"tasks {first}–{last} of {total}"


def _took(delta: timedelta) -> str:
    """How long something took: seconds below a minute ("40 s"), else as `format_duration`."""
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{max(1, int(seconds))} s"
    return format_duration(delta)


def _seconds(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return format_duration(timedelta(seconds=seconds))
    return f"{seconds:g} s"
