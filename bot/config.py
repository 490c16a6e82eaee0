"""Settings for kps-bot: one frozen object from an environment mapping, every problem at once."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final, overload
from urllib.parse import urlsplit

from dotenv import dotenv_values
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.secret import Secret

DEFAULT_SLACK_API_URL: Final = "https://slack.com/api/"
DEFAULT_STATE_URL: Final = "sqlite+aiosqlite:///kps-bot.db"
STATE_URL_SCHEMES: Final = ("sqlite+aiosqlite", "postgresql+asyncpg")
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Every variable load_settings reads, in .env.example order.
SETTING_VARIABLES: Final = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "PORT",
    "HUAWEICLOUD_SDK_PROJECT_ID",
    "HUAWEICLOUD_REGION",
    "KPS_ENDPOINT",
    "IAM_ENDPOINT",
    "KPS_AUTH_TOKEN",
    "HUAWEICLOUD_USERNAME",
    "HUAWEICLOUD_PASSWORD",
    "HUAWEICLOUD_DOMAIN",
    "HUAWEICLOUD_SDK_AK",
    "HUAWEICLOUD_SDK_SK",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "STALE_CHANNEL_ID",
    "STALE_AFTER_MINUTES",
    "POLL_INTERVAL_SECONDS",
    "RENOTIFY_MINUTES",
    "STATE_URL",
    "PAGE_SIZE",
    "KPS_TIMEOUT_SECONDS",
    "KPS_MAX_ATTEMPTS",
    "LOG_FORMAT",
    "LOG_LEVEL",
)
# Variables whose values are never echoed in an error message.
SECRET_VARIABLES: Final = (
    "SLACK_BOT_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_APP_TOKEN",
    "KPS_AUTH_TOKEN",
    "HUAWEICLOUD_PASSWORD",
    "HUAWEICLOUD_SDK_SK",
    "HUAWEICLOUD_SDK_SECURITY_TOKEN",
    "STATE_URL",
)

_TOKEN_VARS: Final = ("KPS_AUTH_TOKEN",)
_PASSWORD_VARS: Final = ("HUAWEICLOUD_USERNAME", "HUAWEICLOUD_PASSWORD", "HUAWEICLOUD_DOMAIN")
_AKSK_VARS: Final = ("HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "HUAWEICLOUD_SDK_SECURITY_TOKEN")
_AUTH_CHOICES: Final = (
    "KPS_AUTH_TOKEN; or HUAWEICLOUD_USERNAME + HUAWEICLOUD_PASSWORD + HUAWEICLOUD_DOMAIN; "
    "or HUAWEICLOUD_SDK_AK + HUAWEICLOUD_SDK_SK (+ HUAWEICLOUD_SDK_SECURITY_TOKEN)"
)

_WHOLE_NUMBER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
# An IAM project ID is a UUID without dashes ("My Credentials > API Credentials").
_PROJECT_ID = re.compile(r"[0-9a-fA-F]{32}")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+")
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{2,}")
# Slack tokens are letters, digits and dashes after the prefix; anything else is a paste accident.
_SLACK_TOKEN_BODY = re.compile(r"[A-Za-z0-9-]+")
# Only values that cannot be a credential are echoed in an error: a short number or a short word.
# Anything else (an SK or a password pasted into the wrong line) is described by its shape.
_HARMLESS = re.compile(
    r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?(?:nan|inf)|[A-Za-z]{1,10}",
    re.IGNORECASE,
)
_HARMLESS_LIMIT = 20
_TOKEN_PREFIX = re.compile(r"(?:xox[a-z]|xapp)-")
# The values .env.example ships with: a copy left unchanged must not start a bot.
PLACEHOLDERS: Final = {
    "SLACK_BOT_TOKEN": "xoxb-your-bot-token",
    "SLACK_APP_TOKEN": "xapp-your-app-token",
    "HUAWEICLOUD_DOMAIN": "your-account-name",
}
# Other values a person writes while meaning "fill this in later".
_PLACEHOLDER = re.compile(
    r"(?:^|[-_.:])your[-_]|^<[^<>]*>$|^(?:changeme|change-me|todo|tbd|x{3,}|\.\.\.|…)$",
    re.IGNORECASE,
)
_DEFAULT_STATE_SECRET: Final = Secret(DEFAULT_STATE_URL)


@dataclass(frozen=True, slots=True)
class TokenAuthSettings:
    """A ready IAM token, sent as X-Auth-Token (KPS_AUTH_TOKEN)."""

    token: Secret


@dataclass(frozen=True, slots=True)
class PasswordAuthSettings:
    """IAM user name, password and account (domain) name for project-scoped tokens."""

    username: str
    password: Secret
    domain: str


@dataclass(frozen=True, slots=True)
class AkSkAuthSettings:
    """An access key pair for SDK-HMAC-SHA256 signing; a security token marks a temporary one."""

    ak: str
    sk: Secret
    security_token: Secret | None = None


AuthSettings = TokenAuthSettings | PasswordAuthSettings | AkSkAuthSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the bot is configured with.

    `load_settings` builds it from the environment and validates every field. Tests may call the
    constructor directly with the five required fields; it does no validation of its own.
    """

    slack_bot_token: Secret
    project_id: str
    auth: AuthSettings
    kps_endpoint: str
    iam_endpoint: str
    region: str | None = None
    slack_signing_secret: Secret | None = None
    slack_app_token: Secret | None = None
    slack_api_url: str = DEFAULT_SLACK_API_URL
    port: int = 3000
    stale_channel_id: str | None = None
    stale_after: timedelta = timedelta(minutes=30)
    poll_interval: float = 60.0
    state_url: Secret = _DEFAULT_STATE_SECRET  # a Secret: the URL may embed a DB password
    page_size: int = 10
    renotify_after: timedelta | None = None
    kps_timeout: float = 10.0
    kps_max_attempts: int = 4
    log_format: str = "text"
    log_level: str = "INFO"
    # How long a page may take before a "Loading…" placeholder is posted. Not a setting a
    # user needs: fast enough not to flicker, and tests set it so timing cannot decide.
    loading_after: float = 0.5

    @property
    def socket_mode(self) -> bool:
        """Whether the bot connects over Socket Mode (an app token is set) instead of HTTP."""
        return self.slack_app_token is not None

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value, for the log redaction filter to hide (includes a DB password)."""
        candidates: list[Secret | None] = [
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
        ]
        match self.auth:
            case TokenAuthSettings(token=token):
                candidates.append(token)
            case PasswordAuthSettings(password=password):
                candidates.append(password)
            case AkSkAuthSettings(sk=sk, security_token=security_token):
                candidates += [sk, security_token]
        values = [secret.reveal() for secret in candidates if secret]
        db_password = _url_password(self.state_url.reveal())
        if db_password:
            values.append(db_password)
        return tuple(values)


class SettingsError(Exception):
    """Settings are missing or malformed; `problems` names each bad variable and why."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"kps-bot cannot start:\n{lines}\nSee .env.example for every setting."


def read_environment(dotenv_path: str | Path = ".env") -> dict[str, str]:
    """Read `.env` (if present) overlaid with the real environment; empty values count as unset."""
    merged = {name: value for name, value in dotenv_values(dotenv_path).items() if value}
    merged.update({name: value for name, value in os.environ.items() if value})
    return merged


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from `environ`, or raise SettingsError listing every problem found."""
    read = _Reader(environ)

    slack_bot_token = read.secret(
        "SLACK_BOT_TOKEN", required="(the bot token, xoxb-…, from OAuth & Permissions)"
    )
    if slack_bot_token:
        read.slack_token("SLACK_BOT_TOKEN", slack_bot_token, "xoxb-", "a bot token")
    slack_app_token = read.secret("SLACK_APP_TOKEN")
    if slack_app_token:
        read.slack_token("SLACK_APP_TOKEN", slack_app_token, "xapp-", "an app-level token")
    # Socket Mode needs no request verification; HTTP mode cannot work without it.
    slack_signing_secret = read.secret(
        "SLACK_SIGNING_SECRET",
        required=None if slack_app_token else "in HTTP mode, i.e. when SLACK_APP_TOKEN is unset",
    )
    slack_api_url = read.url("SLACK_API_URL", DEFAULT_SLACK_API_URL).rstrip("/") + "/"
    port = read.whole_number("PORT", 3000, 1, 65535)

    project_id = read.text(
        "HUAWEICLOUD_SDK_PROJECT_ID", required="(the IAM project ID whose KPS tasks are shown)"
    )
    if project_id and not _PROJECT_ID.fullmatch(project_id):
        # Huawei Cloud names a region's default project after the region: a common mix-up.
        named = _REGION.fullmatch(project_id) is not None
        hint = "; that looks like a project name, not its ID" if named else ""
        read.problem(
            "HUAWEICLOUD_SDK_PROJECT_ID must be a project ID: 32 hex characters (0-9, a-f), from"
            f' "My Credentials > API Credentials" (got {read.shown(project_id)}{hint})'
        )
    region = read.text("HUAWEICLOUD_REGION")
    region_invalid = False
    if region and not _REGION.fullmatch(region):
        read.problem(
            f"HUAWEICLOUD_REGION must be a region ID such as cn-north-4 (got {read.shown(region)})"
        )
        region, region_invalid = None, True
    kps_endpoint = read.url("KPS_ENDPOINT", None).rstrip("/")
    iam_endpoint = read.url("IAM_ENDPOINT", None).rstrip("/")
    if region:
        # KPS has no kps.* host; it is served by the DEW/KMS one (kps-api.md §1).
        kps_endpoint = kps_endpoint or f"https://kms.{region}.myhuaweicloud.com"
        iam_endpoint = iam_endpoint or f"https://iam.{region}.myhuaweicloud.com"
    elif not region_invalid:
        unset = [name for name in ("KPS_ENDPOINT", "IAM_ENDPOINT") if not read.given(name)]
        if unset:
            read.problem(
                "HUAWEICLOUD_REGION is required unless both KPS_ENDPOINT and IAM_ENDPOINT are set"
                f" (unset: {', '.join(unset)})"
            )
    auth = _auth(read)

    stale_channel_id = read.text("STALE_CHANNEL_ID")
    if stale_channel_id and not _CHANNEL_ID.fullmatch(stale_channel_id):
        named = stale_channel_id.startswith("#")
        hint = "; use the ID from the channel's details, not its #name" if named else ""
        read.problem(
            "STALE_CHANNEL_ID must be a channel ID such as C0123456789 (starts with C or G)"
            f" (got {read.shown(stale_channel_id)}{hint})"
        )
    stale_after = read.whole_number("STALE_AFTER_MINUTES", 30, 1, None)
    poll_interval = read.seconds("POLL_INTERVAL_SECONDS", 60.0, minimum=1.0)
    state_url = _state_url(read)
    page_size = read.whole_number("PAGE_SIZE", 10, 1, 20)
    renotify_minutes = read.whole_number("RENOTIFY_MINUTES", None, 1, None)
    kps_timeout = read.seconds("KPS_TIMEOUT_SECONDS", 10.0, minimum=None)
    kps_max_attempts = read.whole_number("KPS_MAX_ATTEMPTS", 4, 1, 10)
    log_format = read.choice("LOG_FORMAT", "text", LOG_FORMATS)
    log_level = read.choice("LOG_LEVEL", "INFO", LOG_LEVELS)

    if read.problems or auth is None or slack_bot_token is None:
        raise SettingsError(read.problems)
    return Settings(
        slack_bot_token=slack_bot_token,
        slack_signing_secret=slack_signing_secret,
        slack_app_token=slack_app_token,
        slack_api_url=slack_api_url,
        port=port,
        project_id=project_id or "",
        region=region,
        kps_endpoint=kps_endpoint,
        iam_endpoint=iam_endpoint,
        auth=auth,
        stale_channel_id=stale_channel_id,
        stale_after=timedelta(minutes=stale_after),
        poll_interval=poll_interval,
        state_url=state_url,
        page_size=page_size,
        renotify_after=timedelta(minutes=renotify_minutes) if renotify_minutes else None,
        kps_timeout=kps_timeout,
        kps_max_attempts=kps_max_attempts,
        log_format=log_format,
        log_level=log_level,
    )


class _Reader:
    """Reads typed values out of an environment mapping, recording problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[str] = []
        self._secrets = {value for name in SECRET_VARIABLES if (value := self._raw(name))}
        self._placeholders: set[str] = set()
        for name in SETTING_VARIABLES:
            value = self._raw(name)
            if value is not None and (
                value == PLACEHOLDERS.get(name) or _PLACEHOLDER.search(value)
            ):
                self._placeholders.add(name)
                # The shipped placeholders are public text; anything else might be a secret.
                shown = (
                    f".env.example's placeholder {value!r}"
                    if value == PLACEHOLDERS.get(name)
                    else "a placeholder"
                )
                self.problems.append(
                    f"{name} still holds {shown}: put the real value in, or remove the line"
                )

    def problem(self, message: str) -> None:
        # A placeholder is named once, as a placeholder, not again for its shape.
        if message.split(" ", 1)[0] not in self._placeholders:
            self.problems.append(message)

    def given(self, name: str) -> bool:
        return bool(self._raw(name))

    def shown(self, value: str) -> str:
        """The value itself when it cannot be a credential; otherwise only its length and shape."""
        harmless = (
            len(value) <= _HARMLESS_LIMIT
            and _HARMLESS.fullmatch(value) is not None
            and not any(secret in value for secret in self._secrets)
        )
        if harmless:
            return repr(value)
        return f"{describe(value)}; value not shown"

    def slack_token(self, name: str, token: Secret, prefix: str, kind: str) -> None:
        value = token.reveal()
        if not value.startswith(prefix) or not _SLACK_TOKEN_BODY.fullmatch(value[len(prefix) :]):
            self.problem(
                f"{name} must be {kind} starting with {prefix} followed by letters, digits"
                f" and '-' (got {describe(value)})"
            )

    def _raw(self, name: str) -> str | None:
        # Surrounding whitespace is a copy-paste accident (a trailing newline in a mounted secret).
        value = self._environ.get(name, "").strip()
        return value or None

    def text(self, name: str, *, required: str | None = None) -> str | None:
        value = self._raw(name)
        if value is None and required:
            self.problem(f"{name} is required {required}")
        return value

    def secret(self, name: str, *, required: str | None = None) -> Secret | None:
        value = self.text(name, required=required)
        return Secret(value) if value is not None else None

    @overload
    def whole_number(self, name: str, default: int, low: int, high: int | None) -> int: ...

    @overload
    def whole_number(self, name: str, default: None, low: int, high: int | None) -> int | None: ...

    def whole_number(
        self, name: str, default: int | None, low: int, high: int | None
    ) -> int | None:
        value = self._raw(name)
        if value is None:
            return default
        if _WHOLE_NUMBER.fullmatch(value):
            number = int(value)
            if number >= low and (high is None or number <= high):
                return number
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        self.problem(f"{name} must be a whole number {bounds} (got {self.shown(value)})")
        return default

    def seconds(self, name: str, default: float, *, minimum: float | None) -> float:
        value = self._raw(name)
        if value is None:
            return default
        if _DECIMAL.fullmatch(value):
            number = float(value)
            if math.isfinite(number) and number > 0 and (minimum is None or number >= minimum):
                return number
        bounds = f"at least {minimum:g}" if minimum is not None else "greater than 0"
        self.problem(f"{name} must be a number of seconds, {bounds} (got {self.shown(value)})")
        return default

    def url(self, name: str, default: str | None) -> str:
        value = self._raw(name)
        if value is None:
            return default or ""
        if _is_http_url(value):
            return value
        shown = "a URL with credentials; not shown" if "@" in value else _url_shown(value)
        self.problem(f"{name} must be an http:// or https:// URL without a query (got {shown})")
        return default or ""

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self._raw(name)
        if value is None:
            return default
        for option in allowed:
            if option.lower() == value.lower():
                return option
        self.problem(f"{name} must be one of {', '.join(allowed)} (got {self.shown(value)})")
        return default


def describe(value: str) -> str:
    """A value's length and kinds of characters ("40 characters: letters and digits"), not it."""
    kinds = []
    upper, lower = any(c.isupper() for c in value), any(c.islower() for c in value)
    if upper and lower:
        kinds.append("letters")
    elif upper or lower:
        kinds.append("uppercase letters" if upper else "lowercase letters")
    if any(c.isdigit() for c in value):
        kinds.append("digits")
    if any(c.isspace() for c in value):
        kinds.append("spaces")
    if any(not (c.isalnum() or c.isspace()) for c in value):
        kinds.append("symbols")
    listed = ", ".join(kinds[:-1]) + f" and {kinds[-1]}" if len(kinds) > 1 else "".join(kinds)
    count = f"{len(value)} character{'s' if len(value) != 1 else ''}"
    # A Slack token's prefix says which token went where, and is no part of the secret.
    prefix = _TOKEN_PREFIX.match(value)
    start = f" starting with {prefix.group()}" if prefix else ""
    # Enough to tell which paste went where, without showing what might be a secret.
    return f"{count}{start}: {listed}" if listed else count


def _url_shown(value: str) -> str:
    """A rejected URL as its scheme and host only: its path or query may carry a secret."""
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    # A host without a dot is no endpoint anyone meant, and may be a pasted secret.
    host = parts.hostname if parts is not None and parts.scheme else None
    if parts is None or not host or ("." not in host and host != "localhost"):
        return f"{describe(value)}; value not shown"
    rest = ", with a query" if parts.query or parts.fragment else ""
    return f"a URL with scheme {parts.scheme!r} and host {host!r}{rest}"


def _auth(read: _Reader) -> AuthSettings | None:
    """Decide the one KPS auth mode, naming the variables when none, several or a partial set."""
    groups = {
        "token": [name for name in _TOKEN_VARS if read.given(name)],
        "password": [name for name in _PASSWORD_VARS if read.given(name)],
        "AK/SK": [name for name in _AKSK_VARS if read.given(name)],
    }
    chosen = [mode for mode, names in groups.items() if names]
    if not chosen:
        read.problem(f"KPS auth is not configured: set exactly one of {_AUTH_CHOICES}")
        return None
    if len(chosen) > 1:
        given = "; ".join(f"{mode}: {', '.join(groups[mode])}" for mode in chosen)
        read.problem(
            f"KPS auth is ambiguous: {len(chosen)} modes are configured ({given});"
            " set exactly one of them"
        )

    complete = True
    password_missing = [name for name in _PASSWORD_VARS if not read.given(name)]
    if groups["password"] and password_missing:
        complete = False
        read.problem(
            f"KPS password auth is incomplete: {', '.join(password_missing)}"
            f" {'is' if len(password_missing) == 1 else 'are'} missing"
            f" ({', '.join(groups['password'])} set)"
        )
    aksk_missing = [name for name in _AKSK_VARS[:2] if not read.given(name)]
    if groups["AK/SK"] and aksk_missing:
        complete = False
        security_token_given = _AKSK_VARS[2] in groups["AK/SK"]
        note = "; a security token only goes with an AK/SK pair" if security_token_given else ""
        read.problem(
            f"KPS AK/SK auth is incomplete: {', '.join(aksk_missing)}"
            f" {'is' if len(aksk_missing) == 1 else 'are'} missing"
            f" ({', '.join(groups['AK/SK'])} set{note})"
        )
    if len(chosen) > 1 or not complete:
        return None

    text = read.text
    match chosen[0]:
        case "token":
            return TokenAuthSettings(token=Secret(text("KPS_AUTH_TOKEN") or ""))
        case "password":
            return PasswordAuthSettings(
                username=text("HUAWEICLOUD_USERNAME") or "",
                password=Secret(text("HUAWEICLOUD_PASSWORD") or ""),
                domain=text("HUAWEICLOUD_DOMAIN") or "",
            )
        case _:
            security_token = text("HUAWEICLOUD_SDK_SECURITY_TOKEN")
            return AkSkAuthSettings(
                ak=text("HUAWEICLOUD_SDK_AK") or "",
                sk=Secret(text("HUAWEICLOUD_SDK_SK") or ""),
                security_token=Secret(security_token) if security_token else None,
            )


def _state_url(read: _Reader) -> Secret:
    """Validate STATE_URL without ever echoing it: it may carry a database password."""
    value = read.text("STATE_URL") or DEFAULT_STATE_URL
    try:
        scheme = make_url(value).drivername
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        read.problem(
            "STATE_URL must be an SQLAlchemy URL such as sqlite+aiosqlite:///kps-bot.db"
            " or postgresql+asyncpg://user:password@host/db"
        )
        return Secret(DEFAULT_STATE_URL)
    if scheme not in STATE_URL_SCHEMES:
        hint = "; for PostgreSQL write postgresql+asyncpg://…" if "postgres" in scheme else ""
        read.problem(
            f"STATE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            f" (got scheme {_scheme_shown(scheme)}{hint})"
        )
    return Secret(value)


def _scheme_shown(scheme: str) -> str:
    """A driver name (letters and '+') as itself; anything else may be a pasted secret."""
    if re.fullmatch(r"[a-z]+(\+[a-z]+)?", scheme):
        return repr(scheme)
    return f"{describe(scheme)}; not shown"


def _url_password(url: str) -> str | None:
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc  # no credentials in a URL we might print
        and not (parts.query or parts.fragment)
    )


OAUTH_VARIABLES: Final = ("SLACK_CLIENT_ID", "SLACK_CLIENT_SECRET")


def oauth_conflict(environ: Mapping[str, str]) -> tuple[str, bool] | None:
    """What SLACK_CLIENT_ID/SECRET in `environ` would do to Bolt, and whether it is fatal.

    Bolt builds its OAuth flow from both whenever they are in the process environment (even
    empty), and then ignores SLACK_BOT_TOKEN; one alone is harmless but a trap.
    """
    present = [name for name in OAUTH_VARIABLES if name in environ]
    if len(present) == len(OAUTH_VARIABLES):
        return (
            "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are set: Bolt then runs multi-workspace "
            "OAuth and ignores SLACK_BOT_TOKEN, so every request fails; unset both",
            True,
        )
    if present:
        (other,) = set(OAUTH_VARIABLES) - set(present)
        return (
            f"{present[0]} is set: harmless alone, but with {other} also set Bolt would ignore "
            "SLACK_BOT_TOKEN; unset it",
            False,
        )
    return None
