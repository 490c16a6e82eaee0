"""The playground's record of what a person would see: messages, the Home view, the API log.

It turns each call the Slack stand-in records (chat.postMessage, chat.update, chat.postEphemeral,
views.publish, response_url posts) into messages keyed by a stable id, and each change into one
JSON event for the browser.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from bot.sandbox.fakeslack import Call

Event = dict[str, Any]

_LOG_SIZE: Final = 200  # API calls the browser's log keeps
_ORIGINS_KEPT: Final = 2000  # response_urls remembered; Slack's expire after 30 minutes anyway


@dataclass(frozen=True, slots=True)
class Origin:
    """Where answers to one response_url go: its channel, thread and the message clicked."""

    channel: str
    thread_ts: str | None = None
    message_id: str | None = None
    command: str | None = None  # the slash command typed, shown above an in_channel answer


def message_id(channel: str, ts: str) -> str:
    """The id of a stored channel message: channel and ts identify it, as in Slack."""
    return f"{channel}/{ts}"


class Timeline:
    """Messages by id, Home views by user, the recent API calls; each change becomes an event."""

    def __init__(self, *, new_ts: Callable[[], str], resolve: Callable[[str], str | None]) -> None:
        self.messages: dict[str, dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.calls: deque[dict[str, Any]] = deque(maxlen=_LOG_SIZE)
        self._new_ts = new_ts
        self._resolve = resolve
        self._origins: OrderedDict[str, Origin] = OrderedDict()

    def expect_responses(self, path: str, origin: Origin) -> None:
        """Remember where posts to the response_url with this path belong."""
        self._origins[path] = origin
        while len(self._origins) > _ORIGINS_KEPT:
            self._origins.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        """Everything the browser needs to draw the page from scratch."""
        return {
            "messages": sorted(self.messages.values(), key=lambda m: str(m["ts"])),
            "views": self.views,
            "calls": list(self.calls),
        }

    def add_person_message(self, channel: str, message: dict[str, Any]) -> list[Event]:
        """A message the person typed, as the stand-in stored it."""
        return [self._put(_from_slack(channel, message, bot=False))]

    def apply_call(self, call: Call) -> list[Event]:
        """The events one recorded call causes: always a log entry, then what changed."""
        events: list[Event] = [{"type": "call", "call": self._log(call)}]
        if not call.ok:
            return events
        result = call.result or {}
        if call.method == "chat.postMessage" or call.method == "chat.update":
            message = result.get("message")
            channel = result.get("channel")
            if isinstance(message, dict) and isinstance(channel, str):
                entry = _from_slack(channel, message, bot=True)
                entry["edited"] = call.method == "chat.update" or "edited" in message
                events.append(self._put(entry))
        elif call.method == "chat.postEphemeral":
            channel = self._resolve(str(call.args.get("channel", "")))
            if channel is not None:
                thread_ts = call.args.get("thread_ts")
                events.append(
                    self._put(
                        _new_bot_message(
                            channel,
                            str(result.get("message_ts") or self._new_ts()),
                            call.args,
                            thread_ts=str(thread_ts) if thread_ts else None,
                            ephemeral=True,
                        )
                    )
                )
        elif call.method == "views.publish":
            view = result.get("view")
            user = call.args.get("user_id")
            if isinstance(view, dict) and isinstance(user, str):
                self.views[user] = view
                events.append({"type": "view", "user": user, "view": view})
        elif call.method == "response_url":
            origin = self._origins.get(call.path)
            if origin is not None:
                events.extend(self.apply_response(origin, call.args, path=call.path))
        return events

    def apply_response(
        self, origin: Origin, body: dict[str, Any], *, path: str | None = None
    ) -> list[Event]:
        """A response_url post (or a command's ack body) shown the way Slack shows it."""
        original = self.messages.get(origin.message_id or "")
        if body.get("delete_original") and original is not None:
            del self.messages[original["id"]]
            return [{"type": "remove", "id": original["id"]}]
        if body.get("replace_original") and original is not None:
            replaced = {
                **original,
                "text": str(body.get("text") or ""),
                "blocks": _blocks(body),
                "edited": False,
            }
            if body.get("response_type") == "in_channel":
                replaced["ephemeral"] = False
            return [self._put(replaced)]
        in_channel = body.get("response_type") == "in_channel"
        entry = _new_bot_message(
            origin.channel,
            self._new_ts(),
            body,
            thread_ts=origin.thread_ts,
            ephemeral=not in_channel,
        )
        entry["command"] = origin.command
        if path is not None and origin.message_id is None:
            # A command's answer has no message to replace until the first post makes one; a
            # later post with replace_original replaces it, as Slack does ("Loading…", then
            # the page).
            self._origins[path] = replace(origin, message_id=entry["id"])
        return [self._put(entry)]

    def _put(self, entry: dict[str, Any]) -> Event:
        self.messages[entry["id"]] = entry
        return {"type": "message", "message": entry}

    def _log(self, call: Call) -> dict[str, Any]:
        entry = {
            "method": call.method,
            "status": call.status,
            "error": call.error,
            "time": call.time,
            "path": call.path if call.method == "response_url" else None,
            "args": call.args,  # never the token: Call keeps that apart
        }
        self.calls.append(entry)
        return entry


def _from_slack(channel: str, message: dict[str, Any], *, bot: bool) -> dict[str, Any]:
    ts = str(message["ts"])
    thread_ts = message.get("thread_ts")
    return {
        "id": message_id(channel, ts),
        "channel": channel,
        "ts": ts,
        "thread_ts": str(thread_ts) if thread_ts else None,
        "user": message.get("user"),
        "bot": bot,
        "text": str(message.get("text") or ""),
        "blocks": _blocks(message),
        "ephemeral": False,
        "edited": False,
        "command": None,
    }


def _new_bot_message(
    channel: str, ts: str, body: dict[str, Any], *, thread_ts: str | None, ephemeral: bool
) -> dict[str, Any]:
    prefix = "eph" if ephemeral else "rsp"
    return {
        "id": f"{prefix}/{channel}/{ts}",
        "channel": channel,
        "ts": ts,
        "thread_ts": thread_ts,
        "user": None,
        "bot": True,
        "text": str(body.get("text") or ""),
        "blocks": _blocks(body),
        "ephemeral": ephemeral,
        "edited": False,
        "command": None,
    }


def _blocks(body: dict[str, Any]) -> list[Any]:
    blocks = body.get("blocks")
    return blocks if isinstance(blocks, list) else []
