"""Stale-notice messages: what they say, escaping, grouping past one message, Slack's limits."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.alerts import Alert, Notice, NoticeState, WatchState
from bot.blockkit import BadButtonValue, Message, ViewContext
from bot.notices import (
    ACTION_ACK,
    ACTION_STALE_LIST,
    NOTICE_SHOWN,
    SNOOZE_ACTIONS,
    NoticeRef,
    build_detail_replies,
    build_ending_replies,
    build_impaired,
    build_notice_list,
    build_recovered,
    build_reminder,
    build_stale_notice,
)
from tests.test_blocks import assert_valid_message
from tests.test_blocks_properties import SETTINGS, kps_text, short_text

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CTX = ViewContext(
    project_id="0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    region="cn-north-4",
    stale_after=timedelta(minutes=30),
    now=NOW,
    renotify_after=None,
)


def make_alert(i: int, *, minutes: int = 47, **changes: Any) -> Alert:
    base = Alert(
        task_id=f"task-{i:04d}",
        notice_id=7,
        server_name=f"web-prod-{i:04d}",
        server_id=f"srv-{i:04d}",
        keypair_name=f"kp-{i:04d}",
        operate_type="RUNNING_RESET",
        started_at=NOW - timedelta(minutes=minutes, seconds=i),
        announced_at=NOW - timedelta(minutes=5),
    )
    return replace(base, **changes)


def make_state(alerts: list[Alert], **changes: Any) -> NoticeState:
    notice = Notice(
        id=7, kind="stale", channel="C0ALERTS", ts="1.1", created_at=NOW - timedelta(minutes=5)
    )
    return NoticeState(replace(notice, **changes), tuple(alerts))


def everything(message: Message) -> str:
    payload = message.as_payload()
    return json.dumps(payload["blocks"], ensure_ascii=False) + str(payload["text"])


def buttons(message: Message) -> dict[str, dict[str, Any]]:
    found = {}
    for block in message.blocks:
        if block["type"] == "actions":
            for element in block["elements"]:
                found[element["action_id"]] = element
    return found


def test_notice_names_each_task_and_how_long_it_runs() -> None:
    alerts = [make_alert(1, minutes=47), make_alert(2, minutes=125)]
    message = build_stale_notice(make_state(alerts), CTX)
    assert_valid_message(message)
    shown = everything(message)
    for a in alerts:
        assert a.server_name in shown and a.keypair_name in shown and a.task_id in shown
    assert "running *47 min*" in shown and "running *2 h 5 min*" in shown
    assert "2 key-pair tasks are stale" in shown
    assert "30 min" in shown
    # Oldest first.
    assert shown.index("web-prod-0002") < shown.index("web-prod-0001")
    assert set(buttons(message)) == {ACTION_ACK, *SNOOZE_ACTIONS}
    assert NoticeRef.parse(buttons(message)[SNOOZE_ACTIONS[1]]["value"]) == NoticeRef(7, hours=4)
    assert message.text.startswith("2 key-pair tasks running 30 min or longer: web-prod-0002")


def test_kps_strings_are_escaped_in_the_notice() -> None:
    evil = make_alert(1, server_name="<!channel> & <https://x|y>", keypair_name="`kp`*")
    message = build_stale_notice(make_state([evil]), CTX)
    assert_valid_message(message)
    shown = everything(message)
    assert "<!channel>" not in shown and "&lt;!channel&gt; &amp; &lt;https://x|y&gt;" in shown


def test_notice_shows_endings_at_a_glance() -> None:
    ended = NOW - timedelta(minutes=1)
    alerts = [
        make_alert(1, finished_at=ended, outcome="SUCCESS_RESET"),
        make_alert(
            2,
            finished_at=ended,
            outcome="FAILED_RESET",
            error_code="KPS.2034",
            error_msg="ssh agent not responding",
        ),
        make_alert(3, finished_at=ended, outcome=None),
        make_alert(4),
    ]
    message = build_stale_notice(make_state(alerts), CTX)
    assert_valid_message(message)
    shown = everything(message)
    assert ":white_check_mark: *web-prod-0001*" in shown
    assert "Reset key pair succeeded (`SUCCESS_RESET`)" in shown
    assert ":x: *web-prod-0002*" in shown and "`KPS.2034 ssh agent not responding`" in shown
    assert ":black_square_for_stop: *web-prod-0003*" in shown
    assert "no longer running (outcome unknown)" in shown
    assert ":hourglass_flowing_sand: *web-prod-0004*" in shown
    assert "3 of 4 finished: 1 succeeded, 1 failed, 1 no longer running" in shown


def test_all_finished_notice_keeps_no_action_buttons() -> None:
    ended = NOW - timedelta(minutes=1)
    alerts = [make_alert(1, finished_at=ended, outcome="SUCCESS_UNBIND")]
    message = build_stale_notice(make_state(alerts), CTX)
    assert "Stale key-pair task: finished" in everything(message)
    assert buttons(message) == {}
    more = [*alerts, *(make_alert(i, finished_at=ended, outcome="SUCCESS_RESET") for i in (2, 3))]
    message = build_stale_notice(make_state(more), CTX)
    assert "Stale key-pair tasks: all finished" in everything(message)
    assert "All 3 finished: 3 succeeded." in everything(message)
    assert buttons(message) == {}


def test_acknowledged_and_snoozed_notices_say_who_and_until_when() -> None:
    state = make_state(
        [make_alert(1)],
        acked_by="U0ALICE",
        acked_at=NOW - timedelta(minutes=2),
        snoozed_by="U0BOB",
        snoozed_until=NOW + timedelta(hours=4),
    )
    message = build_stale_notice(state, CTX)
    shown = everything(message)
    assert "Acknowledged by <@U0ALICE>" in shown
    assert "snoozed by <@U0BOB> until" in shown
    assert ACTION_ACK not in buttons(message)  # nothing left to acknowledge
    expired = make_state([make_alert(1)], snoozed_by="U0BOB", snoozed_until=NOW)
    assert "snoozed" not in everything(build_stale_notice(expired, CTX))


def test_a_user_id_that_is_not_one_is_never_a_mention() -> None:
    state = make_state([make_alert(1)], acked_by="<!channel>", acked_at=NOW)
    message = build_stale_notice(state, CTX)
    assert_valid_message(message)
    assert "Acknowledged by &lt;!channel&gt;" in everything(message)


def test_reminder_wording_when_renotify_is_on() -> None:
    ctx = replace(CTX, renotify_after=timedelta(hours=2))
    shown = everything(build_stale_notice(make_state([make_alert(1)]), ctx))
    assert "Reminders every 2 h in the thread until acknowledged" in shown


def test_a_thousand_tasks_fit_one_notice_and_the_thread_lists_the_rest() -> None:
    alerts = [make_alert(i) for i in range(1000)]
    notice = build_stale_notice(make_state(alerts), CTX)
    assert_valid_message(notice)
    shown = everything(notice)
    assert "1000 key-pair tasks are stale" in shown
    assert f"…and *{1000 - NOTICE_SHOWN}* more stale tasks, listed in this thread" in shown
    listed = buttons(notice)[ACTION_STALE_LIST]
    assert listed["text"]["text"] == "List all 1000"
    in_notice = set(re.findall(r"task-\d{4}", shown))
    assert len(in_notice) == NOTICE_SHOWN

    replies = build_detail_replies(alerts, CTX)
    assert 1 <= len(replies) <= 40
    in_thread: list[str] = []
    for reply in replies:
        assert_valid_message(reply)
        in_thread += re.findall(r"task-\d{4}", json.dumps(reply.blocks))
    assert len(in_thread) == len(set(in_thread)) == 1000 - NOTICE_SHOWN
    assert in_notice | set(in_thread) == {a.task_id for a in alerts}
    assert "Stale tasks 21–" in everything(replies[0])
    assert everything(replies[-1]).count("of 1000") == 1


def test_few_tasks_need_no_detail_replies() -> None:
    assert build_detail_replies([make_alert(i) for i in range(NOTICE_SHOWN)], CTX) == []


def test_ending_replies_say_how_each_ended_and_how_long_it_ran() -> None:
    ended = [
        make_alert(1, minutes=90, finished_at=NOW, outcome="SUCCESS_REPLACE"),
        make_alert(2, minutes=50, finished_at=NOW, outcome="FAILED_RESET", error_code="E1"),
        make_alert(3, minutes=40, finished_at=NOW),
    ]
    (reply,) = build_ending_replies(ended, CTX)
    assert_valid_message(reply)
    shown = everything(reply)
    assert "3 stale tasks have ended" in shown
    assert "Replace key pair succeeded (`SUCCESS_REPLACE`) after about 1 h 30 min" in shown
    assert "*Reset key pair failed* (`FAILED_RESET`): `E1` after about 50 min" in shown
    assert "no longer running (outcome unknown) · ran about 40 min" in shown
    (one,) = build_ending_replies(ended[:1], CTX)
    assert one.text == "web-prod-0001: Replace key pair succeeded"


def test_many_endings_are_split_over_replies_without_loss() -> None:
    ended = [make_alert(i, finished_at=NOW, outcome="SUCCESS_RESET") for i in range(300)]
    replies = build_ending_replies(ended, CTX)
    ids: list[str] = []
    for reply in replies:
        assert_valid_message(reply)
        ids += re.findall(r"task-\d{4}", json.dumps(reply.blocks))
    assert sorted(ids) == sorted(a.task_id for a in ended)


def test_reminder_lists_what_still_runs() -> None:
    alerts = [make_alert(i) for i in range(30)] + [
        make_alert(99, finished_at=NOW, outcome="SUCCESS_RESET")
    ]
    reminder = build_reminder(make_state(alerts), CTX)
    assert_valid_message(reminder)
    shown = everything(reminder)
    assert "30 tasks from this notice are still running" in shown
    assert "…and 10 more still running" in shown and "web-prod-0099" not in shown
    assert reminder.text == "Reminder: 30 stale key-pair tasks still running"


def test_list_pages_through_a_notice() -> None:
    alerts = [make_alert(i) for i in range(45)]
    first = build_notice_list(make_state(alerts), CTX, offset=0)
    assert "Stale tasks 1–20 of 45" in everything(first)
    nxt = NoticeRef.parse(buttons(first)[ACTION_STALE_LIST]["value"])
    assert nxt == NoticeRef(7, offset=20, replace=True)
    last = build_notice_list(make_state(alerts), CTX, offset=40)
    assert "Stale tasks 41–45 of 45" in everything(last)
    back = NoticeRef.parse(buttons(last)[ACTION_STALE_LIST]["value"])
    assert back.offset == 20
    beyond = build_notice_list(make_state(alerts), CTX, offset=1000)
    assert "Stale tasks 41–45 of 45" in everything(beyond)


def test_impaired_and_recovered_notices() -> None:
    state = WatchState(
        failures=3,
        failing_since=NOW - timedelta(minutes=3),
        last_error="KPS answered HTTP 503: KPS.0500 <boom>",
    )
    impaired = build_impaired(state, CTX, poll_interval=60)
    assert_valid_message(impaired)
    shown = everything(impaired)
    assert "impaired" in shown and "last 3 scans" in shown and "every 1 min" in shown
    assert "KPS.0500 &lt;boom&gt;" in shown
    recovered = build_recovered(state, CTX)
    assert_valid_message(recovered)
    assert "works again* after 3 min" in everything(recovered)


def test_notice_ref_round_trip_and_refusals() -> None:
    for ref in (NoticeRef(1), NoticeRef(5, hours=24), NoticeRef(9, offset=40, replace=True)):
        assert NoticeRef.parse(ref.encode()) == ref
    for bad in (
        None,
        "",
        "[]",
        '{"v":2,"n":1}',
        '{"v":1,"n":0}',
        '{"v":1,"n":true}',
        '{"v":1,"n":1,"h":3}',
        '{"v":1,"n":1,"x":1}',
        '{"v":1,"n":1,"o":-1}',
        "x" * 3000,
        # The one strict codec: what PageRef refuses, NoticeRef refuses too.
        '{"v":1,"n":1,"n":2}',
        '{"v":true,"n":1}',
        '{"v":1.0,"n":1}',
        '{"v":1,"n":1,"r":"yes"}',
        '{"v":1,"n":1,"r":2}',
        '{"v":1,"n":1,"h":4.0}',
        '{"v":1}',
    ):
        with pytest.raises(BadButtonValue):
            NoticeRef.parse(bad)


# --- properties: whatever KPS sends, every message stays valid, escaped and within limits ---

dates = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
moments = st.one_of(st.none(), dates)
# Mostly plain names, some hostile: 25 tasks of nothing but 10,000-character names would only
# exercise the last clipping tier.
names = st.one_of(st.from_regex(r"[a-z0-9-]{1,30}", fullmatch=True), kps_text)
outcomes = st.one_of(
    st.none(), st.sampled_from(["SUCCESS_RESET", "FAILED_UNBIND", "RUNNING_RESET"]), kps_text
)


@st.composite
def alerts(draw: st.DrawFn, index: int) -> Alert:
    finished = draw(st.booleans())
    return Alert(
        task_id=f"id{index:05d}-" + draw(short_text),
        notice_id=3,
        server_name=draw(names),
        server_id=draw(names),
        keypair_name=draw(names),
        operate_type=draw(st.one_of(st.just("RUNNING_RESET"), kps_text)),
        started_at=draw(moments),
        announced_at=NOW,
        finished_at=draw(dates) if finished else None,
        outcome=draw(outcomes) if finished else None,
        error_code=draw(st.one_of(st.none(), names)),
        error_msg=draw(st.one_of(st.none(), names)),
    )


@st.composite
def states(draw: st.DrawFn) -> NoticeState:
    count = draw(st.integers(1, 25))
    tasks = tuple(draw(alerts(i)) for i in range(count))
    notice = Notice(
        id=draw(st.integers(1, 2**31 - 1)),
        kind="stale",
        channel="C0ALERTS",
        ts="1.1",
        created_at=draw(dates),
        acked_by=draw(st.one_of(st.none(), st.just("U0ALICE"), short_text)),
        acked_at=draw(moments),
        snoozed_by=draw(st.one_of(st.none(), short_text)),
        snoozed_until=draw(moments),
    )
    return NoticeState(notice, tasks)


contexts = st.builds(
    ViewContext,
    project_id=kps_text,
    region=st.one_of(st.none(), kps_text),
    stale_after=st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=30)),
    now=dates,
    renotify_after=st.one_of(st.none(), st.timedeltas(min_value=timedelta(minutes=1))),
)


def ids_in(messages: list[Message]) -> set[str]:
    found: set[str] = set()
    for message in messages:
        found |= set(re.findall(r"id\d{5}-", json.dumps(message.blocks, ensure_ascii=False)))
    return found


@SETTINGS
@given(states(), contexts)
def test_every_notice_message_is_valid_and_loses_no_task(
    state: NoticeState, ctx: ViewContext
) -> None:
    notice = build_stale_notice(state, ctx)
    assert_valid_message(notice)
    details = build_detail_replies(state.alerts, ctx)
    for message in details:
        assert_valid_message(message)
    every = {f"id{i:05d}-" for i in range(len(state.alerts))}
    assert ids_in([notice, *details]) == every
    endings = build_ending_replies(state.alerts, ctx)
    for message in endings:
        assert_valid_message(message)
    assert ids_in(endings) == every
    if any(a.running for a in state.alerts):
        assert_valid_message(build_reminder(state, ctx))
    for offset in (0, 20, 40):
        assert_valid_message(build_notice_list(state, ctx, offset=offset))


@SETTINGS
@given(
    st.integers(0, 10**6),
    st.one_of(st.none(), moments),
    st.one_of(st.none(), kps_text),
    contexts,
    st.floats(1, 10**6),
)
def test_health_notices_are_valid(
    failures: int,
    since: datetime | None,
    error: str | None,
    ctx: ViewContext,
    poll: float,
) -> None:
    state = WatchState(failures=failures, failing_since=since, last_error=error)
    assert_valid_message(build_impaired(state, ctx, poll_interval=poll))
    assert_valid_message(build_recovered(state, ctx))


@pytest.mark.parametrize("piece", ['"', "\\", "&", "<", '&"\\<', "名🙂"])
def test_worst_case_names_still_fit(piece: str) -> None:
    huge = piece * 10_000
    alerts = [
        make_alert(
            i,
            server_name=huge,
            keypair_name=huge,
            operate_type=huge,
            task_id=f"{i:04d}{huge}",
            finished_at=NOW if i % 2 else None,
            outcome=huge if i % 4 == 1 else ("FAILED_RESET" if i % 4 == 3 else None),
            error_code=huge,
            error_msg=huge,
        )
        for i in range(60)
    ]
    state = make_state(alerts, acked_by=huge, acked_at=NOW, snoozed_by=huge, snoozed_until=NOW)
    ctx = replace(CTX, project_id=huge, region=huge, renotify_after=timedelta(hours=1))
    messages = [
        build_stale_notice(state, ctx),
        build_reminder(state, ctx),
        build_notice_list(state, ctx, offset=0),
        *build_detail_replies(alerts, ctx),
        *build_ending_replies(alerts, ctx),
    ]
    for message in messages:
        assert_valid_message(message)
    # The notice still names its first 20 tasks, by the start of their ids.
    shown_ids = set(re.findall(r"`(\d{4})", json.dumps(messages[0].blocks, ensure_ascii=False)))
    assert len(shown_ids) == NOTICE_SHOWN


# --- issue 10: words a person would write -------------------------------------------------------


def test_a_notice_of_one_task_speaks_of_it_in_the_singular() -> None:
    # Issue 10: "All 1 finished" and "*1* key-pair task went stale".
    succeeded = make_alert(1, finished_at=NOW, outcome="SUCCESS_RESET")
    shown = everything(build_stale_notice(make_state([succeeded]), CTX))
    assert (
        "A key-pair task went stale: running *30 min* or longer.\\nIt finished and succeeded."
        in (shown)
    )
    assert "All 1" not in shown and "*1* key-pair" not in shown
    failed = make_alert(1, finished_at=NOW, outcome="FAILED_RESET")
    assert "It finished and failed." in everything(build_stale_notice(make_state([failed]), CTX))
    gone = make_alert(1, finished_at=NOW)
    assert "It is no longer running (outcome unknown)." in everything(
        build_stale_notice(make_state([gone]), CTX)
    )
    two = [succeeded, make_alert(2, finished_at=NOW, outcome="FAILED_RESET")]
    assert "Both finished: 1 succeeded, 1 failed." in everything(
        build_stale_notice(make_state(two), CTX)
    )


def test_a_range_of_one_task_is_named_as_one() -> None:
    # Issue 10: "Stale tasks 21–21 of 21" in a thread or a List page.
    alerts = [make_alert(i) for i in range(NOTICE_SHOWN + 1)]
    (reply,) = build_detail_replies(alerts, CTX)
    assert "*Stale task 21 of 21*" in everything(reply)
    assert reply.text == "The other stale key-pair task"
    listed = build_notice_list(make_state(alerts), CTX, offset=NOTICE_SHOWN)
    assert "Stale task 21 of 21 from the notice of" in everything(listed)
    assert listed.text == "Stale task 21 of 21"
    single_groups = 0
    for count in range(2, 120):
        ended = [make_alert(i, finished_at=NOW, outcome="SUCCESS_RESET") for i in range(count)]
        for reply in build_ending_replies(ended, CTX):
            shown = everything(reply)
            assert not re.search(r"\b(\d+)–\1 of", shown), shown[:200]
            single_groups += f"Stale task that ended ({count} of {count})" in shown
    assert single_groups  # some count leaves one task for the last reply


def test_recovery_after_seconds_says_seconds() -> None:
    # Issue 10: "works again after 0 min".
    for took, words in ((timedelta(seconds=40), "40 s"), (timedelta(milliseconds=300), "1 s")):
        state = WatchState(failures=3, failing_since=NOW - took)
        recovered = build_recovered(state, CTX)
        assert_valid_message(recovered)
        assert f"works again* after {words}." in everything(recovered)
        assert recovered.text == f"Watching for stale key-pair tasks works again after {words}"
    one = build_impaired(WatchState(failures=1, failing_since=NOW), CTX, poll_interval=60)
    assert "The last scan of the running tasks failed" in everything(one)
    assert one.text.endswith("impaired: 1 scan failed")
