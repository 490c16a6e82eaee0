"""`python -m bot check`: real calls to the simulator and the Slack stand-in, reported in words."""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

from bot.check import run_check
from bot.config import AkSkAuthSettings, PasswordAuthSettings, TokenAuthSettings
from bot.fakeslack import FakeSlack
from bot.secret import Secret
from bot.simulator import Simulator
from tests.conftest import PROJECT, make_settings


async def report(settings: object) -> tuple[int, str]:
    out = io.StringIO()
    status = await run_check(settings, out)  # type: ignore[arg-type]
    return status, out.getvalue()


async def test_all_well(sim: Simulator, slack: FakeSlack, tmp_path: Path) -> None:
    state = Secret(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=state)
    status, text = await report(settings)
    assert status == 0, text
    assert "37 running task(s)" in text
    assert "@kps-bot in workspace Test Workspace" in text
    assert "#kps-alerts" in text and "All checks passed." in text
    assert "alert state store (sqlite) is ready" in text


async def test_unusable_state_store(sim: Simulator, slack: FakeSlack, tmp_path: Path) -> None:
    state = Secret(f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'state.db'}")
    settings = make_settings(sim, slack, stale_channel_id="C0ALERTS", state_url=state)
    status, text = await report(settings)
    assert status == 1
    assert "alert state store (STATE_URL) cannot be used" in text


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
