"""What a user asked for, parsed from `/kps` text or an @-mention: pure, total functions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Filter words are matched against names, so a generous but finite bound keeps button values
# (2000 characters) and log lines small.
MAX_QUERY: Final = 200
_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ListTasks:
    """Show running tasks, optionally only those whose names contain `query`."""

    query: str = ""


@dataclass(frozen=True, slots=True)
class ShowHelp:
    """Show usage."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """Text we do not understand; `text` is what the user typed (for the error message)."""

    text: str


Intent = ListTasks | ShowHelp | Unknown


def parse_command(text: str | None) -> Intent:
    """`/kps`, `/kps tasks [words]`, `/kps help`; anything else is `Unknown`."""
    words = _SPACE.sub(" ", (text or "").replace("\x00", "")).strip()
    if not words:
        return ListTasks()
    head, _, rest = words.partition(" ")
    verb = head.lower()
    if verb in {"tasks", "task", "list", "ls"}:
        query = rest.strip()
        if len(query) > MAX_QUERY:
            return Unknown(words)
        return ListTasks(query)
    if verb in {"help", "-h", "--help", "?"} and not rest:
        return ShowHelp()
    return Unknown(words)


def parse_mention(text: str | None) -> Intent:
    """An @-mention: the same words as the command once the mentions are removed."""
    words = _MENTION.sub(" ", text or "")
    if not words.strip():
        return ShowHelp()
    return parse_command(words)
