"""manifest.yml declares exactly what the code handles, and Slack's published schema accepts it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot import handlers

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT.parent / "shared" / "slack-manifest-schema"


class RecordingApp:
    """Stands in for AsyncApp in `register()`: remembers what was registered."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.events: list[str] = []
        self.actions: list[object] = []

    def _keep(self, into: list[Any], key: object) -> Callable[[Callable[..., Any]], Any]:
        into.append(key)
        return lambda listener: listener

    def command(self, name: str) -> Callable[[Callable[..., Any]], Any]:
        return self._keep(self.commands, name)

    def event(self, name: str) -> Callable[[Callable[..., Any]], Any]:
        return self._keep(self.events, name)

    def action(self, matcher: object) -> Callable[[Callable[..., Any]], Any]:
        return self._keep(self.actions, matcher)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "manifest.yml").read_text())
    return loaded


def test_manifest_declares_what_the_code_registers(manifest: dict[str, Any]) -> None:
    app = RecordingApp()
    handlers.register(app)  # type: ignore[arg-type]
    declared_commands = {c["command"] for c in manifest["features"]["slash_commands"]}
    declared_events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert set(app.commands) == declared_commands
    assert set(app.events) == declared_events
    assert app.actions, "buttons need interactivity"
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert set(handlers.COMMANDS) == declared_commands and set(handlers.EVENTS) == declared_events


def test_manifest_asks_for_the_fewest_scopes_that_work(manifest: dict[str, Any]) -> None:
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # commands: /kps; chat:write: threads, notices, DMs; chat:write.public: notices in public
    # channels without an invite; app_mentions:read: the app_mention event.
    assert scopes == {"commands", "chat:write", "chat:write.public", "app_mentions:read"}
    command = manifest["features"]["slash_commands"][0]
    assert command["description"] and command["usage_hint"]


@pytest.mark.skipif(not SCHEMA_DIR.is_dir(), reason=f"no Slack manifest schema at {SCHEMA_DIR}")
def test_manifest_matches_slacks_published_schema(manifest: dict[str, Any]) -> None:
    major = manifest["_metadata"]["major_version"]
    schema = json.loads((SCHEMA_DIR / f"manifest.schema.{major}.0.0.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest), key=str)
    assert not errors, "\n".join(e.message for e in errors)
    broken = dict(manifest, display_information={"description": "no name"})
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))
