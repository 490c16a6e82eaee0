"""`python -m bot check`: real calls to the simulator and the Slack stand-in, reported in words."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bot.check import run_check
from bot.config import DEFAULT_STATE_URL, AkSkAuthSettings, PasswordAuthSettings, TokenAuthSettings
from bot.sandbox.fakeslack import FakeSlack
from bot.sandbox.simulator import Simulator
from bot.secret import Secret
from bot.store import SCHEMA_VERSION, Store, schema_version
from tests.conftest import PROJECT, make_settings


async def report(settings: object) -> tuple[int, str]:
    out = io.StringIO()
    status = await run_check(settings, out)  # type: ignore[arg-type]
    return status, out.getvalue()


async def test_all_well(sim: Simulator, slack: FakeSlack, tmp_path: Path) -> None:
    state_file = tmp_path / "state.db"
    state = Secret(f"sqlite+aiosqlite:///{state_file}")
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=state)
    status, text = await report(settings)
    assert status == 0, text
    assert "37 running task(s)" in text
    assert "@kps-bot in workspace Test Workspace" in text
    assert "#kps-alerts" in text and "All checks passed." in text
    assert (
        f"alert state store (sqlite) is ready: the bot creates {state_file} at first start" in text
    )
    assert not state_file.exists()


async def test_check_creates_no_state_with_the_default_state_url(
    sim: Simulator, slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 10: with STALE_CHANNEL_ID and the default STATE_URL, check created ./kps-bot.db.
    monkeypatch.chdir(tmp_path)
    # The default STATE_URL, relative to the working directory (tmp_path here).
    default = Secret(DEFAULT_STATE_URL)
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=default)
    assert settings.state_url.reveal() == "sqlite+aiosqlite:///kps-bot.db"

    status, text = await report(settings)

    assert status == 0, text
    assert os.listdir(tmp_path) == []
    assert f"the bot creates {tmp_path / 'kps-bot.db'} at first start" in text


async def test_existing_state_is_read_not_changed(
    sim: Simulator, slack: FakeSlack, tmp_path: Path
) -> None:
    state_file = tmp_path / "with space #1.db"
    url = f"sqlite+aiosqlite:///{state_file}"
    store = Store.open(url)
    await store.migrate()
    assert await store.acquire_lease("replica-7", ttl=600, now=datetime.now(UTC))
    await store.close()
    before = (state_file.read_bytes(), state_file.stat().st_mtime_ns)
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=Secret(url))

    status, text = await report(settings)

    assert status == 0, text
    assert "alert state store (sqlite) is ready; replica replica-7 is watching" in text
    assert (state_file.read_bytes(), state_file.stat().st_mtime_ns) == before
    assert os.listdir(tmp_path) == [state_file.name]


async def test_empty_postgres_database_is_reachable_and_left_empty(
    sim: Simulator, slack: FakeSlack, pg_url: str
) -> None:
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=Secret(pg_url))

    status, text = await report(settings)

    assert status == 0, text
    assert (
        "alert state store (postgresql) is reachable; the bot creates its tables at start" in text
    )
    engine = create_async_engine(pg_url)
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    await engine.dispose()
    assert tables == []


async def test_newer_schema_fails_the_check(
    sim: Simulator, slack: FakeSlack, tmp_path: Path
) -> None:
    state_file = tmp_path / "state.db"
    url = f"sqlite+aiosqlite:///{state_file}"
    store = Store.open(url)
    await store.migrate()
    await store.close()
    engine = sa.create_engine(f"sqlite:///{state_file}")
    with engine.begin() as conn:
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=Secret(url))

    status, text = await report(settings)

    assert status == 1
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this bot's {SCHEMA_VERSION}" in text


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"SLACK_CLIENT_ID": "123.456", "SLACK_CLIENT_SECRET": "cs"},
            "[FAIL] SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are set: Bolt then runs multi-",
        ),
        (
            {"SLACK_CLIENT_ID": "", "SLACK_CLIENT_SECRET": ""},  # Bolt tests `is not None`
            "[FAIL] SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are set",
        ),
        ({"SLACK_CLIENT_SECRET": "cs"}, "[   !] SLACK_CLIENT_SECRET is set: harmless alone"),
    ],
)
async def test_oauth_variables_that_make_bolt_ignore_the_bot_token(
    sim: Simulator,
    slack: FakeSlack,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    line: str,
) -> None:
    # Issue 10 item 14: Bolt reads these from the process environment, so check does too.
    for name in ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    status, text = await report(make_settings(sim, slack))

    assert line in text
    assert status == (1 if line.startswith("[FAIL]") else 0), text


def test_check_refuses_an_unchanged_env_example(tmp_path: Path) -> None:
    # Issue 10 item 15: `cp .env.example .env && python -m bot check` names the placeholder.
    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / ".env.example", tmp_path / ".env")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "check"],
        env={**keep, "PYTHONPATH": str(root)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert "SLACK_BOT_TOKEN still holds .env.example's placeholder" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


async def test_unusable_state_store(sim: Simulator, slack: FakeSlack, tmp_path: Path) -> None:
    state = Secret(f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'state.db'}")
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=state)
    status, text = await report(settings)
    assert status == 1
    assert "alert state store (STATE_URL) cannot be used" in text


@pytest.mark.parametrize("method", ["auth.test", "conversations.info"])
async def test_an_answer_that_is_not_slacks_json_is_a_failed_check_not_a_crash(
    sim: Simulator, slack: FakeSlack, tmp_path: Path, method: str
) -> None:
    state = Secret(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=state)
    slack.fail_next(method, status=200, body="array")
    status, text = await report(settings)
    assert status == 1
    assert "an answer that is not Slack's JSON" in text


async def test_unreachable_endpoint(sim: Simulator, slack: FakeSlack, refused_url: str) -> None:
    dead = refused_url
    settings = make_settings(sim, slack, kps_endpoint=dead, kps_max_attempts=1)
    status, text = await report(settings)
    assert status == 1
    assert f"KPS endpoint {dead} is unreachable" in text


async def test_token_rejected(sim: Simulator, slack: FakeSlack) -> None:
    settings = make_settings(sim, slack, auth=TokenAuthSettings(Secret("not-a-token-we-know")))
    status, text = await report(settings)
    assert status == 1
    assert "KPS rejected the credentials (KPS_AUTH_TOKEN)" in text and "APIG.0301" in text
    assert "not-a-token-we-know" not in text


async def test_project_unknown(sim: Simulator, slack: FakeSlack) -> None:
    other = "ffffffffffffffffffffffffffffffff"
    status, text = await report(make_settings(sim, slack, project_id=other))
    assert status == 1
    assert f"project {other} is unknown in this region or not permitted" in text


async def test_password_refused(slack: FakeSlack) -> None:
    users = {("acme", "ops-bot"): "right-password"}
    async with Simulator(project_id=PROJECT, users=users) as sim:
        auth = PasswordAuthSettings("ops-bot", Secret("wrong-password"), "acme")
        status, text = await report(make_settings(sim, slack, auth=auth))
        assert status == 1
        assert "IAM at" in text and "refused the password login" in text
        assert "wrong-password" not in text
        good = replace(auth, password=Secret("right-password"))
        status, text = await report(make_settings(sim, slack, auth=good))
        assert status == 0, text


async def test_clock_skew_too_large_for_aksk(slack: FakeSlack) -> None:
    # The simulator's clock runs an hour ahead: our X-Sdk-Date is outside its 15 minutes.
    async with Simulator(
        project_id=PROJECT, aksk={"AKTEST": "sk-secret"}, clock=lambda: time.time() + 3600
    ) as sim:
        auth = AkSkAuthSettings("AKTEST", Secret("sk-secret"))
        status, text = await report(make_settings(sim, slack, auth=auth, kps_max_attempts=1))
        assert status == 1
        assert "clock differs from Huawei Cloud's by more than 15 minutes" in text
        assert "sk-secret" not in text


async def test_slack_token_rejected_and_private_channel(sim: Simulator, state_url: str) -> None:
    channels = {"G0SECRET": {"name": "sre-private", "is_private": True, "is_member": False}}
    async with FakeSlack(channels=channels) as slack:
        status, text = await report(make_settings(sim, slack, slack_bot_token=Secret("xoxb-wrong")))
        assert status == 1 and "Slack rejected the bot token: invalid_auth" in text
        settings = make_settings(
            sim, slack, stale_channel_id="G0SECRET", state_url=Secret(state_url)
        )
        status, text = await report(settings)
        assert status == 1 and "#sre-private is private and the bot is not in it" in text
