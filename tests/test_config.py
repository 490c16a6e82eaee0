"""Settings: defaults, every problem named at once, the auth modes, and no secret ever shown."""

from __future__ import annotations

import dataclasses
import io
import re
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from dotenv import dotenv_values

from bot.config import (
    SETTING_VARIABLES,
    AkSkAuthSettings,
    PasswordAuthSettings,
    Settings,
    SettingsError,
    TokenAuthSettings,
    load_settings,
    read_environment,
)
from bot.secret import Secret

PROJECT = "0123456789abcdef0123456789abcdef"
BOT_TOKEN = "xoxb-1111-2222-botTOKENvalue"
SIGNING_SECRET = "8f7e6d5c4b3a2918signingSECRET"
APP_TOKEN = "xapp-1-A111-222-appTOKENvalue"
IAM_TOKEN = "MIIDexampleIAMtokenVALUE+/="
PASSWORD = "pa55-w0rd-VALUE"
SK = "skVALUEsecretKEY0123456789"
SECURITY_TOKEN = "securityTOKENvalue0123"
DB_PASSWORD = "dbPASSWORDvalue"


def env(**changes: str) -> dict[str, str]:
    """A minimal valid HTTP-mode environment with token auth, changed by keyword."""
    base = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
        "HUAWEICLOUD_REGION": "cn-north-4",
        "KPS_AUTH_TOKEN": IAM_TOKEN,
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value}


def problems(environ: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return caught.value.problems


def test_defaults() -> None:
    settings = load_settings(env())

    assert settings.slack_bot_token == Secret(BOT_TOKEN)
    assert settings.slack_signing_secret == Secret(SIGNING_SECRET)
    assert settings.slack_app_token is None
    assert settings.socket_mode is False
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.port == 3000
    assert settings.project_id == PROJECT
    assert settings.region == "cn-north-4"
    assert settings.kps_endpoint == "https://kms.cn-north-4.myhuaweicloud.com"
    assert settings.iam_endpoint == "https://iam.cn-north-4.myhuaweicloud.com"
    assert settings.auth == TokenAuthSettings(token=Secret(IAM_TOKEN))
    assert settings.stale_channel_id is None
    assert settings.stale_after == timedelta(minutes=30)
    assert settings.poll_interval == 60.0
    assert settings.state_url.reveal() == "sqlite+aiosqlite:///kps-bot.db"
    assert settings.page_size == 10
    assert settings.renotify_after is None
    assert settings.kps_timeout == 10.0
    assert settings.kps_max_attempts == 4
    assert settings.log_format == "text"
    assert settings.log_level == "INFO"


def test_every_setting_parsed() -> None:
    settings = load_settings(
        env(
            SLACK_APP_TOKEN=APP_TOKEN,
            SLACK_API_URL="http://127.0.0.1:8123/api",
            PORT="8080",
            KPS_ENDPOINT="http://127.0.0.1:9000/",
            STALE_CHANNEL_ID="G01ABCDEF",
            STALE_AFTER_MINUTES="45",
            POLL_INTERVAL_SECONDS="2.5",
            STATE_URL=f"postgresql+asyncpg://kps:{DB_PASSWORD}@db:5432/kps",
            PAGE_SIZE="20",
            RENOTIFY_MINUTES="120",
            KPS_TIMEOUT_SECONDS="0.5",
            KPS_MAX_ATTEMPTS="1",
            LOG_FORMAT="JSON",
            LOG_LEVEL="debug",
        )
    )

    assert settings.socket_mode is True
    assert settings.slack_app_token == Secret(APP_TOKEN)
    assert settings.slack_api_url == "http://127.0.0.1:8123/api/"
    assert settings.port == 8080
    assert settings.kps_endpoint == "http://127.0.0.1:9000"
    assert settings.iam_endpoint == "https://iam.cn-north-4.myhuaweicloud.com"
    assert settings.stale_channel_id == "G01ABCDEF"
    assert settings.stale_after == timedelta(minutes=45)
    assert settings.poll_interval == 2.5
    assert settings.state_url.reveal() == f"postgresql+asyncpg://kps:{DB_PASSWORD}@db:5432/kps"
    assert settings.page_size == 20
    assert settings.renotify_after == timedelta(hours=2)
    assert settings.kps_timeout == 0.5
    assert settings.kps_max_attempts == 1
    assert settings.log_format == "json"
    assert settings.log_level == "DEBUG"


def test_surrounding_whitespace_is_ignored() -> None:
    settings = load_settings(env(SLACK_BOT_TOKEN=f" {BOT_TOKEN}\n", PAGE_SIZE=" 5 "))

    assert settings.slack_bot_token == Secret(BOT_TOKEN)
    assert settings.page_size == 5


def test_socket_mode_needs_no_signing_secret() -> None:
    settings = load_settings(env(SLACK_SIGNING_SECRET="", SLACK_APP_TOKEN=APP_TOKEN))

    assert settings.socket_mode is True
    assert settings.slack_signing_secret is None


def test_http_mode_needs_signing_secret() -> None:
    (problem,) = problems(env(SLACK_SIGNING_SECRET=""))

    assert problem.startswith("SLACK_SIGNING_SECRET is required in HTTP mode")


def test_empty_environment_names_every_required_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({})

    message = str(caught.value)
    assert message.startswith("kps-bot cannot start:\n")
    for name in (
        "SLACK_BOT_TOKEN",
        "SLACK_SIGNING_SECRET",
        "HUAWEICLOUD_SDK_PROJECT_ID",
        "HUAWEICLOUD_REGION",
        "KPS_AUTH_TOKEN",
    ):
        assert name in message
    assert len(caught.value.problems) == 5
    # One problem per line, each naming its variable first or the auth modes.
    assert message.count("\n  - ") == 5


BAD_VALUES = [
    ("PAGE_SIZE", "0", "PAGE_SIZE must be a whole number from 1 to 20 (got '0')"),
    ("PAGE_SIZE", "21", "PAGE_SIZE must be a whole number from 1 to 20 (got '21')"),
    ("PAGE_SIZE", "ten", "PAGE_SIZE must be a whole number from 1 to 20 (got 'ten')"),
    ("PORT", "0", "PORT must be a whole number from 1 to 65535 (got '0')"),
    ("PORT", "70000", "PORT must be a whole number from 1 to 65535 (got '70000')"),
    ("STALE_AFTER_MINUTES", "-5", "STALE_AFTER_MINUTES must be a whole number of at least 1"),
    ("STALE_AFTER_MINUTES", "1.5", "STALE_AFTER_MINUTES must be a whole number of at least 1"),
    ("RENOTIFY_MINUTES", "0", "RENOTIFY_MINUTES must be a whole number of at least 1"),
    ("KPS_MAX_ATTEMPTS", "11", "KPS_MAX_ATTEMPTS must be a whole number from 1 to 10"),
    (
        "POLL_INTERVAL_SECONDS",
        "0.5",
        "POLL_INTERVAL_SECONDS must be a number of seconds, at least 1",
    ),
    ("POLL_INTERVAL_SECONDS", "nan", "POLL_INTERVAL_SECONDS must be a number of seconds"),
    ("KPS_TIMEOUT_SECONDS", "0", "KPS_TIMEOUT_SECONDS must be a number of seconds, greater than 0"),
    ("KPS_TIMEOUT_SECONDS", "inf", "KPS_TIMEOUT_SECONDS must be a number of seconds"),
    ("SLACK_API_URL", "slack.com/api", "SLACK_API_URL must be an http:// or https:// URL"),
    ("KPS_ENDPOINT", "ftp://kms.example.com", "KPS_ENDPOINT must be an http:// or https:// URL"),
    ("IAM_ENDPOINT", "https://iam.example.com/?x=1", "IAM_ENDPOINT must be an http:// or https://"),
    ("IAM_ENDPOINT", "https://iam.example.com:port", "IAM_ENDPOINT must be an http:// or https://"),
    ("HUAWEICLOUD_REGION", "CN North 4", "HUAWEICLOUD_REGION must be a region ID such as cn-"),
    ("HUAWEICLOUD_REGION", "cn_north_4", "HUAWEICLOUD_REGION must be a region ID such as cn-"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "my project", "HUAWEICLOUD_SDK_PROJECT_ID must be a project ID"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "a/b", "HUAWEICLOUD_SDK_PROJECT_ID must be a project ID"),
    ("STALE_CHANNEL_ID", "#kps-alerts", "STALE_CHANNEL_ID must be a channel ID"),
    ("STALE_CHANNEL_ID", "U01ABCDEF", "STALE_CHANNEL_ID must be a channel ID"),
    ("STATE_URL", "mysql+aiomysql://db/kps", "STATE_URL must start with sqlite+aiosqlite://"),
    ("STATE_URL", "postgresql://db/kps", "got scheme 'postgresql'; for PostgreSQL write"),
    ("STATE_URL", "kps-bot.db", "STATE_URL must be an SQLAlchemy URL"),
    ("LOG_FORMAT", "yaml", "LOG_FORMAT must be one of text, json (got 'yaml')"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("SLACK_BOT_TOKEN", "xoxp-1-user-token", "SLACK_BOT_TOKEN must be a bot token starting with"),
    ("SLACK_APP_TOKEN", "xoxb-not-an-app-token", "SLACK_APP_TOKEN must be an app-level token"),
    # Issue 10 item 15: project IDs are 32 hex characters; placeholders are not tokens.
    ("HUAWEICLOUD_SDK_PROJECT_ID", "my-project", "must be a project ID: 32 hex characters"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", "cn-north-4", "looks like a project name, not its ID"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", PROJECT[:-1], "must be a project ID: 32 hex characters"),
    ("HUAWEICLOUD_SDK_PROJECT_ID", PROJECT[:-1] + "g", "must be a project ID: 32 hex"),
    ("SLACK_BOT_TOKEN", "xoxb-your-bot-token", "placeholder 'xoxb-your-bot-token': put the real"),
    ("SLACK_BOT_TOKEN", "<your bot token>", "SLACK_BOT_TOKEN still holds a placeholder"),
    ("SLACK_BOT_TOKEN", "xoxb-…", "must be a bot token starting with xoxb- followed by"),
    ("SLACK_BOT_TOKEN", "xoxb-1-2 3", "starting with xoxb- followed by letters, digits and '-'"),
    ("SLACK_APP_TOKEN", "xapp-your-app-token", "placeholder 'xapp-your-app-token'"),
    ("KPS_AUTH_TOKEN", "your-iam-token", "KPS_AUTH_TOKEN still holds a placeholder: put"),
]


@pytest.mark.parametrize(("name", "value", "expected"), BAD_VALUES)
def test_bad_value_is_named_with_the_reason(name: str, value: str, expected: str) -> None:
    found = problems(env(**{name: value}))

    assert len(found) == 1, found
    assert found[0].startswith(name)
    assert expected in found[0]


def test_several_bad_values_are_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            env(
                PAGE_SIZE="0",
                PORT="http",
                HUAWEICLOUD_REGION="Beijing",
                STALE_CHANNEL_ID="#ops",
                LOG_FORMAT="xml",
                SLACK_BOT_TOKEN="",
            )
        )

    named = [problem.split(" ", 1)[0] for problem in caught.value.problems]
    assert sorted(named) == sorted(
        [
            "PAGE_SIZE",
            "PORT",
            "HUAWEICLOUD_REGION",
            "STALE_CHANNEL_ID",
            "LOG_FORMAT",
            "SLACK_BOT_TOKEN",
        ]
    )
    assert "PAGE_SIZE must be a whole number from 1 to 20 (got '0')" in str(caught.value)


def test_long_values_are_described_not_shown() -> None:
    (problem,) = problems(env(HUAWEICLOUD_REGION="ab" * 250))

    assert problem.endswith("(got 500 characters: lowercase letters; value not shown)")
    assert "abab" not in problem


def test_an_unregistered_secret_in_the_wrong_variable_shows_only_length_and_shape() -> None:
    # Issue 10 item 9: an SK pasted into HUAWEICLOUD_REGION while token auth is configured, so
    # the SK is no configured secret the reader could recognise.
    sk = "SKa1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9"
    (problem,) = problems(env(HUAWEICLOUD_REGION=sk))

    assert sk not in problem and sk[:6] not in problem
    assert problem == (
        "HUAWEICLOUD_REGION must be a region ID such as cn-north-4"
        " (got 40 characters: letters and digits; value not shown)"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("hunter2", "7 characters: lowercase letters and digits"),
        ("Pa ss!", "6 characters: letters, spaces and symbols"),
        ("x", "'x'"),
        ("12345", "'12345'"),
        ("nine", "'nine'"),
        ("mississippis", "12 characters: lowercase letters"),
    ],
)
def test_only_short_numbers_and_words_are_echoed(value: str, shown: str) -> None:
    (problem,) = problems(env(LOG_LEVEL=value))

    assert f"(got {shown}" in problem
    if not shown.startswith("'"):
        assert value not in problem.split("(got", 1)[1]


ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_env_example_copied_unchanged_does_not_start() -> None:
    copied = {name: value for name, value in dotenv_values(ENV_EXAMPLE).items() if value}

    found = problems(copied)

    assert found[0] == (
        "SLACK_BOT_TOKEN still holds .env.example's placeholder 'xoxb-your-bot-token':"
        " put the real value in, or remove the line"
    )


def test_every_placeholder_of_env_example_is_named() -> None:
    # Uncomment every example line, as someone filling in the file top to bottom might.
    text = re.sub(r"^# ?([A-Z][A-Z0-9_]+=)", r"\1", ENV_EXAMPLE.read_text(), flags=re.MULTILINE)
    example = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v}
    placeholders = sorted(name for name, value in example.items() if "your" in value)

    message = str(problems(example))

    assert placeholders == ["HUAWEICLOUD_DOMAIN", "SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"]
    for name in placeholders:
        assert f"{name} still holds .env.example's placeholder {example[name]!r}" in message


def test_endpoints_are_built_from_region() -> None:
    settings = load_settings(env(HUAWEICLOUD_REGION="ap-southeast-1"))

    assert settings.kps_endpoint == "https://kms.ap-southeast-1.myhuaweicloud.com"
    assert settings.iam_endpoint == "https://iam.ap-southeast-1.myhuaweicloud.com"


def test_region_may_be_missing_when_both_endpoints_are_set() -> None:
    settings = load_settings(
        env(
            HUAWEICLOUD_REGION="",
            KPS_ENDPOINT="http://127.0.0.1:9000/",
            IAM_ENDPOINT="http://127.0.0.1:9001",
        )
    )

    assert settings.region is None
    assert settings.kps_endpoint == "http://127.0.0.1:9000"
    assert settings.iam_endpoint == "http://127.0.0.1:9001"


def test_region_missing_with_one_endpoint_names_the_other() -> None:
    (problem,) = problems(env(HUAWEICLOUD_REGION="", KPS_ENDPOINT="http://127.0.0.1:9000"))

    assert problem.startswith("HUAWEICLOUD_REGION is required unless both")
    assert problem.endswith("(unset: IAM_ENDPOINT)")


def test_token_auth() -> None:
    assert load_settings(env()).auth == TokenAuthSettings(token=Secret(IAM_TOKEN))


def test_password_auth() -> None:
    settings = load_settings(
        env(
            KPS_AUTH_TOKEN="",
            HUAWEICLOUD_USERNAME="kps-bot",
            HUAWEICLOUD_PASSWORD=PASSWORD,
            HUAWEICLOUD_DOMAIN="acme",
        )
    )

    assert settings.auth == PasswordAuthSettings("kps-bot", Secret(PASSWORD), "acme")


def test_aksk_auth_with_and_without_security_token() -> None:
    plain = load_settings(env(KPS_AUTH_TOKEN="", HUAWEICLOUD_SDK_AK="AKID", HUAWEICLOUD_SDK_SK=SK))
    temporary = load_settings(
        env(
            KPS_AUTH_TOKEN="",
            HUAWEICLOUD_SDK_AK="AKID",
            HUAWEICLOUD_SDK_SK=SK,
            HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN,
        )
    )

    assert plain.auth == AkSkAuthSettings("AKID", Secret(SK), None)
    assert temporary.auth == AkSkAuthSettings("AKID", Secret(SK), Secret(SECURITY_TOKEN))


def test_no_auth_mode_lists_the_choices() -> None:
    (problem,) = problems(env(KPS_AUTH_TOKEN=""))

    assert problem.startswith("KPS auth is not configured: set exactly one of")
    for name in ("KPS_AUTH_TOKEN", "HUAWEICLOUD_USERNAME", "HUAWEICLOUD_SDK_AK"):
        assert name in problem


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({"HUAWEICLOUD_USERNAME": "kps-bot"}, ["HUAWEICLOUD_PASSWORD", "HUAWEICLOUD_DOMAIN"]),
        ({"HUAWEICLOUD_PASSWORD": PASSWORD}, ["HUAWEICLOUD_USERNAME", "HUAWEICLOUD_DOMAIN"]),
        (
            {"HUAWEICLOUD_USERNAME": "kps-bot", "HUAWEICLOUD_PASSWORD": PASSWORD},
            ["HUAWEICLOUD_DOMAIN"],
        ),
        ({"HUAWEICLOUD_SDK_AK": "AKID"}, ["HUAWEICLOUD_SDK_SK"]),
        ({"HUAWEICLOUD_SDK_SK": SK}, ["HUAWEICLOUD_SDK_AK"]),
        (
            {"HUAWEICLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN},
            ["HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"],
        ),
    ],
)
def test_incomplete_auth_names_what_is_missing(given: dict[str, str], missing: list[str]) -> None:
    (problem,) = problems(env(KPS_AUTH_TOKEN="", **given))

    assert "auth is incomplete" in problem
    listed = problem.split(":", 1)[1].split(" missing", 1)[0]
    for name in missing:
        assert name in listed
    for name in given:
        assert name not in listed
        assert name in problem  # named as the variable that is set


def test_security_token_alone_explains_it_needs_a_key_pair() -> None:
    (problem,) = problems(env(KPS_AUTH_TOKEN="", HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN))

    assert "a security token only goes with an AK/SK pair" in problem


def test_two_auth_modes_are_ambiguous() -> None:
    (problem,) = problems(env(HUAWEICLOUD_SDK_AK="AKID", HUAWEICLOUD_SDK_SK=SK))

    assert problem.startswith("KPS auth is ambiguous: 2 modes are configured")
    assert "token: KPS_AUTH_TOKEN" in problem
    assert "AK/SK: HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK" in problem


def test_all_auth_modes_at_once_are_ambiguous_and_incomplete_sets_still_reported() -> None:
    found = problems(env(HUAWEICLOUD_USERNAME="kps-bot", HUAWEICLOUD_SDK_AK="AKID"))

    assert found[0].startswith("KPS auth is ambiguous: 3 modes are configured")
    assert any(p.startswith("KPS password auth is incomplete") for p in found)
    assert any(p.startswith("KPS AK/SK auth is incomplete") for p in found)


SECRETS = [BOT_TOKEN, SIGNING_SECRET, APP_TOKEN, IAM_TOKEN, PASSWORD, SK, SECURITY_TOKEN]


def assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text


def test_malformed_secrets_are_never_echoed() -> None:
    bad_bot_token = "xoxp-9999-user-TOKEN-secret"
    bad_app_token = "xoxb-8888-not-app-SECRET"
    db_url = f"mysql://kps:{DB_PASSWORD}@db/kps"
    with pytest.raises(SettingsError) as caught:
        load_settings(
            env(
                SLACK_BOT_TOKEN=bad_bot_token,
                SLACK_APP_TOKEN=bad_app_token,
                STATE_URL=db_url,
                HUAWEICLOUD_USERNAME="kps-bot",
                HUAWEICLOUD_PASSWORD=PASSWORD,
                HUAWEICLOUD_SDK_SK=SK,
                HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN,
            )
        )

    shown = "\n".join([str(caught.value), repr(caught.value), *caught.value.problems])
    assert_no_secret(shown, [*SECRETS, bad_bot_token, bad_app_token, DB_PASSWORD, db_url])
    assert "SLACK_BOT_TOKEN" in shown and "SLACK_APP_TOKEN" in shown and "STATE_URL" in shown


def test_secret_pasted_into_an_ordinary_variable_is_not_echoed() -> None:
    found = problems(
        env(
            PAGE_SIZE=SIGNING_SECRET,
            HUAWEICLOUD_REGION="xoxb-5555-pasted-TOKEN",
            SLACK_API_URL="https://user:hunter2pass@slack.example.com/api/",
        )
    )

    text = "\n".join(found)
    assert_no_secret(text, [SIGNING_SECRET, "pasted-TOKEN", "hunter2pass"])
    assert "PAGE_SIZE" in text and "HUAWEICLOUD_REGION" in text and "SLACK_API_URL" in text


@pytest.mark.parametrize(
    "auth_env",
    [
        {},
        {
            "KPS_AUTH_TOKEN": "",
            "HUAWEICLOUD_USERNAME": "kps-bot",
            "HUAWEICLOUD_PASSWORD": PASSWORD,
            "HUAWEICLOUD_DOMAIN": "acme",
        },
        {
            "KPS_AUTH_TOKEN": "",
            "HUAWEICLOUD_SDK_AK": "AKID",
            "HUAWEICLOUD_SDK_SK": SK,
            "HUAWEICLOUD_SDK_SECURITY_TOKEN": SECURITY_TOKEN,
        },
    ],
)
def test_repr_shows_no_secret(auth_env: dict[str, str]) -> None:
    settings = load_settings(
        env(
            SLACK_APP_TOKEN=APP_TOKEN,
            STATE_URL=f"postgresql+asyncpg://kps:{DB_PASSWORD}@db/kps",
            **auth_env,
        )
    )

    assert_no_secret(repr(settings), [*SECRETS, DB_PASSWORD])
    assert_no_secret(repr(settings.auth), SECRETS)
    assert_no_secret(str(settings), [*SECRETS, DB_PASSWORD])
    assert PROJECT in repr(settings)  # the repr is still useful


def test_secret_values_lists_every_secret_including_the_database_password() -> None:
    settings = load_settings(
        env(
            SLACK_APP_TOKEN=APP_TOKEN,
            KPS_AUTH_TOKEN="",
            HUAWEICLOUD_SDK_AK="AKID",
            HUAWEICLOUD_SDK_SK=SK,
            HUAWEICLOUD_SDK_SECURITY_TOKEN=SECURITY_TOKEN,
            STATE_URL=f"postgresql+asyncpg://kps:{DB_PASSWORD}@db/kps",
        )
    )

    assert set(settings.secret_values()) == {
        BOT_TOKEN,
        SIGNING_SECRET,
        APP_TOKEN,
        SK,
        SECURITY_TOKEN,
        DB_PASSWORD,
    }


def test_settings_constructor_works_directly_and_is_frozen() -> None:
    settings = Settings(
        slack_bot_token=Secret("xoxb-test"),
        project_id=PROJECT,
        auth=TokenAuthSettings(Secret("token")),
        kps_endpoint="http://127.0.0.1:1",
        iam_endpoint="http://127.0.0.1:2",
    )

    assert settings.page_size == 10
    assert settings.state_url.reveal() == "sqlite+aiosqlite:///kps-bot.db"
    assert settings.socket_mode is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.page_size = 5  # type: ignore[misc]


def test_dotenv_file_is_read_and_the_real_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "\n".join(
            [
                "# a comment",
                f"SLACK_BOT_TOKEN={BOT_TOKEN}",
                "PAGE_SIZE=7",
                "KPS_TEST_FROM_FILE_ONLY=file",
                "KPS_TEST_EMPTY_IN_FILE=",
                "KPS_TEST_EMPTY_IN_ENV=from-file",
                "STATE_URL='sqlite+aiosqlite:///$HOME/x.db'",
            ]
        )
    )
    for name in ("SLACK_BOT_TOKEN", "KPS_TEST_FROM_FILE_ONLY", "KPS_TEST_EMPTY_IN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAGE_SIZE", "15")
    monkeypatch.setenv("KPS_TEST_EMPTY_IN_ENV", "")

    environ = read_environment(dotenv)

    assert environ["SLACK_BOT_TOKEN"] == BOT_TOKEN
    assert environ["PAGE_SIZE"] == "15"
    assert environ["KPS_TEST_FROM_FILE_ONLY"] == "file"
    assert "KPS_TEST_EMPTY_IN_FILE" not in environ
    assert environ["KPS_TEST_EMPTY_IN_ENV"] == "from-file"
    assert environ["STATE_URL"] == "sqlite+aiosqlite:///$HOME/x.db"  # single quotes: literal
    assert load_settings({**env(), **environ}).page_size == 15


def test_missing_dotenv_file_gives_the_real_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KPS_TEST_ONLY_IN_ENV", "yes")

    environ = read_environment(tmp_path / "absent.env")

    assert environ["KPS_TEST_ONLY_IN_ENV"] == "yes"


def test_env_example_documents_exactly_the_settings() -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    documented = re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example.read_text(), flags=re.MULTILINE)

    assert sorted(set(documented)) == sorted(SETTING_VARIABLES)
    assert len(documented) == len(set(documented))  # each documented once


def test_setting_variables_are_exactly_what_load_settings_reads() -> None:
    read: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
            read.add(key)
            return super().get(key, default)

    load_settings(Recording(env()))

    assert read == set(SETTING_VARIABLES)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("ftp://kms.example.com/x?k=v", "a URL with scheme 'ftp' and host 'kms.example.com'"),
        ("ftp://SKa1b2C3d4E5f6G7h8/", "25 characters: letters, digits and symbols"),
        ("SKa1b2C3d4E5f6G7h8", "18 characters: letters and digits"),
    ],
)
def test_a_rejected_url_shows_only_scheme_and_host(value: str, shown: str) -> None:
    (problem,) = problems(env(KPS_ENDPOINT=value))

    assert problem.startswith("KPS_ENDPOINT must be an http:// or https:// URL")
    assert f"(got {shown}" in problem
    assert "k=v" not in problem and "a1b2" not in problem.lower()


def test_license_file_matches_pyproject() -> None:
    root = Path(__file__).resolve().parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"]
    text = (root / "LICENSE").read_text()

    assert declared == "MIT"
    assert text.startswith("MIT License\n\nCopyright (c) 2026 kps-bot developers\n")
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text
