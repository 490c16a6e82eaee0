"""`python -m bot` runs the bot; `python -m bot check` checks its settings and connections."""

from __future__ import annotations

import asyncio
import sys

from bot.check import run_check
from bot.config import SettingsError, load_settings, read_environment
from bot.logs import configure_logging
from bot.server import serve

USAGE = "usage: python -m bot [check]"


def main(argv: list[str] | None = None) -> int:
    """Load settings, set up logging, then serve or check."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["check"]):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = load_settings(read_environment())
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args == ["check"]:
        return asyncio.run(run_check(settings, sys.stdout))
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
