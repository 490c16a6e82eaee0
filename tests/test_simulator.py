"""The KPS/IAM simulator over real loopback HTTP: API shapes, auth, faults, admin API, scale."""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from bot.sandbox.simulator import (
    Fault,
    RecordedRequest,
    SimTask,
    Simulator,
    expected_signature,
    seed_tasks,
)
from bot.sandbox.simulator.tasks import TaskList

PROJECT = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TOKEN = "static-test-token"
RUNNING = f"/v3/{PROJECT}/running-tasks"
FAILED = f"/v3/{PROJECT}/failed-tasks"
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z
AK, SK = "QTWAOYTTINDUT2QVKYUC", "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc"
DOMAIN, USER, PASSWORD = "acme", "kps-bot", "correct horse"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def simulator(clock: FakeClock) -> AsyncIterator[Simulator]:
    """An empty simulator that accepts one static token, on a hand-moved clock."""
    async with Simulator(static_tokens=[TOKEN], clock=clock) as sim:
        yield sim


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=simulator.url, headers={"X-Auth-Token": TOKEN}, timeout=10
    ) as http:
        yield http


def add(sim: Simulator, task_id: str, time_ms: int | None, status: str = "RUNNING_RESET") -> None:
    sim.add_task(task_id=task_id, task_time_ms=time_ms, status=status)


async def ids(client: httpx.AsyncClient, path: str = RUNNING, **params: Any) -> list[str]:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return [task["task_id"] for task in response.json()["tasks"]]


# -- KPS listing ---------------------------------------------------------------------------------


async def test_running_tasks_have_the_documented_shape(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    simulator.add_task(
        task_id="aee8d2fe-5484-4753-9177-5a38dc15546c",
        operate_type="RUNNING_RESET",
        task_time_ms=1523342130000,
        server_name="Test",
        server_id="c9aa197b-a6b6-4c33-b3a6-fa0b4ec50006",
        keypair_name="KeyPair-xt",
    )
    response = await client.get(RUNNING)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    # The docs' example, field for field: task_time is epoch milliseconds as a string.
    assert response.json() == {
        "total": 1,
        "tasks": [
            {
                "task_id": "aee8d2fe-5484-4753-9177-5a38dc15546c",
                "operate_type": "RUNNING_RESET",
                "task_time": "1523342130000",
                "server_name": "Test",
                "server_id": "c9aa197b-a6b6-4c33-b3a6-fa0b4ec50006",
                "keypair_name": "KeyPair-xt",
            }
        ],
    }


async def test_listing_is_oldest_first_then_by_id_and_only_running_or_ready(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    add(simulator, "c", 3000)
    add(simulator, "b", 1000)
    add(simulator, "a", 1000)
    add(simulator, "ready", 2000, status="READY_REPLACE")
    add(simulator, "done", 500, status="SUCCESS_RESET")
    add(simulator, "broken", 600, status="FAILED_UNBIND")
    add(simulator, "untimed", None)
    assert await ids(client) == ["untimed", "a", "b", "ready", "c"]
    assert [t.task_id for t in simulator.running()] == ["untimed", "a", "b", "ready", "c"]
    untimed = (await client.get(RUNNING, params={"limit": 1})).json()["tasks"][0]
    assert untimed["task_time"] is None


async def test_in_place_edits_show_up_in_the_next_answer(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    for index in range(5):
        add(simulator, f"t{index}", 1000 + index)
    assert await ids(client) == ["t0", "t1", "t2", "t3", "t4"]
    simulator.tasks[0].status = "SUCCESS_RESET"
    simulator.tasks[4].task_time_ms = 1
    del simulator.tasks[2]
    assert await ids(client) == ["t4", "t1", "t3"]
    simulator.tasks.append(SimTask("new", "RUNNING_UNBIND", 0, "s", "sid", "kp"))
    assert await ids(client) == ["new", "t4", "t1", "t3"]
    simulator.tasks = [SimTask("only", "RUNNING_RESET", 5, "s", "sid", "kp")]
    assert await ids(client) == ["only"]
    simulator.tasks.clear()
    assert (await client.get(RUNNING)).json() == {"total": 0, "tasks": []}


def test_each_task_list_counts_only_its_own_changes() -> None:
    first = TaskList([SimTask("a", "RUNNING_RESET", 1, "s", "sid", "kp")])
    second = TaskList([SimTask("b", "RUNNING_RESET", 2, "s", "sid", "kp")])
    view = second.view()
    first[0].status = "SUCCESS_RESET"
    first.append(SimTask("c", "RUNNING_RESET", 3, "s", "sid", "kp"))
    assert second.view() is view  # nothing of the second list changed: no rebuild
    assert [t.task_id for t in first.view().running] == ["c"]


def test_tasks_put_in_later_are_watched_too() -> None:
    tasks = TaskList()
    spliced = SimTask("spliced", "RUNNING_RESET", 5, "s", "sid", "kp")
    added = SimTask("added", "RUNNING_RESET", 6, "s", "sid", "kp")
    inserted = SimTask("inserted", "RUNNING_RESET", 7, "s", "sid", "kp")
    tasks[0:0] = [spliced]
    tasks += [added]
    tasks.insert(0, inserted)
    assert [t.task_id for t in tasks.view().running] == ["spliced", "added", "inserted"]
    spliced.status = "FAILED_RESET"
    added.task_time_ms = 9
    inserted.task_id = "renamed"
    assert [t.task_id for t in tasks.view().running] == ["renamed", "added"]
    assert [t.task_id for t in tasks.view().failed] == ["spliced"]
    assert tasks.find("renamed") is inserted and tasks.find("inserted") is None


def test_a_task_shared_by_two_lists_updates_both() -> None:
    shared = SimTask("shared", "RUNNING_RESET", 1, "s", "sid", "kp")
    first, second = TaskList([shared]), TaskList([shared])
    assert first.view().running == second.view().running == [shared]
    shared.status = "SUCCESS_RESET"
    assert first.view().running == second.view().running == []


async def test_tasks_added_in_a_row_list_in_that_order(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    added = [simulator.add_task().task_id for _ in range(20)]  # the clock stands still
    assert await ids(client) == added
    assert simulator.tasks[0].task_time_ms == int(START * 1000)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"limit": ""},
        {"offset": "-1"},
        {"offset": "x"},
        {"offset": "2.0"},
        {"limit": "10", "offset": " 1"},
    ],
)
async def test_bad_paging_is_a_kps_400(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    for path in (RUNNING, FAILED):
        response = await client.get(path, params=params)
        assert response.status_code == 400
        body = response.json()
        assert body["error_code"] == "KPS.0002"
        assert list(params)[-1] in body["error_msg"]  # the bad one is listed last


async def test_paging_edges(simulator: Simulator, client: httpx.AsyncClient) -> None:
    for index in range(5):
        add(simulator, f"t{index}", 1000 + index)
    assert await ids(client, limit=1) == ["t0"]
    assert await ids(client, limit=1, offset=4) == ["t4"]
    assert await ids(client, limit=2, offset=3) == ["t3", "t4"]
    assert await ids(client, limit=1000) == ["t0", "t1", "t2", "t3", "t4"]
    for offset in (5, 500):
        response = await client.get(RUNNING, params={"offset": offset})
        assert response.json() == {"total": 5, "tasks": []}


async def test_default_limit_is_1000(simulator: Simulator, client: httpx.AsyncClient) -> None:
    for index in range(1001):
        add(simulator, f"t{index:04d}", 1000)
    first = await client.get(RUNNING)
    assert first.json()["total"] == 1001 and len(first.json()["tasks"]) == 1000
    assert await ids(client, offset=1000) == ["t1000"]


async def test_no_tasks(client: httpx.AsyncClient) -> None:
    for path in (RUNNING, FAILED):
        assert (await client.get(path)).json() == {"total": 0, "tasks": []}


async def test_failed_tasks_carry_their_error(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    add(simulator, "a", 1000)
    simulator.add_task(task_id="b", task_time_ms=2000, operate_type="RUNNING_REPLACE")
    add(simulator, "c", 3000)
    simulator.finish_task("b", failed=True, error_code="KPS.0021", error_msg="server is off")
    simulator.finish_task("a", failed=True)
    simulator.finish_task("c")
    body = (await client.get(FAILED)).json()
    assert body["total"] == 2
    first, second = body["tasks"]
    assert first["task_id"] == "a"
    assert first["task_error_code"] is None and first["task_error_msg"] is None
    assert second["task_id"] == "b" and second["operate_type"] == "RUNNING_REPLACE"
    assert second["task_error_code"] == "KPS.0021"
    assert second["task_error_msg"] == "server is off"
    assert await ids(client) == []


async def test_another_project_is_forbidden(client: httpx.AsyncClient) -> None:
    response = await client.get("/v3/ffffffffffffffffffffffffffffffff/running-tasks")
    assert response.status_code == 403
    body = response.json()
    assert body["error_code"] == "APIG.0302"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_unknown_path_or_method_is_apig_0101(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get(f"/v3/{PROJECT}/no-such-api"),
        await client.post(RUNNING),
        await client.get("/v2/whatever"),
    ):
        assert response.status_code == 404
        assert response.json()["error_code"] == "APIG.0101"
        assert response.headers["x-request-id"]


async def test_task_status_follows_the_task(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    reset = simulator.add_task(operate_type="RUNNING_RESET")
    replace = simulator.add_task(operate_type="RUNNING_REPLACE")
    path = f"/v3/{PROJECT}/tasks/"
    response = await client.get(path + reset.task_id)
    assert response.json() == {
        "server_id": reset.server_id,
        "task_id": reset.task_id,
        "task_status": "RUNNING_RESET",
    }
    simulator.finish_task(reset.task_id)
    simulator.finish_task(replace.task_id, failed=True)
    assert (await client.get(path + reset.task_id)).json()["task_status"] == "SUCCESS_RESET"
    assert (await client.get(path + replace.task_id)).json()["task_status"] == "FAILED_REPLACE"
    missing = await client.get(path + "no-such-task")
    assert missing.status_code == 404
    assert missing.json() == {"error_code": "KPS.0404", "error_msg": "task not found"}
    with pytest.raises(KeyError):
        simulator.finish_task("no-such-task")


async def test_requests_are_recorded(simulator: Simulator, client: httpx.AsyncClient) -> None:
    await client.get(RUNNING, params={"limit": 3, "offset": 6})
    await client.get(FAILED)
    record = simulator.requests[0]
    assert (record.method, record.path) == ("GET", RUNNING)
    assert record.query == {"limit": "3", "offset": "6"}
    assert record.headers["x-auth-token"] == TOKEN
    assert record.time == START
    assert TOKEN not in repr(record)
    assert simulator.count("GET", RUNNING) == 1
    assert simulator.count("get", f"/v3/{PROJECT}/") == 2
    assert simulator.count("POST", "/v3/") == 0


# -- IAM tokens ----------------------------------------------------------------------------------


def password_body(
    *, password: str = PASSWORD, scope: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": USER, "password": password, "domain": {"name": DOMAIN}}
                },
            },
            "scope": {"project": scope or {"id": PROJECT}},
        }
    }


@pytest.fixture
async def iam(clock: FakeClock) -> AsyncIterator[Simulator]:
    """A simulator that knows one IAM user and issues tokens valid for an hour."""
    users = {(DOMAIN, USER): PASSWORD}
    async with Simulator(users=users, token_lifetime=3600, clock=clock) as sim:
        yield sim


async def test_iam_issues_a_project_scoped_token(iam: Simulator) -> None:
    async with httpx.AsyncClient(base_url=iam.url) as http:
        response = await http.post("/v3/auth/tokens", json=password_body())
        by_name = await http.post(
            "/v3/auth/tokens",
            params={"nocatalog": "true"},
            json=password_body(scope={"name": "cn-north-4"}),
        )
    assert response.status_code == 201 and by_name.status_code == 201
    token = response.headers["x-subject-token"]
    assert len(token) > 40 and token != by_name.headers["x-subject-token"]
    body = response.json()["token"]
    assert body["expires_at"] == "2027-01-15T09:00:00.000000Z"  # START + one hour
    assert body["issued_at"] == "2027-01-15T08:00:00.000000Z"
    assert body["methods"] == ["password"]
    assert body["project"]["id"] == PROJECT and body["project"]["name"] == "cn-north-4"
    assert body["user"]["name"] == USER
    assert body["catalog"][0]["endpoints"][0]["url"] == iam.url
    assert "catalog" not in by_name.json()["token"]


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), ("someone-else", PASSWORD)])
async def test_iam_refuses_wrong_credentials(iam: Simulator, user: str, password: str) -> None:
    body = password_body(password=password)
    body["auth"]["identity"]["password"]["user"]["name"] = user
    async with httpx.AsyncClient(base_url=iam.url) as http:
        response = await http.post("/v3/auth/tokens", json=body)
    assert response.status_code == 401
    assert "x-subject-token" not in response.headers
    assert response.json() == {
        "error": {
            "code": 401,
            "message": "The username or password is wrong.",
            "title": "Unauthorized",
        }
    }


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"auth": {"identity": {"methods": ["password"]}}}).encode(),
        json.dumps({"auth": {"identity": password_body()["auth"]["identity"]}}).encode(),
        json.dumps(
            {"auth": {**password_body()["auth"], "scope": {"domain": {"name": DOMAIN}}}}
        ).encode(),
    ],
)
async def test_iam_refuses_a_malformed_body(iam: Simulator, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=iam.url) as http:
        response = await http.post("/v3/auth/tokens", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 400


async def test_iam_refuses_another_project(iam: Simulator) -> None:
    async with httpx.AsyncClient(base_url=iam.url) as http:
        by_id = await http.post("/v3/auth/tokens", json=password_body(scope={"id": "f" * 32}))
        by_name = await http.post("/v3/auth/tokens", json=password_body(scope={"name": "eu-1"}))
    assert by_id.status_code == 400 and by_name.status_code == 400


async def test_issued_tokens_expire_on_the_clock(iam: Simulator, clock: FakeClock) -> None:
    async with httpx.AsyncClient(base_url=iam.url) as http:
        first = (await http.post("/v3/auth/tokens", json=password_body())).headers
        iam.token_lifetime = 60  # only tokens issued from now on
        second = (await http.post("/v3/auth/tokens", json=password_body())).headers

        async def list_with(token: str) -> httpx.Response:
            return await http.get(RUNNING, headers={"X-Auth-Token": token})

        assert (await list_with(first["x-subject-token"])).status_code == 200
        assert (await list_with(second["x-subject-token"])).status_code == 200
        clock.now += 60
        expired = await list_with(second["x-subject-token"])
        assert (await list_with(first["x-subject-token"])).status_code == 200
        clock.now += 3600
        assert (await list_with(first["x-subject-token"])).status_code == 401
    assert expired.status_code == 401
    assert expired.json()["error_code"] == "APIG.0307"
    assert expired.json()["error_msg"] == "The token must be updated."


async def test_expire_tokens_revokes_what_iam_issued(iam: Simulator) -> None:
    async with httpx.AsyncClient(base_url=iam.url) as http:
        token = (await http.post("/v3/auth/tokens", json=password_body())).headers[
            "x-subject-token"
        ]
        iam.expire_tokens()
        response = await http.get(RUNNING, headers={"X-Auth-Token": token})
    assert response.json()["error_code"] == "APIG.0307"


async def test_static_tokens_never_expire(
    simulator: Simulator, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    clock.now += 10 * 365 * 86400
    assert (await client.get(RUNNING)).status_code == 200


async def test_unknown_or_missing_credentials(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        unknown = await http.get(RUNNING, headers={"X-Auth-Token": "MIIforged"})
        missing = await http.get(RUNNING)
    assert unknown.status_code == 401 and missing.status_code == 401
    assert unknown.json()["error_code"] == "APIG.0301"
    assert unknown.json()["error_msg"].endswith("decrypt token fail")
    assert missing.json()["error_code"] == "APIG.0301"
    assert missing.json()["error_msg"].endswith("x-auth-token not found")
    assert missing.json()["request_id"] == missing.headers["x-request-id"]


async def test_with_no_credentials_configured_everything_is_accepted() -> None:
    async with Simulator() as sim, httpx.AsyncClient(base_url=sim.url) as http:
        listing = await http.get(RUNNING)
        token = await http.post("/v3/auth/tokens", json=password_body(password="anything at all"))
    assert listing.status_code == 200 and token.status_code == 201


# -- AK/SK signing -------------------------------------------------------------------------------


def sdk_date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%dT%H%M%SZ")


def sdk_sign(
    base_url: str,
    path: str,
    query: Mapping[str, object],
    *,
    date: str,
    ak: str = AK,
    sk: str = SK,
    extra_headers: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """Sign a GET with Huawei Cloud's own Python SDK signer: the URI to send and its headers."""
    request = SdkRequest(
        method="GET",
        schema="http",
        host=httpx.URL(base_url).netloc.decode(),
        resource_path=path,
        query_params=list(query.items()),
        header_params={
            "Content-Type": "application/json",
            "X-Sdk-Date": date,
            "X-Project-Id": PROJECT,
            **(extra_headers or {}),
        },
        body="",
    )
    Signer(BasicCredentials(ak, sk)).sign(request)
    return request.uri, dict(request.header_params)


@pytest.fixture
async def signed(clock: FakeClock) -> AsyncIterator[Simulator]:
    async with Simulator(aksk={AK: SK}, clock=clock) as sim:
        for index in range(3):
            sim.add_task(task_id=f"t{index}", task_time_ms=1000 + index)
        yield sim


async def test_a_request_signed_by_the_sdk_is_accepted(signed: Simulator) -> None:
    uri, headers = sdk_sign(signed.url, RUNNING, {"limit": 2, "offset": 1}, date=sdk_date(START))
    assert headers["Authorization"].startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=")
    async with httpx.AsyncClient(base_url=signed.url) as http:
        response = await http.get(uri, headers=headers)
    assert response.status_code == 200, response.text
    assert [t["task_id"] for t in response.json()["tasks"]] == ["t1", "t2"]


async def test_a_path_with_reserved_characters_is_checked_segment_by_segment(
    signed: Simulator,
) -> None:
    path = f"/v3/{PROJECT}/tasks/a b~c"
    signed.add_task(task_id="a b~c")
    uri, headers = sdk_sign(signed.url, path.replace(" ", "%20"), {}, date=sdk_date(START))
    async with httpx.AsyncClient(base_url=signed.url) as http:
        response = await http.get(uri, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["task_id"] == "a b~c"


@pytest.mark.parametrize("tamper", ["signature", "query", "secret", "access", "algorithm"])
async def test_a_tampered_signature_is_refused(signed: Simulator, tamper: str) -> None:
    query = {"limit": 2, "offset": 1}
    uri, headers = sdk_sign(
        signed.url,
        RUNNING,
        query,
        date=sdk_date(START),
        sk="not-the-secret" if tamper == "secret" else SK,
        ak="UNKNOWNACCESSKEY" if tamper == "access" else AK,
    )
    if tamper == "signature":
        auth = headers["Authorization"]
        headers["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    if tamper == "query":
        uri = uri.replace("offset=1", "offset=0")
    if tamper == "algorithm":
        headers["Authorization"] = headers["Authorization"].replace("SDK-HMAC-SHA256", "HMAC")
    async with httpx.AsyncClient(base_url=signed.url) as http:
        response = await http.get(uri, headers=headers)
    assert response.status_code == 401
    assert response.json()["error_code"] == "APIG.0301"
    assert response.json()["error_msg"].endswith("verify aksk signature fail")


@pytest.mark.parametrize(("skew", "status"), [(-14 * 60, 200), (14 * 60, 200), (16 * 60, 401)])
async def test_the_signing_date_must_be_within_15_minutes(
    signed: Simulator, skew: int, status: int
) -> None:
    uri, headers = sdk_sign(signed.url, RUNNING, {}, date=sdk_date(START - skew))
    async with httpx.AsyncClient(base_url=signed.url) as http:
        response = await http.get(uri, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error_code"] == "APIG.0303"
        assert response.json()["error_msg"].endswith("signature expired")


async def test_temporary_keys_need_their_security_token(clock: FakeClock) -> None:
    async with Simulator(aksk={AK: SK}, security_tokens=["sts-1"], clock=clock) as sim:
        answers = []
        for extra in ({"X-Security-Token": "sts-1"}, {}, {"X-Security-Token": "sts-2"}):
            uri, headers = sdk_sign(sim.url, RUNNING, {}, date=sdk_date(START), extra_headers=extra)
            async with httpx.AsyncClient(base_url=sim.url) as http:
                answers.append(await http.get(uri, headers=headers))
    assert [r.status_code for r in answers] == [200, 401, 401]
    assert answers[1].json()["error_code"] == "APIG.0301"


def test_signature_matches_the_published_examples() -> None:
    # Huawei's signing guide (kps-api.md §5, [S15]).
    official = expected_signature(
        method="GET",
        raw_path="/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
        raw_query="limit=2&marker=13551d6b-755d-4757-b956-536f674975c0",
        headers={
            "content-type": "application/json",
            "host": "service.region.example.com",
            "x-sdk-date": "20191115T033655Z",
        },
        signed_headers=["content-type", "host", "x-sdk-date"],
        body=b"",
        secret_key="MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
    )
    assert official == "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
    # The SDK's own test vectors (huaweicloud-sdk-core tests/test_signer.py).
    headers = {"host": "service.endpoint.myhuaweicloud.com", "x-sdk-date": "20200608T023900Z"}
    common: dict[str, Any] = {
        "raw_path": "/resources",
        "raw_query": "size=1",
        "headers": headers,
        "signed_headers": ["host", "x-sdk-date"],
        "secret_key": "SecretKey",
    }
    get = expected_signature(method="GET", body=b"", **common)
    post = expected_signature(method="POST", body=b'{"name":"test","id":1}', **common)
    assert get == "cfb4171acec81de07d50e53d57eb77edd537414d66ddb1d7d780f128e12cd842"
    assert post == "436b1ac0a1ae03705934bb70ef2f2e09f7bfed2117d731a38235053199323a1f"


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ("flat", {"error_code": "KPS.0500", "error_msg": "Internal error"}),
        ("nested", {"error": {"error_code": "KPS.0500", "error_msg": "Internal error"}}),
        (
            "keystone",
            {"error": {"code": 503, "message": "Internal error", "title": "Service Unavailable"}},
        ),
    ],
)
async def test_status_fault_shapes(
    simulator: Simulator, client: httpx.AsyncClient, shape: str, expected: dict[str, Any]
) -> None:
    simulator.inject(Fault(kind="status", status=503, shape=shape))
    response = await client.get(RUNNING)
    assert response.status_code == 503
    assert response.json() == expected
    assert (await client.get(RUNNING)).status_code == 200  # times=1: used up


async def test_status_fault_apig_and_text_shapes(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    simulator.inject(
        Fault(kind="status", status=429, shape="apig", error_code="APIG.0308", delay=3)
    )
    simulator.inject(Fault(kind="status", status=418, shape="text", error_msg="short and stout"))
    throttled = await client.get(RUNNING)
    teapot = await client.get(RUNNING)
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "3"
    assert throttled.json() == {
        "error_code": "APIG.0308",
        "error_msg": "Internal error",
        "request_id": throttled.headers["x-request-id"],
    }
    assert teapot.status_code == 418 and teapot.text == "short and stout"
    assert "retry-after" not in teapot.headers


async def test_faults_are_used_in_order_and_counted(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    simulator.inject(Fault(kind="status", status=503, times=2))
    simulator.inject(Fault(kind="status", status=502))
    statuses = [(await client.get(RUNNING)).status_code for _ in range(4)]
    assert statuses == [503, 503, 502, 200]
    simulator.inject(Fault(kind="status", status=500, times=-1))
    assert [(await client.get(RUNNING)).status_code for _ in range(5)] == [500] * 5
    simulator.clear_faults()
    assert (await client.get(RUNNING)).status_code == 200


async def test_faults_match_by_path(simulator: Simulator, client: httpx.AsyncClient) -> None:
    simulator.inject(Fault(kind="status", status=500, path=FAILED))
    assert (await client.get(RUNNING)).status_code == 200
    assert (await client.get(FAILED)).status_code == 500


async def test_faults_come_before_authentication(simulator: Simulator) -> None:
    simulator.inject(Fault(kind="html", status=502))
    async with httpx.AsyncClient(base_url=simulator.url) as http:
        response = await http.get(RUNNING)
    assert response.status_code == 502  # a proxy in front of the gateway


async def test_garbage_fault(simulator: Simulator, client: httpx.AsyncClient) -> None:
    simulator.inject(Fault(kind="garbage"))
    response = await client.get(RUNNING)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)


async def test_wrong_types_fault(simulator: Simulator, client: httpx.AsyncClient) -> None:
    simulator.inject(Fault(kind="wrong_types"))
    body = (await client.get(RUNNING)).json()
    assert isinstance(body["total"], str)
    assert isinstance(body["tasks"][0]["task_time"], dict)


async def test_retry_after_fault(simulator: Simulator, client: httpx.AsyncClient) -> None:
    simulator.inject(Fault(kind="retry_after", delay=2))
    response = await client.get(RUNNING)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert response.json()["error_code"] == "APIG.0308"
    assert response.json()["request_id"] == response.headers["x-request-id"]


async def test_disconnect_fault(simulator: Simulator, client: httpx.AsyncClient) -> None:
    simulator.inject(Fault(kind="disconnect"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(RUNNING)
    assert (await client.get(RUNNING)).status_code == 200
    assert simulator.count("GET", RUNNING) == 2


async def test_html_fault(simulator: Simulator, client: httpx.AsyncClient) -> None:
    simulator.inject(Fault(kind="html", status=502))
    response = await client.get(RUNNING)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html><body><h1>502 Bad Gateway</h1></body></html>"


async def test_latency_fault_delays_then_answers(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    simulator.inject(Fault(kind="latency", delay=30))
    with pytest.raises(httpx.ReadTimeout):
        await client.get(RUNNING, timeout=0.2)
    simulator.inject(Fault(kind="latency", delay=0.05))
    assert (await client.get(RUNNING)).status_code == 200


async def test_global_latency_slows_kps_but_not_iam(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    simulator.latency = 30
    with pytest.raises(httpx.ReadTimeout):
        await client.get(RUNNING, timeout=0.2)
    token = await client.post("/v3/auth/tokens", json=password_body(), timeout=5)
    assert token.status_code == 401  # answered at once: no such user here
    simulator.latency = 0
    assert (await client.get(RUNNING)).status_code == 200


async def test_iam_is_faulted_only_when_asked() -> None:
    async with Simulator(clock=FakeClock()) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        sim.inject(Fault(kind="status", status=500))
        assert (await http.post("/v3/auth/tokens", json=password_body())).status_code == 201
        sim.inject(Fault(kind="status", status=500, path="/v3/auth", shape="keystone"))
        iam_down = await http.post("/v3/auth/tokens", json=password_body())
        kps_down = await http.get(RUNNING)
    assert iam_down.status_code == 500 and iam_down.json()["error"]["code"] == 500
    assert kps_down.status_code == 500  # the first fault, still waiting for a KPS request


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "meltdown"},
        {"kind": "status", "shape": "xml"},
        {"kind": "status", "times": 0},
        {"kind": "latency", "delay": -1},
        {"kind": "status", "status": 99},
    ],
)
def test_nonsense_faults_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Fault(**fields)


# -- admin API and hook --------------------------------------------------------------------------


async def test_admin_api(simulator: Simulator, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=simulator.url + "/_sim") as admin:
        created = await admin.post("/tasks", json={"server_name": "web-prod-03"})
        assert created.status_code == 201
        task = created.json()
        assert task["server_name"] == "web-prod-03" and task["status"] == "RUNNING_RESET"
        assert task["task_time_ms"] == int(START * 1000)
        assert created.headers["x-request-id"]

        aged = await admin.post(f"/tasks/{task['task_id']}/age", json={"minutes": 45})
        assert aged.json()["task_time_ms"] == int(START * 1000) - 45 * 60_000
        listed = (await client.get(RUNNING)).json()["tasks"]
        assert listed[0]["task_time"] == str(int(START * 1000) - 45 * 60_000)

        finished = await admin.post(
            f"/tasks/{task['task_id']}/finish",
            json={"failed": True, "error_code": "KPS.0021", "error_msg": "server is off"},
        )
        assert finished.json()["status"] == "FAILED_RESET"
        assert (await client.get(FAILED)).json()["tasks"][0]["task_error_code"] == "KPS.0021"
        all_tasks = (await admin.get("/tasks")).json()["tasks"]
        assert [t["task_id"] for t in all_tasks] == [task["task_id"]]

        fault = await admin.post("/faults", json={"kind": "status", "status": 503, "times": -1})
        assert fault.status_code == 201
        assert (await client.get(RUNNING)).status_code == 503
        assert (await admin.delete("/faults")).status_code == 200
        assert (await client.get(RUNNING)).status_code == 200

        assert (await admin.put("/latency", json={"seconds": 0.5})).json() == {"seconds": 0.5}
        assert simulator.latency == 0.5
        await admin.put("/latency", json={"seconds": 0})

        await admin.put("/token-lifetime", json={"seconds": 120})
        assert simulator.token_lifetime == 120

        stats = (await admin.get("/stats")).json()
        assert stats["requests"] == 4 and stats["requests"] == len(simulator.requests)
        assert stats["by_route"] == {
            "GET /v3/{project_id}/running-tasks": 3,
            "GET /v3/{project_id}/failed-tasks": 1,
        }
        assert stats["by_status"] == {"200": 3, "503": 1}
        assert stats["tasks"] == {"total": 1, "running": 0, "failed": 1}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/tasks", {"colour": "red"}),
        ("POST", "/tasks", {"task_time_ms": "yesterday"}),
        ("POST", "/tasks", [1, 2]),
        ("POST", "/faults", {"kind": "meltdown"}),
        ("POST", "/faults", {"kind": "status", "colour": "red"}),
        ("PUT", "/latency", {"seconds": "slow"}),
        ("POST", "/tasks/nope/age", {"minutes": None}),
    ],
)
async def test_admin_api_refuses_nonsense(
    simulator: Simulator, method: str, path: str, body: Any
) -> None:
    async with httpx.AsyncClient(base_url=simulator.url + "/_sim") as admin:
        response = await admin.request(method, path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]
    assert simulator.tasks == [] and simulator.latency == 0


async def test_admin_api_unknown_task_is_404(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.url + "/_sim") as admin:
        finish = await admin.post("/tasks/nope/finish", json={})
        age = await admin.post("/tasks/nope/age", json={"minutes": 5})
    assert finish.status_code == 404 and age.status_code == 404


# What a web page the developer visits could send: DNS rebinding makes the page's own name point
# at 127.0.0.1 (so its Host is that name), and a "simple" cross-origin POST needs no preflight.
ADMIN_ROUTES = [
    ("GET", "/tasks", None),
    ("GET", "/stats", None),
    ("POST", "/tasks", {"server_name": "planted"}),
    ("POST", "/tasks/t1/finish", {}),
    ("POST", "/tasks/t1/age", {"minutes": 90}),
    ("POST", "/faults", {"kind": "status", "status": 503, "times": -1}),
    ("DELETE", "/faults", None),
    ("PUT", "/latency", {"seconds": 9}),
    ("PUT", "/token-lifetime", {"seconds": 1}),
    ("POST", "/tokens/expire", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
@pytest.mark.parametrize("host", ["evil.example:8081", "127.0.0.1.nip.io", "localhost.evil", ""])
async def test_admin_api_answers_only_a_loopback_host(
    simulator: Simulator, method: str, path: str, body: Any, host: str
) -> None:
    add(simulator, "t1", int(START * 1000))
    async with httpx.AsyncClient(base_url=simulator.url + "/_sim") as admin:
        response = await admin.request(method, path, json=body, headers={"Host": host})
    assert response.status_code == 403
    assert "127.0.0.1" in response.json()["error"]
    assert [t.task_id for t in simulator.running()] == ["t1"]
    assert simulator.stats()["faults_pending"] == 0 and simulator.latency == 0


@pytest.mark.parametrize("host", ["127.0.0.1:1", "localhost", "LOCALHOST:80", "[::1]:8081"])
async def test_admin_api_answers_loopback_names_with_any_port(
    simulator: Simulator, host: str
) -> None:
    async with httpx.AsyncClient(base_url=simulator.url + "/_sim") as admin:
        response = await admin.get("/stats", headers={"Host": host})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/faults", '{"kind": "status", "status": 503, "times": -1}'),
        ("/tasks", '{"server_name": "planted"}'),
        ("/tokens/expire", ""),
    ],
)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data", None],
)
async def test_admin_api_takes_a_post_only_as_json(
    simulator: Simulator, path: str, body: str, content_type: str | None
) -> None:
    headers = {"Origin": "http://evil.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with httpx.AsyncClient(base_url=simulator.url + "/_sim") as admin:
        response = await admin.post(path, content=body, headers=headers)
    assert response.status_code == 415
    assert simulator.tasks == [] and simulator.stats()["faults_pending"] == 0


async def test_after_request_can_shrink_the_list_mid_walk(
    simulator: Simulator, client: httpx.AsyncClient
) -> None:
    for index in range(10):
        add(simulator, f"t{index}", 1000 + index)
    seen: list[RecordedRequest] = []

    def shrink(request: RecordedRequest) -> None:
        seen.append(request)
        if request.query.get("offset") == "0":
            for task in simulator.running()[:3]:
                simulator.finish_task(task.task_id)

    simulator.after_request = shrink
    first = (await client.get(RUNNING, params={"limit": 4, "offset": 0})).json()
    second = (await client.get(RUNNING, params={"limit": 4, "offset": 4})).json()
    assert first["total"] == 10 and first["tasks"][0]["task_id"] == "t0"
    assert second["total"] == 7
    assert [t["task_id"] for t in second["tasks"]] == ["t7", "t8", "t9"]  # t4..t6 skipped
    assert [r.query["offset"] for r in seen] == ["0", "4"]


# -- scale and seed data -------------------------------------------------------------------------


async def test_a_hundred_thousand_tasks_page_through() -> None:
    tasks = seed_tasks(100_000, now=START, rng=random.Random(7))
    async with Simulator(tasks=tasks) as sim, httpx.AsyncClient(base_url=sim.url) as http:
        seen: list[str] = []
        times: list[int] = []
        for offset in range(0, 100_000, 1000):
            body = (await http.get(RUNNING, params={"limit": 1000, "offset": offset})).json()
            assert body["total"] == 100_000
            seen.extend(task["task_id"] for task in body["tasks"])
            times.extend(int(task["task_time"]) for task in body["tasks"])
        past = (await http.get(RUNNING, params={"offset": 100_000})).json()
    assert len(seen) == 100_000 and len(set(seen)) == 100_000
    assert times == sorted(times)
    assert past == {"total": 100_000, "tasks": []}


def test_seed_tasks_look_real_and_are_reproducible() -> None:
    tasks = seed_tasks(2000, now=START, rng=random.Random(42))
    again = seed_tasks(2000, now=START, rng=random.Random(42))
    assert tasks == again
    assert tasks != seed_tasks(2000, now=START, rng=random.Random(43))
    assert seed_tasks(0) == []
    names = re.compile(
        r"(web-prod-\d\d|db-replica-[a-z]{2}-\d|bastion-\d\d|k8s-node-[0-9a-f]{4}|"
        r"api-gw-(blue|green)-\d|ci-runner-\d\d|redis-cache-\d|batch-worker-[0-9a-f]{4})"
    )
    assert all(names.fullmatch(t.server_name) for t in tasks)
    assert {t.operate_type for t in tasks} == {"RUNNING_RESET", "RUNNING_REPLACE", "RUNNING_UNBIND"}
    assert all(t.status == t.operate_type for t in tasks)
    assert len({t.keypair_name for t in tasks}) >= 5
    assert len({t.task_id for t in tasks}) == 2000
    ages = [(START * 1000 - (t.task_time_ms or 0)) / 60_000 for t in tasks]
    assert all(0 < age < 6 * 60 for age in ages)
    stale = sum(age > 30 for age in ages) / len(ages)
    assert 0.15 < stale < 0.25
    none_stale = seed_tasks(200, now=START, rng=random.Random(1), stale_fraction=0)
    assert all(START * 1000 - (t.task_time_ms or 0) < 30 * 60_000 for t in none_stale)


# -- standalone ----------------------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[1]


async def test_standalone_serves_seeded_tasks_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.sandbox.simulator",
        "--port",
        "0",
        "--tasks",
        "5",
        "--token",
        TOKEN,
        "--seed",
        "3",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        banner: list[str] = []
        while not banner or "Ctrl-C" not in banner[-1]:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, f"the simulator exited early: {banner}"
            banner.append(line.decode())
        text = "".join(banner)
        url = re.search(r"listening on (http://\S+)", text)
        assert url is not None
        assert f"HUAWEICLOUD_SDK_PROJECT_ID={PROJECT}" in text
        assert f"KPS_AUTH_TOKEN={TOKEN}" in text
        async with httpx.AsyncClient(base_url=url.group(1)) as http:
            refused = await http.get(RUNNING)
            listing = await http.get(RUNNING, headers={"X-Auth-Token": TOKEN})
        assert refused.status_code == 401
        assert listing.json()["total"] == 5
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
