"""`python -m bot` runs the bot (the demo for someone trying it out); `check` checks settings."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Final

from bot.check import run_check
from bot.config import SettingsError, load_settings, read_environment
from bot.logs import configure_logging
from bot.server import serve

USAGE = "usage: python -m bot [check | demo [options]] [--help] [--version]"
HELP_FLAGS: Final = ("--help", "-h")
# Any of these set means someone is configuring a real bot, so the demo stays out of the way
# (LOG_* or PORT alone say nothing about Slack or KPS).
REAL_SETTINGS_PREFIXES: Final = ("SLACK_", "HUAWEICLOUD_", "KPS_", "IAM_", "STALE_", "STATE_URL")
# Set by a platform that runs the process as a service (Heroku's dyno, Kubernetes, any PaaS that
# assigns the port): there nobody is trying the demo, and a lost config must fail loudly instead.
HOSTED_MARKERS: Final = ("PORT", "DYNO", "KUBERNETES_SERVICE_HOST")


def main(argv: list[str] | None = None) -> int:
    """Load settings, set up logging, then serve or check; with no settings at all, the demo."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:
        return _demo(args[1:], defaulted=False)
    if len(args) == 1 and args[0] in HELP_FLAGS:
        print(help_text())
        return 0
    if args[:1] == ["check"] and len(args) == 2 and args[1] in HELP_FLAGS:
        print(CHECK_HELP)
        return 0
    if args == ["--version"]:
        print(f"kps-bot {version()}")
        return 0
    if args not in ([], ["check"]):
        print(f"{USAGE}\n(python -m bot --help explains each)", file=sys.stderr)
        return 2
    environ = read_environment()
    if not args and _wants_demo(environ):
        return _demo([], defaulted=True)
    try:
        settings = load_settings(environ)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    if args == ["check"]:
        return asyncio.run(run_check(settings, sys.stdout))
    return asyncio.run(serve(settings))


CHECK_HELP: Final = """usage: python -m bot check

Checks the settings without starting the bot: reads them as the bot would (environment variables,
then a .env file in the working directory), makes one real KPS call and one Slack auth.test, and
says in plain words what works and what does not. Exit status 0 only when all is well."""


def help_text() -> str:
    """What `python -m bot --help` prints: the commands, where settings live, where to read on."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    where = str(readme) if readme.is_file() else "README.md at the top of the source repository"
    return f"""{USAGE}

kps-bot: a Slack bot that lists Huawei Cloud KPS key-pair tasks (/kps) and posts a notice when one
runs too long.

  python -m bot            run the bot with the settings below; at a terminal with nothing
                           configured at all, it starts the demo instead
  python -m bot check      check the settings: one real KPS call and one Slack auth.test, each
                           explained; exit status 0 only when all is well
  python -m bot demo       the demo: the real bot, a KPS simulator and a pretend Slack in the
                           browser, no accounts needed (python -m bot demo --help: its options)
  python -m bot --version  the installed version

Settings are environment variables, also read from a .env file in the working directory (real
environment variables win). Copy .env.example to .env and fill it in: it lists every setting.

The README explains every setting and the way from nothing to a working /kps:
  {where}"""


def version() -> str:
    """This package's version, from its installed metadata."""
    try:
        return metadata.version("kps-bot")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(unknown: not installed; pip install -e . records it)"


def wants_demo(environ: Mapping[str, str], *, dotenv_present: bool, interactive: bool) -> bool:
    """True when a person is evidently trying the bot out, so the demo should start by itself.

    That is: at an interactive terminal, on no hosting platform, with no `.env` and no Slack or
    Huawei Cloud setting in `environ`. Anywhere else a missing setting is an error to report.
    """
    if dotenv_present or not interactive:
        return False
    if any(name in environ for name in HOSTED_MARKERS):
        return False
    return not any(name.startswith(REAL_SETTINGS_PREFIXES) for name in environ)


def _wants_demo(environ: Mapping[str, str]) -> bool:
    return wants_demo(
        environ,
        dotenv_present=Path(".env").is_file(),
        interactive=_interactive(),
    )


def _interactive() -> bool:
    # Both ends at a terminal: a person typing. Either one closed (None) or redirected is a service.
    return all(stream is not None and stream.isatty() for stream in (sys.stdin, sys.stdout))


def _demo(args: list[str], *, defaulted: bool) -> int:
    # Imported only here: the sandbox brings the simulator and the stand-in, which the bot never
    # needs; this is the one place outside bot/sandbox/ that may import it.
    from bot.sandbox import demo

    return demo.main(args, defaulted=defaulted)


if __name__ == "__main__":
    sys.exit(main())
