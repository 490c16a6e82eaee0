"""Property tests: whatever KPS and users send, the blocks stay valid, within limits and escaped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.blockkit import BadButtonValue, ViewContext, clip, escape
from bot.blocks import (
    ACTION_NEXT,
    ACTION_PREVIOUS,
    ACTION_REFRESH,
    ACTION_SHARE,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    MAX_QUERY_CHARS,
    HomeSummary,
    PageRef,
    build_error,
    build_home,
    build_line,
    build_page,
    build_usage_error,
)
from bot.errors import KPSAPIError, KPSBadResponse, KPSConnectionError, KPSError, KPSTimeout
from bot.tasks import Task
from tests.test_blocks import (
    assert_escaped,
    assert_valid_blocks,
    assert_valid_message,
    buttons,
    text_values,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that mean something to mrkdwn, JSON or a terminal, plus some wide ones.
NASTY = '<>&*_~`|^!@#"\\\n\t\r\x00\x01\x1b\x7f\u0085\u2028\u202e\u2066\ufeff名🙂é'

short_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=NASTY + "ab ", max_size=40),
    st.sampled_from(["<!channel>", "<!here>", "<@U123>", "<https://x|y>", "&amp;", "&lt;"]),
)
# Huge strings made by repetition: cheap to generate, as bad as a 10,000-character name.
huge_text = st.builds(
    lambda piece, times: piece * times,
    st.text(alphabet=NASTY + "a", min_size=1, max_size=3),
    st.integers(min_value=1, max_value=10_000),
)
kps_text = st.one_of(short_text, huge_text)

zones = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
starts = st.one_of(
    st.none(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=zones),
    st.datetimes(),  # naive: read as UTC
    st.datetimes(
        min_value=datetime(2024, 4, 1), max_value=datetime(2024, 6, 1), timezones=st.just(UTC)
    ),
)
nows = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
tasks = st.builds(
    Task,
    task_id=kps_text,
    operate_type=st.one_of(st.sampled_from(["RUNNING_RESET", "RUNNING", "FAILED_BIND"]), kps_text),
    started_at=starts,
    server_name=kps_text,
    server_id=kps_text,
    keypair_name=kps_text,
)
queries = st.one_of(st.just(""), st.text(max_size=MAX_QUERY_CHARS))
refs = st.builds(
    PageRef,
    offset=st.one_of(st.integers(0, 100), st.integers(0, MAX_OFFSET)),
    page_size=st.integers(1, MAX_PAGE_SIZE),
    query=queries,
)
contexts = st.builds(
    ViewContext,
    project_id=kps_text,
    region=st.one_of(st.none(), kps_text),
    fetched_at=nows,
    now=nows,
    stale_after=st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=30)),
)
shared = st.one_of(st.none(), st.just("U0123ABCD"), short_text)


@st.composite
def pages(draw: st.DrawFn) -> tuple[list[Task], int, PageRef]:
    ref = draw(refs)
    shown = draw(st.lists(tasks, max_size=ref.page_size))
    total = draw(st.one_of(st.integers(0, 100), st.integers(0, MAX_OFFSET)))
    return shown, total, ref


@SETTINGS
@given(page=pages(), ctx=contexts, shared_by=shared)
def test_any_page_is_valid_escaped_and_within_limits(
    page: tuple[list[Task], int, PageRef], ctx: ViewContext, shared_by: str | None
) -> None:
    shown, total, ref = page
    message = build_page(shown, total=total, ref=ref, ctx=ctx, shared_by=shared_by)
    assert_valid_message(message)
    found = buttons(message)
    assert ACTION_REFRESH in found
    assert (ACTION_PREVIOUS in found) == (ref.offset > 0)
    if shown:
        assert (ACTION_NEXT in found) == (
            ref.offset + len(shown) < total and ref.offset + ref.page_size <= MAX_OFFSET
        )
        assert (ACTION_SHARE in found) == (not shared_by)
        first, last = ref.offset + 1, ref.offset + len(shown)
        span = f"{first}–{last}" if first < last else f"task {first}"
        assert f"{span} of {max(total, last)}" in message.text
    for element in found.values():
        target = PageRef.parse(element["value"])
        assert (target.page_size, target.query) == (ref.page_size, ref.query)


@SETTINGS
@given(names=st.lists(huge_text, min_size=5, max_size=5), query=queries, ctx=contexts)
def test_twenty_huge_tasks_fit(names: list[str], query: str, ctx: ViewContext) -> None:
    big = Task(names[0], names[1], ctx.now, names[2], names[3], names[4])
    ref = PageRef(offset=MAX_OFFSET - 40, page_size=MAX_PAGE_SIZE, query=query)
    message = build_page([big] * MAX_PAGE_SIZE, total=MAX_OFFSET, ref=ref, ctx=ctx)
    assert_valid_message(message)


@SETTINGS
@given(ref=refs)
def test_page_ref_round_trips_within_a_button_value(ref: PageRef) -> None:
    value = ref.encode()
    assert len(value) < 2000
    assert PageRef.parse(value) == ref


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=4)
        ),
        max_leaves=12,
    )


near_miss = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), json_values()),
        "o": st.one_of(st.integers(-5, MAX_OFFSET + 5), json_values()),
        "n": st.one_of(st.integers(-1, 22), json_values()),
        "q": st.one_of(st.text(max_size=220), json_values()),
    },
)


@SETTINGS
@given(
    value=st.one_of(
        st.text(max_size=300),
        json_values().map(json.dumps),
        near_miss.map(json.dumps),
        st.binary(max_size=50).map(lambda b: b.decode("latin-1")),
    )
)
def test_page_ref_parse_only_ever_raises_bad_button_value(value: str) -> None:
    try:
        ref = PageRef.parse(value)
    except BadButtonValue as error:
        assert str(error)
    else:
        assert PageRef.parse(ref.encode()) == ref


kps_errors = st.one_of(
    st.builds(
        KPSAPIError,
        status=st.integers(100, 599),
        error_code=kps_text,
        error_msg=kps_text,
        request_id=st.one_of(st.none(), kps_text),
        service=st.sampled_from(["KPS", "IAM", "<!here>"]),
    ),
    st.builds(
        KPSBadResponse,
        kps_text,
        status=st.integers(100, 599),
        request_id=st.one_of(st.none(), kps_text),
    ),
    st.builds(KPSTimeout, short_text),
    st.builds(KPSConnectionError, kps_text),
    st.builds(KPSError, short_text),
)


@SETTINGS
@given(error=kps_errors, ref=st.one_of(st.none(), refs), action=short_text)
def test_any_error_message_is_valid_and_escaped(
    error: KPSError, ref: PageRef | None, action: str
) -> None:
    message = build_error(error, ref=ref, action=action)
    assert_valid_message(message)
    assert message.text.startswith("Could not ")


@SETTINGS
@given(text=kps_text)
def test_usage_errors_and_notices_are_valid_and_escaped(text: str) -> None:
    assert_valid_message(build_usage_error(text))
    if escape(text).strip():
        assert_valid_message(build_line(text))


@SETTINGS
@given(
    running=st.integers(-1, 10**6),
    stale=st.integers(-1, 10**6),
    oldest=st.one_of(st.none(), tasks),
    fetched_at=st.one_of(st.none(), nows),
    problems=st.lists(kps_text, max_size=15).map(tuple),
    error=st.one_of(st.none(), kps_errors),
    ctx=contexts,
    page_size=st.integers(1, MAX_PAGE_SIZE),
)
def test_any_home_view_is_valid_and_escaped(
    running: int,
    stale: int,
    oldest: Task | None,
    fetched_at: datetime | None,
    problems: tuple[str, ...],
    error: KPSError | None,
    ctx: ViewContext,
    page_size: int,
) -> None:
    summary = HomeSummary(running, stale, oldest, fetched_at, problems, error)
    view = build_home(summary, ctx, page_size=page_size)
    assert view["type"] == "home"
    assert_valid_blocks(view["blocks"], max_blocks=100)
    for text in text_values(view):
        assert_escaped(text)


@SETTINGS
@given(text=kps_text, limit=st.integers(1, 300))
def test_clip_keeps_a_prefix_and_whole_entities(text: str, limit: int) -> None:
    escaped = escape(text)
    clipped = clip(escaped, limit)
    assert len(clipped) <= limit
    if clipped == escaped:
        return
    assert clipped.endswith("…")
    kept = clipped[:-1]
    assert escaped.startswith(kept)
    assert_escaped(kept)  # a cut inside &amp; would leave a bare &
