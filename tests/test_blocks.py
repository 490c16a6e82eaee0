"""Block Kit builders: exact content of pages, errors, help and Home, escaping and button values."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot.blockkit import (
    BadButtonValue,
    Message,
    ViewContext,
    clip,
    escape,
    format_age,
    format_date,
    format_duration,
)
from bot.blocks import (
    ACTION_LIST,
    ACTION_NEXT,
    ACTION_PREVIOUS,
    ACTION_REFRESH,
    ACTION_RETRY,
    ACTION_SHARE,
    HOME_NOTE_BLOCK,
    MAX_QUERY_CHARS,
    PAGING_ACTIONS,
    HomeSummary,
    PageRef,
    build_error,
    build_help,
    build_home,
    build_home_note,
    build_line,
    build_loading,
    build_page,
    build_usage_error,
    list_not_sent_note,
    list_sent_note,
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
from bot.logs import REDACTED, register_secret
from bot.tasks import Task

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PROJECT = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

# --- checks shared with test_blocks_properties ------------------------------------------------

# The bot's own markup: its date tokens and user mentions; everything else with < or & must be
# one of the three entities. Written here independently of bot/blocks.py on purpose.
_DATE_TOKEN = re.compile(
    r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC>"
)
_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")
# The Home note's link to the bot's Messages tab (Slack's documented deep link).
_DEEP_LINK = re.compile(
    r"<slack://app\?team=T[A-Z0-9]+&amp;id=A[A-Z0-9]+&amp;tab=messages\|Messages tab>"
)
_ENTITY = re.compile(r"&(?:amp|lt|gt);")


def text_values(node: Any) -> Iterator[str]:
    """Every string under a "text" key, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                yield value
            else:
                yield from text_values(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from text_values(item)


def assert_escaped(text: str) -> None:
    """No `<`, `>` or `&` survives except the bot's own tokens and the three entities."""
    rest = _ENTITY.sub("", _MENTION.sub("", _DEEP_LINK.sub("", _DATE_TOKEN.sub("", text))))
    assert not re.search(r"[<>&]", rest), f"unescaped markup in {text[:200]!r}"


def assert_valid_blocks(blocks: Sequence[dict[str, Any]], *, max_blocks: int) -> None:
    """Slack's documented limits, checked by hand and by slack_sdk's own validators."""
    assert 1 <= len(blocks) <= max_blocks
    for raw in blocks:
        model = Block.parse(raw)
        assert model is not None, raw
        model.validate_json()
        # to_dict() validates every nested element too (buttons) and drops unknown keys.
        assert model.to_dict() == raw
        _assert_limits(raw)
    for node in _objects(blocks):
        if node.get("type") == "mrkdwn":
            assert node.get("verbatim") is True, node
        if node.get("type") in {"mrkdwn", "plain_text"}:
            assert node["text"].strip(), node
    for text in text_values(list(blocks)):
        assert_escaped(text)


def assert_valid_message(message: Message) -> None:
    """A message Slack takes: blocks, the 12k JSON budget, a non-empty escaped fallback."""
    payload = message.as_payload()
    assert set(payload) == {"text", "blocks"}
    assert payload["text"].strip()
    assert_escaped(payload["text"])
    assert_valid_blocks(payload["blocks"], max_blocks=50)
    assert len(json.dumps(payload, ensure_ascii=False)) <= 12_000


def _assert_limits(block: dict[str, Any]) -> None:
    kind = block["type"]
    if kind == "section":
        if "text" in block:
            assert len(block["text"]["text"]) <= 3000
        fields = block.get("fields", [])
        assert len(fields) <= 10
        assert all(len(f["text"]) <= 2000 for f in fields)
    elif kind == "header":
        assert block["text"]["type"] == "plain_text"
        assert len(block["text"]["text"]) <= 150
    elif kind == "context":
        assert 1 <= len(block["elements"]) <= 10
        assert all(len(e["text"]) <= 2000 for e in block["elements"])
    elif kind == "actions":
        assert 1 <= len(block["elements"]) <= 25
        for button in block["elements"]:
            assert button["type"] == "button"
            assert len(button["text"]["text"]) <= 75
            assert len(button["value"]) <= 2000
            assert len(button["action_id"]) <= 255
    else:
        assert kind == "divider", block


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _objects(item)


def buttons(message: Message) -> dict[str, dict[str, Any]]:
    """The message's buttons by action id."""
    found: dict[str, dict[str, Any]] = {}
    for block in message.blocks:
        if block["type"] == "actions":
            for element in block["elements"]:
                found[element["action_id"]] = element
    return found


def all_text(message: Message) -> str:
    """Everything a reader can see, joined."""
    return "\n".join([message.text, *text_values(list(message.blocks))])


# --- fixtures ----------------------------------------------------------------------------------


def task(n: int = 1, **changes: Any) -> Task:
    values: dict[str, Any] = {
        "task_id": f"3e1a3f4b-0000-4f6e-8a7b-{n:012d}",
        "operate_type": "RUNNING_RESET",
        "started_at": NOW - timedelta(minutes=5),
        "server_name": f"web-{n:02d}",
        "server_id": f"9e1a3f4b-0000-4f6e-8a7b-{n:012d}",
        "keypair_name": f"kp-{n}",
    }
    values.update(changes)
    return Task(**values)


def context(**changes: Any) -> ViewContext:
    values: dict[str, Any] = {
        "project_id": PROJECT,
        "region": "cn-north-4",
        "fetched_at": NOW,
        "now": NOW,
        "stale_after": timedelta(minutes=30),
    }
    values.update(changes)
    return ViewContext(**values)


def page(offset: int, count: int, total: int, *, query: str = "", size: int = 10) -> Message:
    tasks = [task(offset + i + 1) for i in range(count)]
    ref = PageRef(offset=offset, page_size=size, query=query)
    return build_page(tasks, total=total, ref=ref, ctx=context())


# --- pages -------------------------------------------------------------------------------------


def test_middle_page_shows_its_range_and_both_directions() -> None:
    message = page(10, 10, 37)
    assert_valid_message(message)
    assert message.blocks[0]["text"]["text"] == "Running key-pair tasks"
    assert "11–20 of 37" in message.blocks[1]["text"]["text"]
    assert message.text == "Running key-pair tasks: 11–20 of 37"
    found = buttons(message)
    assert list(found) == [ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_SHARE]
    assert "Previous" in found[ACTION_PREVIOUS]["text"]["text"]
    assert "Next" in found[ACTION_NEXT]["text"]["text"]
    assert "Refresh" in found[ACTION_REFRESH]["text"]["text"]
    assert "Share" in found[ACTION_SHARE]["text"]["text"]
    assert PageRef.parse(found[ACTION_PREVIOUS]["value"]) == PageRef(0, 10)
    assert PageRef.parse(found[ACTION_NEXT]["value"]) == PageRef(20, 10)
    assert PageRef.parse(found[ACTION_REFRESH]["value"]) == PageRef(10, 10)
    assert PageRef.parse(found[ACTION_SHARE]["value"]) == PageRef(10, 10)
    for n in range(11, 21):
        assert f"*web-{n:02d}*" in all_text(message)
    assert "web-10" not in all_text(message) and "web-21" not in all_text(message)


def test_first_page_has_no_previous() -> None:
    message = page(0, 10, 37)
    assert_valid_message(message)
    assert "1–10 of 37" in all_text(message)
    assert list(buttons(message)) == [ACTION_NEXT, ACTION_REFRESH, ACTION_SHARE]


def test_last_page_has_no_next() -> None:
    message = page(30, 7, 37)
    assert_valid_message(message)
    assert "31–37 of 37" in all_text(message)
    found = buttons(message)
    assert list(found) == [ACTION_PREVIOUS, ACTION_REFRESH, ACTION_SHARE]
    assert PageRef.parse(found[ACTION_PREVIOUS]["value"]).offset == 20


def test_single_task_page() -> None:
    message = page(0, 1, 1)
    assert_valid_message(message)
    assert message.blocks[1]["text"]["text"] == "Showing the only running task"
    assert message.text == "Running key-pair tasks: task 1 of 1"
    assert "1–1" not in all_text(message)
    assert list(buttons(message)) == [ACTION_REFRESH, ACTION_SHARE]


def test_a_page_of_one_task_names_it_as_a_person_would() -> None:
    # Issue 10: "Showing 41–41 of 41" on the last page, "1 running tasks" for a filter of one.
    last = page(40, 1, 41)
    assert_valid_message(last)
    assert last.blocks[1]["text"]["text"] == "Showing task *41* of the *41* running tasks"
    assert last.text == "Running key-pair tasks: task 41 of 41"
    assert "41–41" not in all_text(last)
    only = page(0, 1, 1, query="web")
    assert only.blocks[1]["text"]["text"] == 'Showing the only task matching "web"'
    gone = build_page([], total=1, ref=PageRef(offset=10), ctx=context())
    assert "1 running task in all" in all_text(gone)


def test_a_queued_task_is_shown_queued_never_stale_and_counted_on_the_page() -> None:
    # Issue 10: a READY_x task waiting 26 min read "running 26 min" (and, past the threshold,
    # "stale"); it has not started.
    waiting = task(1, operate_type="READY_RESET", started_at=NOW - timedelta(minutes=45))
    running = task(2, started_at=NOW - timedelta(minutes=40))
    message = build_page([waiting, running], total=2, ref=PageRef(), ctx=context())
    assert_valid_message(message)
    header = message.blocks[1]["text"]["text"]
    assert (
        header == "Showing *1–2 of 2* running tasks · *1* on this page is queued, not started yet"
    )
    lines = [t for t in text_values(list(message.blocks)) if t.startswith("*web-")]
    assert "Reset key pair · *queued* <!date^" in lines[0]
    assert "waiting 45 min to start" in lines[0]
    assert "running" not in lines[0] and "stale" not in lines[0]
    assert "running 40 min · :warning: *stale*" in lines[1]
    fresh = task(3, operate_type="READY_BIND", started_at=NOW)
    line = all_text(build_page([fresh], total=1, ref=PageRef(), ctx=context()))
    assert "Bind key pair · *queued* <!date^" in line and "not started yet" in line


def test_loading_state_keeps_the_title_and_offers_no_buttons() -> None:
    loading = build_loading(PageRef(offset=10, query="web"))
    assert_valid_message(loading)
    assert loading.blocks[0]["text"]["text"] == 'Tasks matching "web"'
    assert "Loading… asking KPS for tasks from 11 on." in all_text(loading)
    assert buttons(loading) == {}
    first = build_loading(PageRef())
    assert first.text == "Running key-pair tasks: loading…"
    assert "asking KPS for the running tasks" in all_text(first)


def test_empty_state_keeps_refresh() -> None:
    message = page(0, 0, 0)
    assert_valid_message(message)
    assert message.text == "No running key-pair tasks"
    assert "No running key-pair tasks" in message.blocks[1]["text"]["text"]
    found = buttons(message)
    assert list(found) == [ACTION_REFRESH]
    assert PageRef.parse(found[ACTION_REFRESH]["value"]) == PageRef(0, 10)


def test_empty_filter_names_the_words_and_hints() -> None:
    message = page(0, 0, 0, query="web")
    assert_valid_message(message)
    assert message.blocks[0]["text"]["text"] == 'Tasks matching "web"'
    assert message.text == 'No running tasks match "web"'
    assert "Try fewer words" in all_text(message)
    assert list(buttons(message)) == [ACTION_REFRESH]


def test_filter_header_and_buttons_keep_the_words() -> None:
    message = page(10, 10, 25, query="web prod")
    assert_valid_message(message)
    assert message.blocks[0]["text"]["text"] == 'Tasks matching "web prod"'
    assert message.text == 'Tasks matching "web prod": 11–20 of 25'
    for element in buttons(message).values():
        assert PageRef.parse(element["value"]).query == "web prod"


def test_filter_words_are_escaped_everywhere() -> None:
    message = page(0, 1, 1, query="<!here> & co")
    assert_valid_message(message)
    assert message.blocks[0]["text"]["text"] == 'Tasks matching "&lt;!here&gt; &amp; co"'
    assert "<!here>" not in all_text(message)
    # The button keeps the words as typed: it is data for the bot, not text for Slack.
    assert PageRef.parse(buttons(message)[ACTION_REFRESH]["value"]).query == "<!here> & co"


def test_task_section_names_everything_the_contract_asks_for() -> None:
    started = datetime(2024, 5, 1, 9, 46, tzinfo=UTC)
    shown = task(1, started_at=started, keypair_name="kp-prod", operate_type="RUNNING_RESET")
    message = build_page([shown], total=1, ref=PageRef(0, 10), ctx=context())
    assert_valid_message(message)
    section = message.blocks[4]["text"]["text"]
    unix = int(started.timestamp())
    assert section == (
        "*web-01* · key pair `kp-prod`\n"
        f"Reset key pair · started <!date^{unix}^{{date_short_pretty}} {{time}}|"
        "2024-05-01 09:46 UTC> · running 2 h 14 min · :warning: *stale*"
    )
    ids = message.blocks[5]["elements"][0]["text"]
    assert ids == f"Task `{shown.task_id}` · Server `{shown.server_id}`"
    meta = message.blocks[2]["elements"][0]["text"]
    assert f"Project `{PROJECT}`" in meta and "Region `cn-north-4`" in meta
    assert f"Fetched <!date^{int(NOW.timestamp())}^" in meta
    assert "stale: running 30 min or longer" in meta


def test_fresh_task_is_not_marked_stale_and_unknown_start_is_said() -> None:
    fresh = task(1, started_at=NOW - timedelta(minutes=29, seconds=59))
    undated = task(2, started_at=None)
    message = build_page([fresh, undated], total=2, ref=PageRef(0, 10), ctx=context())
    assert_valid_message(message)
    text = all_text(message)
    assert "stale" not in text
    assert "running 29 min" in text
    assert "started unknown · running unknown" in text


def test_region_is_left_out_when_unset() -> None:
    message = build_page([task()], total=1, ref=PageRef(), ctx=context(region=None))
    assert "Region" not in message.blocks[2]["elements"][0]["text"]


def test_kps_strings_cannot_ping_or_link() -> None:
    evil = task(
        1,
        server_name="<!channel> <https://evil.example|click>",
        keypair_name="<@U123> & `x`",
        operate_type="<!everyone>",
        task_id="<#C1>",
        server_id="a&b",
    )
    message = build_page([evil], total=1, ref=PageRef(), ctx=context(project_id="<!here>"))
    assert_valid_message(message)
    text = all_text(message)
    assert "*&lt;!channel&gt; &lt;https://evil.example|click&gt;*" in text
    assert "`&lt;@U123&gt; &amp; ˋxˋ`" in text
    assert "&lt;!everyone&gt;" in text
    assert "`&lt;#C1&gt;`" in text and "`a&amp;b`" in text
    for raw in ("<!channel>", "<!everyone>", "<@U123>", "<#C1>", "<!here>"):
        assert raw not in text


def test_control_characters_in_names_become_spaces() -> None:
    shown = task(1, server_name="web\n01\t\x00x\u202eyz")
    message = build_page([shown], total=1, ref=PageRef(), ctx=context())
    assert "*web 01  x yz*" in all_text(message)


def test_huge_names_are_shortened_and_the_page_still_fits() -> None:
    tasks = [
        task(i, server_name="&" * 10_000, keypair_name="<" * 10_000, task_id="x" * 10_000)
        for i in range(20)
    ]
    ref = PageRef(offset=20, page_size=20, query='"' * MAX_QUERY_CHARS)
    message = build_page(tasks, total=100, ref=ref, ctx=context())
    assert_valid_message(message)
    assert "&amp;…" in all_text(message)
    assert len(buttons(message)) == 4


def test_shared_page_says_who_shared_it_and_has_no_share_button() -> None:
    ref = PageRef(offset=10, page_size=10)
    tasks = [task(i) for i in range(11, 21)]
    message = build_page(tasks, total=37, ref=ref, ctx=context(), shared_by="U0123ABCD")
    assert_valid_message(message)
    assert "Shared by <@U0123ABCD>" in all_text(message)
    assert ACTION_SHARE not in buttons(message)
    assert {ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH} <= set(buttons(message))


def test_shared_by_that_is_not_a_user_id_is_shown_as_text() -> None:
    message = build_page([task()], total=1, ref=PageRef(), ctx=context(), shared_by="<!channel>")
    assert_valid_message(message)
    assert "Shared by &lt;!channel&gt;" in all_text(message)


def test_page_past_the_end_offers_the_last_page() -> None:
    message = build_page([], total=5, ref=PageRef(offset=20, page_size=10), ctx=context())
    assert_valid_message(message)
    assert "5 running tasks in all" in all_text(message)
    found = buttons(message)
    assert list(found) == [ACTION_PREVIOUS, ACTION_REFRESH]
    assert PageRef.parse(found[ACTION_PREVIOUS]["value"]).offset == 0


def test_total_smaller_than_the_page_is_not_believed() -> None:
    message = build_page([task(1), task(2)], total=1, ref=PageRef(), ctx=context())
    assert "1–2 of 2" in all_text(message)
    assert ACTION_NEXT not in buttons(message)


def test_twenty_tasks_fit_in_fifty_blocks() -> None:
    message = page(0, 20, 100, size=20)
    assert_valid_message(message)
    assert len(message.blocks) <= 50
    assert "1–20 of 100" in all_text(message)


def test_more_tasks_than_the_page_size_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="3 tasks for a page of 2"):
        build_page([task(1), task(2), task(3)], total=3, ref=PageRef(0, 2), ctx=context())


def test_page_context_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        context(now=datetime(2024, 5, 1, 12, 0))


def test_paging_actions_are_the_ones_that_replace_a_page() -> None:
    assert PAGING_ACTIONS == (ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_RETRY)
    assert ACTION_PREVIOUS == "kps_page_previous"
    ids = {ACTION_PREVIOUS, ACTION_NEXT, ACTION_REFRESH, ACTION_SHARE, ACTION_RETRY, ACTION_LIST}
    assert len(ids) == 6


# --- ages and dates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "words"),
    [
        (timedelta(0), "just now"),
        (timedelta(seconds=59), "just now"),
        (timedelta(minutes=1), "1 min"),
        (timedelta(minutes=45, seconds=59), "45 min"),
        (timedelta(hours=1), "1 h"),
        (timedelta(hours=2, minutes=14), "2 h 14 min"),
        (timedelta(days=1), "1 d"),
        (timedelta(days=3, hours=4, minutes=59), "3 d 4 h"),
        (timedelta(days=400), "400 d"),
        (timedelta(seconds=-30), "just now"),  # clock skew between KPS and the bot
        (timedelta(minutes=-5), "unknown"),
        (timedelta(hours=-2), "unknown"),
    ],
)
def test_age_words(age: timedelta, words: str) -> None:
    assert format_age(NOW - age, NOW) == words


def test_age_without_a_start_is_unknown() -> None:
    assert format_age(None, NOW) == "unknown"


def test_age_reads_other_zones_and_naive_times_as_the_same_instant() -> None:
    plus8 = timezone(timedelta(hours=8))
    assert format_age(datetime(2024, 5, 1, 18, 0, tzinfo=plus8), NOW) == "2 h"
    assert format_age(datetime(2024, 5, 1, 10, 0), NOW) == "2 h"


def test_duration_words() -> None:
    assert format_duration(timedelta(minutes=30)) == "30 min"
    assert format_duration(timedelta(seconds=20)) == "0 min"
    assert format_duration(timedelta(hours=26)) == "1 d 2 h"


def test_date_token_and_its_fallback() -> None:
    moment = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert format_date(moment) == (
        "<!date^1700000000^{date_short_pretty} {time}|2023-11-14 22:13 UTC>"
    )
    plus8 = datetime(2023, 11, 15, 6, 13, 20, tzinfo=timezone(timedelta(hours=8)))
    assert format_date(plus8) == format_date(moment)


def test_date_before_1970_gets_only_the_plain_text() -> None:
    assert format_date(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01 00:00 UTC"


# --- escape and clip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("<!channel>", "&lt;!channel&gt;"),
        ("a & b", "a &amp; b"),
        ("&amp;", "&amp;amp;"),
        ("*bold* _it_ ~s~ `c` \"q\" 'a'", "*bold* _it_ ~s~ `c` \"q\" 'a'"),
        ("line\nbreak\ttab\x00nul\x7fdel", "line break tab nul del"),
        ("rtl\u202eoverride\u2066iso", "rtl override iso"),
        ("ünïcødé 名前 🙂", "ünïcødé 名前 🙂"),
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


@pytest.mark.parametrize(
    ("text", "limit", "clipped"),
    [
        ("short", 10, "short"),
        ("exactly10!", 10, "exactly10!"),
        ("abcdefghijk", 10, "abcdefghi…"),
        ("abcdef&amp;xyz", 10, "abcdef…"),  # the cut would fall inside &amp;
        ("abc&amp;xyz", 10, "abc&amp;x…"),
        ("abc&lt;&gt;z", 8, "abc&lt;…"),
        ("abc&lt;&gt;z", 9, "abc&lt;…"),  # "abc&lt;&" would end inside &gt;
        ("word and more", 10, "word and…"),
        ("x <!date^1^{time}|t> y", 10, "x…"),
        ("anything", 1, "…"),
    ],
)
def test_clip(text: str, limit: int, clipped: str) -> None:
    assert clip(text, limit) == clipped
    assert len(clip(text, limit)) <= limit


def test_clip_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        clip("x", 0)


# --- PageRef -----------------------------------------------------------------------------------


def test_page_ref_encodes_compactly_and_round_trips() -> None:
    ref = PageRef(offset=10, page_size=10, query="web")
    assert ref.encode() == '{"v":1,"o":10,"n":10,"q":"web"}'
    assert PageRef.parse(ref.encode()) == ref
    assert PageRef(0, 10).encode() == '{"v":1,"o":0,"n":10}'
    assert PageRef.parse('{"v":1,"o":0,"n":10}') == PageRef(0, 10, "")


def test_page_ref_longest_value_fits_a_button() -> None:
    ref = PageRef(offset=1_000_000_000, page_size=20, query='"\\' * (MAX_QUERY_CHARS // 2))
    assert len(ref.encode()) < 2000
    assert PageRef.parse(ref.encode()) == ref


def test_page_ref_turns_control_characters_into_spaces() -> None:
    assert PageRef(query="a\x01b\nc").query == "a b c"


@pytest.mark.parametrize(
    ("offset", "size", "query"),
    [(-1, 10, ""), (0, 0, ""), (0, 21, ""), (True, 10, ""), (0, 10, "x" * 201), (0, 10.0, "")],
)
def test_page_ref_refuses_bad_fields(offset: Any, size: Any, query: str) -> None:
    with pytest.raises(ValueError):
        PageRef(offset=offset, page_size=size, query=query)


DEEP = "[" * 990 + "]" * 990


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not the bot's JSON"),
        ("next", "not the bot's JSON"),
        ("{'v': 1}", "not the bot's JSON"),
        ('{"v":1,"o":0,"n":10', "not the bot's JSON"),
        ("[]", "must be a JSON object"),
        ("10", "must be a JSON object"),
        ("null", "must be a JSON object"),
        ('{"o":0,"n":10}', "version: None"),
        ('{"v":2,"o":0,"n":10}', "version: 2"),
        ('{"v":"1","o":0,"n":10}', "version: '1'"),
        ('{"v":true,"o":0,"n":10}', "version: True"),
        ('{"v":1,"n":10}', "offset must be a whole number, got None"),
        ('{"v":1,"o":true,"n":10}', "offset must be a whole number, got True"),
        ('{"v":1,"o":1.5,"n":10}', "offset must be a whole number, got 1.5"),
        ('{"v":1,"o":"10","n":10}', "offset must be a whole number, got '10'"),
        ('{"v":1,"o":-1,"n":10}', "offset must be a whole number 0-"),
        ('{"v":1,"o":' + "9" * 1900 + ',"n":10}', "offset must be a whole number 0-"),
        ('{"v":1,"o":0,"n":false}', "page size must be a whole number, got False"),
        ('{"v":1,"o":0,"n":0}', "page size must be a whole number 1-20"),
        ('{"v":1,"o":0,"n":21}', "page size must be a whole number 1-20"),
        ('{"v":1,"o":0,"n":1e400}', "page size must be a whole number, got inf"),
        ('{"v":1,"o":0,"n":NaN}', "page size must be a whole number, got nan"),
        ('{"v":1,"o":0,"n":10,"q":5}', "query must be text, got 5"),
        ('{"v":1,"o":0,"n":10,"q":["a"]}', "query must be text, got a JSON list"),
        ('{"v":1,"o":0,"n":10,"q":"' + "x" * 201 + '"}', "at most 200 characters"),
        ('{"v":1,"o":0,"n":10,"x":1}', "unknown keys in button value: 'x'"),
        ('{"v":1,"o":0,"o":10,"n":10}', "duplicate key 'o'"),
        ('{"v":1,"o":0,"n":10,"q":"' + "x" * 2000 + '"}', "at most 2000 expected"),
    ],
)
def test_page_ref_parse_refuses_malformed_values(value: str, reason: str) -> None:
    with pytest.raises(BadButtonValue) as caught:
        PageRef.parse(value)
    assert reason in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", [DEEP, '{"v":1,"o":' + DEEP + ',"n":10}'])
def test_page_ref_parse_refuses_deep_nesting(value: str) -> None:
    # Deep enough that the JSON decoder may give up with RecursionError; either way it is refused.
    with pytest.raises(BadButtonValue, match=r"not the bot's JSON|JSON object|whole number"):
        PageRef.parse(value)


def test_page_ref_parse_refuses_what_is_not_text() -> None:
    with pytest.raises(BadButtonValue, match="must be text"):
        PageRef.parse(None)  # type: ignore[arg-type]


# --- errors ------------------------------------------------------------------------------------

REF = PageRef(offset=10, page_size=10, query="web")


def error_message(error: KPSError, *, ref: PageRef | None = REF) -> Message:
    message = build_error(error, ref=ref, action="list running tasks")
    assert_valid_message(message)
    return message


def test_api_error_shows_status_code_message_request_id_and_retry() -> None:
    error = KPSAPIError(403, "KPS.0303", "No permission <b>here</b> & now", "req-8f3a")
    message = error_message(error)
    text = all_text(message)
    assert message.text.startswith(
        "Could not list running tasks: KPS answered HTTP 403 (forbidden)"
    )
    assert "KPS.0303" in message.text
    assert "HTTP status: 403" in text
    assert "Error code: `KPS.0303`" in text
    assert "Message: `No permission &lt;b&gt;here&lt;/b&gt; &amp; now`" in text
    assert "Request id: `req-8f3a`" in text
    assert "kps::getRunningTask" in text
    retry = buttons(message)[ACTION_RETRY]
    assert "Retry" in retry["text"]["text"]
    assert PageRef.parse(retry["value"]) == REF
    assert "Traceback" not in text


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "credentials were refused"),
        (403, "lack permission"),
        (404, "KPS_ENDPOINT"),
        (429, "throttling"),
        (500, "trouble on its side"),
        (503, "trouble on its side"),
        (418, "Retry in a moment"),
    ],
)
def test_api_error_hint_by_status(status: int, hint: str) -> None:
    message = error_message(KPSAPIError(status, "APIGW.0301", "x", None))
    assert hint in all_text(message)
    assert "Request id: none sent" in all_text(message)


def test_iam_error_names_iam() -> None:
    error = KPSAPIError(401, "401", "The username or password is wrong.", "r1", service="IAM")
    assert "IAM answered HTTP 401 (not authorised)" in all_text(error_message(error))


def test_timeout_in_words() -> None:
    message = error_message(KPSTimeout())
    assert message.text == "Could not list running tasks: KPS is not answering (timed out)."
    assert "slow or overloaded" in all_text(message)


def test_connection_error_in_words_with_its_detail() -> None:
    message = error_message(KPSConnectionError("connection refused by kms.example <x>"))
    text = all_text(message)
    assert "KPS cannot be reached" in text
    assert "Detail: `connection refused by kms.example &lt;x&gt;`" in text


def test_bad_response_shows_detail_and_request_id() -> None:
    error = KPSBadResponse("'total' is missing", status=200, request_id="rid-42")
    text = all_text(error_message(error))
    assert "KPS sent an answer the bot cannot read (HTTP 200)" in text
    assert "Detail: `'total' is missing`" in text
    assert "Request id: `rid-42`" in text


def test_error_without_ref_has_no_retry_and_action_ids_read_as_words() -> None:
    message = build_error(KPSTimeout(), ref=None, action=ACTION_NEXT)
    assert_valid_message(message)
    assert buttons(message) == {}
    assert message.text.startswith("Could not load the next page: ")


def test_error_with_huge_kps_strings_still_fits() -> None:
    error = KPSAPIError(500, "<" * 5000, "&" * 50_000, "`" * 5000)
    message = error_message(error)
    assert "…" in all_text(message)


def test_bad_answer_names_the_service_that_sent_it() -> None:
    error = KPSBadResponse("no X-Subject-Token header", status=201, request_id=None, service="IAM")
    message = error_message(error)
    text = all_text(message)
    assert "IAM sent an answer the bot cannot read (HTTP 201)" in text
    assert "IAM or a proxy in between" in text
    assert "KPS sent" not in text


@pytest.mark.parametrize(
    ("retry_after", "wait"), [(30.0, "wait 30 s"), (90.0, "wait 2 min"), (99_999.0, "wait 1 d 3 h")]
)
def test_throttling_says_so_and_when_to_try_again(retry_after: float, wait: str) -> None:
    error = KPSThrottled(KPSAPIError(429, "APIG.0308", "over ratelimit", "r9"), retry_after)
    message = error_message(error)
    text = all_text(message)
    assert message.text.startswith("Could not list running tasks: KPS is throttling requests")
    assert f"KPS asks to {wait}; retry after that." in text
    assert "cannot read" not in text


def test_throttling_without_retry_after_asks_for_a_minute() -> None:
    error = KPSThrottled(KPSAPIError(429, "APIG.0308", "over ratelimit", None), None)
    assert "wait a minute, then retry" in all_text(error_message(error))


def test_an_answer_too_large_says_so() -> None:
    error = KPSResponseTooLarge(16 * 1024 * 1024, status=200, request_id="r-big")
    text = all_text(error_message(error))
    assert "KPS sent an answer too large to read (over 16,777,216 bytes)" in text
    assert "cannot read (HTTP" not in text
    assert "Request id: `r-big`" in text


def test_iam_refusing_the_token_request_points_at_the_iam_settings() -> None:
    error = KPSAPIError(400, "APIG.0201", "Request body invalid", None, service="IAM")
    text = all_text(error_message(error))
    assert "IAM answered HTTP 400 (bad request)" in text
    assert "HUAWEICLOUD_PASSWORD" in text


def test_upstream_messages_are_clipped_to_300_characters() -> None:
    error = KPSAPIError(400, "APIG.0201", "x" * 5000, None)
    text = all_text(error_message(error))
    shown = re.search(r"Message: `(x+)…`", text)
    assert shown is not None and len(shown.group(1)) < 300


def test_echoed_credentials_are_redacted_before_escaping_and_clipping() -> None:
    secret = "Pw<&>" + "9" * 20
    register_secret(secret)
    signature = "4f" * 32
    said = (
        f"{'y' * 280} {secret} Authorization: SDK-HMAC-SHA256 Access=AK1, SignedHeaders=host,"
        f" Signature={signature}; X-Security-Token: sts-abcdefgh"
    )
    for error in (
        KPSAPIError(400, "APIG.0201", said, None),
        KPSAPIError(400, "APIG.0201", said[285:], said[285:]),
        KPSBadResponse(said[285:], status=200, request_id=None, service="IAM"),
    ):
        message = error_message(error)
        shown = json.dumps(message.as_payload(), ensure_ascii=False)
        # Not even the start of the secret, which a clip at 300 would cut into.
        assert "Pw<" not in shown and "Pw&lt;" not in shown
        assert signature[:8] not in shown and "sts-abcdefgh" not in shown
    assert REDACTED in all_text(error_message(KPSAPIError(400, "A", said[285:], None)))


def test_home_problems_are_redacted() -> None:
    register_secret("hunter2-home-secret")
    summary = HomeSummary(
        running=0,
        stale=0,
        oldest=None,
        fetched_at=NOW,
        problems=("Watching is impaired: password=hunter2-home-secret",),
    )
    shown = json.dumps(build_home(summary, context()), ensure_ascii=False)
    assert "hunter2" not in shown and REDACTED in shown


# --- KPS text cannot format --------------------------------------------------------------------


def test_kps_formatting_characters_are_inert_but_ids_stay_exact() -> None:
    odd = task(
        1,
        server_name="*bold* _it_ ~gone~ `code` web_server_01",
        task_id="id_with_*stars*_",
        keypair_name="kp_*x*_",
    )
    message = build_page([odd], total=1, ref=PageRef(), ctx=context())
    assert_valid_message(message)
    text = all_text(message)
    assert "\u2217bold\u2217 \u02cdit\u02cd \u223cgone\u223c \u02cbcode\u02cb web_server_01" in text
    assert "*bold*" not in text and "_it_" not in text and "~gone~" not in text
    # Inside a code span nothing formats: ids and key pair names read as KPS wrote them.
    assert "`id_with_*stars*_`" in text and "`kp_*x*_`" in text


# --- unreadable records ------------------------------------------------------------------------


def test_a_page_says_how_many_records_could_not_be_read() -> None:
    tasks = [task(1), task(2)]
    many = build_page(tasks, total=4, ref=PageRef(), ctx=context(), rejected=2)
    one = build_page(tasks, total=3, ref=PageRef(), ctx=context(), rejected=1)
    none = build_page(tasks, total=2, ref=PageRef(), ctx=context())
    for message in (many, one, none):
        assert_valid_message(message)
    assert "2 task records could not be read and are not shown." in all_text(many)
    assert "1 task record could not be read and is not shown." in all_text(one)
    assert "could not be read" not in all_text(none)
    # The line sits above the task list, where the count it qualifies is.
    kinds = [b["type"] for b in many.blocks]
    line = next(i for i, b in enumerate(many.blocks) if "could not be read" in json.dumps(b))
    assert kinds[line + 1] == "divider"


# --- help, usage, notices ----------------------------------------------------------------------


def test_help_lists_every_way_in() -> None:
    message = build_help()
    assert_valid_message(message)
    text = all_text(message)
    for usage in ("`/kps`", "`/kps tasks`", "`/kps tasks &lt;words&gt;`", "`/kps help`"):
        assert usage in text
    assert "`@kps-bot tasks`" in text


def test_usage_error_quotes_the_text_safely_and_shows_usage() -> None:
    message = build_usage_error("frobnicate <!channel> `x`")
    assert_valid_message(message)
    text = all_text(message)
    assert "I don't know `frobnicate &lt;!channel&gt; ˋxˋ`" in text
    assert "/kps help" in text


def test_notice_is_one_escaped_section() -> None:
    message = build_line("Something went wrong on our side <!here>")
    assert_valid_message(message)
    assert len(message.blocks) == 1
    assert message.text == "Something went wrong on our side &lt;!here&gt;"


def test_line_needs_words() -> None:
    with pytest.raises(ValueError):
        build_line("  \n ")


def test_message_guards_slack_limits() -> None:
    with pytest.raises(ValueError, match="fallback"):
        Message(text=" ", blocks=())
    with pytest.raises(ValueError, match="51 blocks"):
        Message(text="x", blocks=tuple({"type": "divider"} for _ in range(51)))
    huge = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 13_000}}
    with pytest.raises(ValueError, match="characters"):
        Message(text="x", blocks=(huge,))


def test_payload_is_a_copy() -> None:
    message = build_line("hello")
    payload = message.as_payload()
    payload["blocks"][0]["text"]["text"] = "changed"
    assert message.as_payload()["blocks"][0]["text"]["text"] == "hello"


# --- Home tab ----------------------------------------------------------------------------------


def assert_valid_home(view: dict[str, Any]) -> None:
    assert view["type"] == "home"
    assert_valid_blocks(view["blocks"], max_blocks=100)
    model = View(**view)
    model.validate_json()
    assert model.to_dict()["blocks"] == view["blocks"]


def test_home_counts_the_stale_and_names_the_oldest() -> None:
    oldest = task(1, started_at=NOW - timedelta(hours=2, minutes=14), server_name="db-01")
    summary = HomeSummary(running=3, stale=1, oldest=oldest, fetched_at=NOW)
    view = build_home(summary, context())
    assert_valid_home(view)
    text = "\n".join(text_values(view))
    assert "*3* key-pair tasks are running · *1* stale (running 30 min or longer)" in text
    assert "Oldest: *db-01* · key pair `kp-1` · Reset key pair · running 2 h 14 min" in text
    assert "Updated <!date^" in text
    button = view["blocks"][-1]["elements"][0]
    assert button["action_id"] == ACTION_LIST
    assert button["text"]["text"] == "List running tasks"
    assert PageRef.parse(button["value"]) == PageRef(offset=0, page_size=10)


def test_home_counts_queued_tasks_apart() -> None:
    summary = HomeSummary(running=3, stale=1, oldest=None, fetched_at=NOW, queued=2)
    text = "\n".join(text_values(build_home(summary, context())))
    assert (
        "*3* key-pair tasks are running · *1* stale (running 30 min or longer)"
        " · *2* queued, not started yet"
    ) in text
    only_queued = build_home(HomeSummary(0, 0, None, NOW, queued=1), context())
    assert_valid_home(only_queued)
    text = "\n".join(text_values(only_queued))
    assert "No key-pair tasks are running · *1* queued, not started yet" in text


def test_home_note_says_where_the_list_went_and_replaces_an_earlier_one() -> None:
    home = build_home(HomeSummary(3, 1, None, NOW), context())
    first = build_home_note(home, list_sent_note(team="T0TEST", app="A0KPS", at=NOW))
    assert_valid_blocks(first["blocks"], max_blocks=100)
    assert first["blocks"][:-1] == home["blocks"]  # the counts the user was reading stay
    note = first["blocks"][-1]
    assert note["block_id"] == HOME_NOTE_BLOCK
    words = note["elements"][0]["text"]
    assert "Sent the list of running tasks to your" in words
    assert "<slack://app?team=T0TEST&amp;id=A0KPS&amp;tab=messages|Messages tab>" in words
    failed = build_home_note(first, list_not_sent_note("messages_tab_disabled"))
    assert len(failed["blocks"]) == len(first["blocks"])  # the note is replaced, not added
    assert (
        "Could not send the list to your Messages tab"
        in failed["blocks"][-1]["elements"][0]["text"]
    )
    # Ids that are not Slack's shape never reach a link; an empty view still gets its button.
    odd = list_sent_note(team="T0|<x>", app="A0KPS", at=NOW)
    assert "slack://" not in odd and "your Messages tab" in odd
    bare = build_home_note({}, odd, page_size=5)
    assert bare["blocks"][1]["elements"][0]["action_id"] == ACTION_LIST


def test_home_with_nothing_running() -> None:
    view = build_home(HomeSummary(0, 0, None, NOW), context(), page_size=5)
    assert_valid_home(view)
    assert "No key-pair tasks are running." in "\n".join(text_values(view))
    assert PageRef.parse(view["blocks"][-1]["elements"][0]["value"]).page_size == 5


def test_home_shows_a_kps_failure_and_problems() -> None:
    error = KPSAPIError(401, "APIGW.0307", "The token must be updated.", "req-1")
    problems = tuple(f"chat.postMessage failed: not_in_channel <#C{i}>" for i in range(12))
    view = build_home(HomeSummary(0, 0, None, None, problems, error), context())
    assert_valid_home(view)
    text = "\n".join(text_values(view))
    assert "Could not read running tasks: KPS answered HTTP 401" in text
    assert "`APIGW.0307`" in text and "`req-1`" in text
    assert "not_in_channel &lt;#C9&gt;" in text
    assert "&lt;#C10&gt;" not in text
    assert "…and 2 more" in text
    assert "Updated" not in text
