"""The KPS client over real loopback HTTP against the simulator."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web

from bot.auth import StaticTokenAuth
from bot.errors import (
    KPSAPIError,
    KPSBadResponse,
    KPSConnectionError,
    KPSThrottled,
    KPSTimeout,
    decode_error,
    request_id_of,
)
from bot.kps import KPSClient, RetryPolicy
from bot.sandbox.simulator import Fault, RecordedRequest, Simulator, seed_tasks
from bot.secret import Secret
from tests.conftest import PROJECT, TOKEN, until


class Sleeps:
    """Records the backoff waits instead of sleeping them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(auth=StaticTokenAuth(Secret(TOKEN)), timeout=5) as client:
        yield client


def client_for(
    sim: Simulator, http: httpx.AsyncClient, sleeps: Sleeps | None = None, attempts: int = 4
) -> KPSClient:
    return KPSClient(
        http,
        endpoint=sim.url,
        project_id=PROJECT,
        retry=RetryPolicy(attempts=attempts),
        sleep=sleeps or Sleeps(),
        jitter=lambda: 1.0,
    )


async def test_page_is_typed(sim: Simulator, http: httpx.AsyncClient) -> None:
    page = await client_for(sim, http).list_running_tasks(10, 0)
    assert page.total == 37 and len(page.tasks) == 10 and page.offset == 0
    first = min(sim.running(), key=lambda t: (t.task_time_ms or 0, t.task_id))
    task = page.tasks[0]
    assert task.task_id == first.task_id and task.server_name == first.server_name
    assert task.started_at == datetime.fromtimestamp((first.task_time_ms or 0) / 1000, tz=UTC)
    assert task.started_at is not None and task.started_at.tzinfo is UTC
    request = sim.requests[-1]
    assert request.query == {"limit": "10", "offset": "0"}
    assert request.headers["x-auth-token"] == TOKEN


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (1001, 0), (10, -1), (True, 0)])
async def test_bad_paging_is_refused_before_any_request(
    sim: Simulator, http: httpx.AsyncClient, limit: int, offset: int
) -> None:
    with pytest.raises(ValueError):
        await client_for(sim, http).list_running_tasks(limit, offset)
    assert sim.requests == []


async def test_paging_edges(sim: Simulator, http: httpx.AsyncClient) -> None:
    kps = client_for(sim, http)
    past = await kps.list_running_tasks(10, 100)
    assert past.total == 37 and past.tasks == ()
    one = await kps.list_running_tasks(1, 36)
    assert len(one.tasks) == 1
    whole = await kps.list_running_tasks(1000, 0)
    assert len(whole.tasks) == 37
    for task in list(sim.running()):
        sim.finish_task(task.task_id)
    empty = await kps.list_running_tasks(1000, 0)
    assert empty.total == 0 and empty.tasks == ()


async def test_walk_reads_every_page_once(http: httpx.AsyncClient) -> None:
    async with Simulator(project_id=PROJECT, tasks=seed_tasks(2500), static_tokens=[TOKEN]) as sim:
        kps = client_for(sim, http)
        snapshot = await kps.walk_running_tasks()
        assert snapshot.complete and snapshot.total == 2500 and snapshot.requests == 3
        assert len({t.task_id for t in snapshot.tasks}) == 2500
        parallel = await kps.walk_running_tasks(concurrency=3)
        assert parallel.complete and {t.task_id for t in parallel.tasks} == {
            t.task_id for t in snapshot.tasks
        }


async def test_walk_survives_a_list_that_shrinks_mid_walk(http: httpx.AsyncClient) -> None:
    async with Simulator(project_id=PROJECT, tasks=seed_tasks(2500), static_tokens=[TOKEN]) as sim:
        shrunk = False

        def shrink(request: RecordedRequest) -> None:
            nonlocal shrunk
            if not shrunk and request.query.get("offset") == "0":
                shrunk = True
                for task in sim.running()[:600]:
                    sim.finish_task(task.task_id)

        sim.after_request = shrink
        snapshot = await client_for(sim, http).walk_running_tasks(attempts=1)
        ids = [t.task_id for t in snapshot.tasks]
        assert len(ids) == len(set(ids))
        assert not snapshot.complete  # the list changed: a watcher must not trust it
        again = await client_for(sim, http).walk_running_tasks(attempts=1)
        assert again.complete and again.total == 1900 and len(again.tasks) == 1900


async def test_walk_ends_when_the_list_keeps_growing(http: httpx.AsyncClient) -> None:
    async with Simulator(project_id=PROJECT, tasks=seed_tasks(1500), static_tokens=[TOKEN]) as sim:

        def grow(_: RecordedRequest) -> None:
            for _added in range(1200):
                sim.add_task()

        sim.after_request = grow
        snapshot = await client_for(sim, http).walk_running_tasks(page_size=1000, attempts=2)
        ids = [t.task_id for t in snapshot.tasks]
        assert len(ids) == len(set(ids))
        assert not snapshot.complete
        # Each walk stops after twice the pages its first answer promised, plus two: here
        # 6 for the first (1500 tasks) and 20 for the second (8700 by then).
        assert snapshot.requests == 6 + 20


@pytest.mark.parametrize(
    ("shape", "code", "message"),
    [
        ("flat", "KPS.0002", "parameter error"),
        ("nested", "KMS.0205", "nested message"),
        ("apig", "APIG.0308", "The throttling threshold has been reached"),
        ("keystone", "401", "Unauthorized: The username or password is wrong."),
    ],
)
async def test_every_error_shape_is_read(
    sim: Simulator, http: httpx.AsyncClient, shape: str, code: str, message: str
) -> None:
    status = 401 if shape == "keystone" else 400
    sim.inject(Fault(kind="status", status=status, shape=shape, error_code=code, error_msg=message))
    with pytest.raises(KPSAPIError) as caught:
        await client_for(sim, http).list_running_tasks()
    error = caught.value
    assert error.status == status and error.error_code == code
    assert message.split(": ")[-1] in error.error_msg
    assert error.request_id and len(error.request_id) >= 16
    assert sim.count("GET", "/v3/") == 1  # 4xx is not retried


async def test_raw_and_html_errors_fall_back_to_status(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    sim.inject(Fault(kind="html", status=404))
    with pytest.raises(KPSAPIError) as caught:
        await client_for(sim, http).list_running_tasks()
    assert caught.value.error_code == "404" and "<" not in str(caught.value)
    sim.inject(Fault(kind="status", status=418, shape="text", error_msg="short and stout"))
    with pytest.raises(KPSAPIError) as caught:
        await client_for(sim, http).list_running_tasks()
    assert caught.value.error_code == "418" and "short and stout" in caught.value.error_msg


@pytest.mark.parametrize("kind", ["garbage", "wrong_types"])
async def test_undocumented_bodies_are_bad_responses(
    sim: Simulator, http: httpx.AsyncClient, kind: str
) -> None:
    sim.inject(Fault(kind=kind))
    with pytest.raises(KPSBadResponse) as caught:
        await client_for(sim, http).list_running_tasks()
    assert caught.value.request_id


async def test_transient_failures_are_retried_with_backoff(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    sleeps = Sleeps()
    sim.inject(Fault(kind="status", status=503, times=2))
    sim.inject(Fault(kind="disconnect"))
    page = await client_for(sim, http, sleeps).list_running_tasks()
    assert page.total == 37
    assert sim.count("GET", "/v3/") == 4
    assert sleeps.waits == [0.25, 0.5, 1.0]  # jitter pinned at its ceiling


async def test_retry_after_is_honoured_up_to_the_cap(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    sleeps = Sleeps()
    sim.inject(Fault(kind="retry_after", delay=2))
    sim.inject(Fault(kind="retry_after", delay=3600))
    # Issue 10 item 11: a Retry-After past the cap used to be waited out (capped at 30 s, three
    # times over); now it ends the call at once, and the error says KPS is throttling.
    with pytest.raises(KPSThrottled) as caught:
        await client_for(sim, http, sleeps).list_running_tasks()
    assert sleeps.waits == [2.0]
    assert sim.count("GET", "/v3/") == 2
    assert caught.value.status == 429 and caught.value.retry_after == 3600
    assert "KPS is throttling" in str(caught.value) and "3,600 s" in str(caught.value)


async def test_attempts_are_bounded(sim: Simulator, http: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    sim.inject(Fault(kind="status", status=500, times=-1))
    with pytest.raises(KPSAPIError) as caught:
        await client_for(sim, http, sleeps, attempts=3).list_running_tasks()
    assert caught.value.status == 500
    assert sim.count("GET", "/v3/") == 3 and len(sleeps.waits) == 2


async def test_timeouts_and_unreachable_hosts_are_their_own_errors(
    sim: Simulator, refused_url: str
) -> None:
    sim.latency = 1.0
    async with httpx.AsyncClient(auth=StaticTokenAuth(Secret(TOKEN)), timeout=0.1) as slow:
        with pytest.raises(KPSTimeout):
            await client_for(sim, slow, attempts=2).list_running_tasks()
        dead = KPSClient(slow, endpoint=refused_url, project_id=PROJECT, sleep=Sleeps())
        with pytest.raises(KPSConnectionError) as caught:
            await dead.list_running_tasks()
        assert TOKEN not in str(caught.value) and TOKEN not in repr(dead)


async def test_task_status_and_failed_tasks(sim: Simulator, http: httpx.AsyncClient) -> None:
    kps = client_for(sim, http)
    running, failing = sim.running()[:2]
    status = await kps.get_task_status(running.task_id)
    assert status.task_status.startswith("RUNNING_") and status.phase == "RUNNING"
    sim.finish_task(failing.task_id, failed=True, error_code="KPS.3001", error_msg="ECS offline")
    failed = await kps.list_failed_tasks()
    assert [f.task.task_id for f in failed.tasks] == [failing.task_id]
    assert failed.tasks[0].error_code == "KPS.3001"
    assert (await kps.get_task_status(failing.task_id)).phase == "FAILED"
    with pytest.raises(KPSAPIError) as caught:
        await kps.get_task_status("no-such-task")
    assert caught.value.status == 404


async def test_task_time_as_number_and_null_is_accepted() -> None:
    now_ms = int(time.time() * 1000)
    body = {
        "total": 2,
        "tasks": [
            {"task_id": "a", "operate_type": "RUNNING_RESET", "task_time": now_ms},
            {"task_id": "b", "operate_type": "RUNNING_UNBIND", "task_time": None},
        ],
    }
    # A narrow unit case: the simulator always sends strings, as the docs do.
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with httpx.AsyncClient(transport=transport) as http:
        page = await KPSClient(http, endpoint="http://kps", project_id=PROJECT).list_running_tasks()
    assert page.tasks[0].started_at == datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    assert page.tasks[1].started_at is None


async def test_concurrent_identical_reads_share_one_request(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    import asyncio

    sim.latency = 0.2
    kps = client_for(sim, http)
    pages = await asyncio.gather(*(kps.list_running_tasks(10, 0) for _ in range(20)))
    assert {p.total for p in pages} == {37} and len({p.tasks for p in pages}) == 1
    assert sim.count("GET", "/v3/") == 1
    # Different pages are different requests, and nothing is kept once a request returns.
    await asyncio.gather(kps.list_running_tasks(10, 0), kps.list_running_tasks(10, 10))
    assert sim.count("GET", "/v3/") == 3


async def test_a_caller_leaving_does_not_cancel_the_shared_request(
    sim: Simulator, http: httpx.AsyncClient
) -> None:
    import asyncio

    sim.latency = 0.3
    kps = client_for(sim, http)
    leaver = asyncio.create_task(kps.list_running_tasks(10, 0))
    stayer = asyncio.create_task(kps.list_running_tasks(10, 0))
    # Cancel only once the shared GET is at KPS (the simulator records it before its latency).
    await until(lambda: sim.count("GET", "/v3/") == 1)
    leaver.cancel()
    page = await stayer
    assert page.total == 37 and sim.count("GET", "/v3/") == 1


async def test_requests_beyond_the_gate_wait_their_turn(sim: Simulator) -> None:
    import asyncio

    sim.latency = 0.1
    async with httpx.AsyncClient(auth=StaticTokenAuth(Secret(TOKEN))) as http:
        kps = KPSClient(http, endpoint=sim.url, project_id=PROJECT, max_in_flight=2)
        pages = await asyncio.gather(*(kps.list_running_tasks(1, i) for i in range(6)))
    assert [p.offset for p in pages] == list(range(6))
    # Arrival times come in pairs: never more than two requests at KPS at once.
    arrivals = sorted(r.time for r in sim.requests)
    assert arrivals[2] - arrivals[0] >= 0.09 and arrivals[4] - arrivals[2] >= 0.09


def test_the_error_decoder_reads_raw_parts_without_a_client() -> None:
    # gidgethub's decipher_response shape: status, headers, body; header names match any case.
    body = b'{"error_code":"KPS.0002","error_msg":"parameter error"}'
    error = decode_error(400, {"x-request-id": "req-1"}, body)
    assert (error.status, error.error_code, error.error_msg) == (400, "KPS.0002", "parameter error")
    assert error.request_id == "req-1"
    nested = b'{"error":{"code":"401","message":"wrong","title":"Unauthorized"},"request_id":"r2"}'
    iam = decode_error(401, {}, nested, service="IAM")
    assert (iam.service, iam.error_msg, iam.request_id) == ("IAM", "Unauthorized: wrong", "r2")
    assert decode_error(502, {}, b"<html>bad gateway</html>").error_msg == (
        "Bad Gateway (HTML error page)"
    )
    assert decode_error(502, {}, b"", reason="Upstream Down").error_msg == "Upstream Down"
    assert decode_error(599, {}, b"").error_msg == "no body"
    assert request_id_of({"X-Openstack-Request-Id": "os-1"}) == "os-1"
    assert request_id_of({}) is None


def test_the_error_decoder_survives_deep_nesting_and_skips_huge_bodies() -> None:
    # json.loads raises RecursionError on deep nesting, which is no KPSError: the user would
    # have seen "Something went wrong" instead of the status.
    deep = decode_error(500, {}, b"[" * 100_000)
    assert (deep.status, deep.error_code) == (500, "500")
    assert deep.error_msg == "[" * 300  # the start of the raw text, as for any non-JSON body
    # A well-formed error past 64 KB is not parsed (an error never needs that much JSON).
    padded = b'{"error_code":"KPS.0002","error_msg":"big"' + b" " * (64 * 1024) + b"}"
    big = decode_error(400, {}, padded)
    assert big.error_code == "400" and big.error_msg.startswith('{"error_code":"KPS.0002"')
    small = decode_error(400, {}, b'{"error_code":"KPS.0002","error_msg":"small"}')
    assert small.error_code == "KPS.0002"


async def test_a_deeply_nested_error_body_reaches_the_caller_as_a_kps_error() -> None:
    async def nested(request: web.Request) -> web.Response:
        return web.Response(status=500, body=b"[" * 100_000, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v3/{project}/running-tasks", nested)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with httpx.AsyncClient(auth=StaticTokenAuth(Secret(TOKEN)), timeout=5) as http:
            kps = KPSClient(
                http,
                endpoint=f"http://{host}:{port}",
                project_id=PROJECT,
                retry=RetryPolicy(attempts=1),
                sleep=Sleeps(),
            )
            with pytest.raises(KPSAPIError) as caught:
                await kps.list_running_tasks()
    finally:
        await runner.cleanup()
    assert (caught.value.status, caught.value.error_code) == (500, "500")
    assert "500" in str(caught.value)  # words for the user, not "Something went wrong"
