"""Settings: env and TOML, errors that name the setting, secrets that never print."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import structlog

from messages.settings import Secret, Settings
from runtime.logs import configure_logging
from runtime.settings import SettingsError, load_settings


def test_defaults_env_and_file(tmp_path: Path) -> None:
    config = tmp_path / "callwatch.toml"
    config.write_text('data_dir = "/srv/cw"\n[sender]\nglobal_rate = 25\nin_flight = 4\n')
    env = {"CALLWATCH_CONFIG": str(config), "CALLWATCH_SENDER_GLOBAL_RATE": "20"}
    settings = load_settings(Settings, env=env)
    assert settings.data_dir == "/srv/cw"
    assert settings.sender.global_rate == 20.0  # env beats the file
    assert settings.sender.in_flight == 4
    assert settings.control.port == 8787


def test_lists_from_env() -> None:
    env = {
        "CALLWATCH_TELEGRAM_ADMIN_CHAT_IDS": "11, 22",
        "CALLWATCH_MULTIPLIERS_THRESHOLDS": "[3, 6]",
    }
    settings = load_settings(Settings, env=env)
    assert settings.telegram.admin_chat_ids == (11, 22)
    assert settings.multipliers.thresholds == (3.0, 6.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CALLWATCH_SENDER_GLOBAL_RATE": "fast"}, "CALLWATCH_SENDER_GLOBAL_RATE"),
        ({"CALLWATCH_SENDER_GLOBAL_RATE": "0"}, "CALLWATCH_SENDER_GLOBAL_RATE"),
        ({"CALLWATCH_CONTROL_PORT": "70000"}, "CALLWATCH_CONTROL_PORT"),
        ({"CALLWATCH_LOG_LEVEL": "loud"}, "CALLWATCH_LOG_LEVEL"),
        ({"CALLWATCH_SENDR_GLOBAL_RATE": "1"}, "CALLWATCH_SENDR_GLOBAL_RATE"),
        ({"CALLWATCH_CONFIG": "/nonexistent/cw.toml"}, "CALLWATCH_CONFIG"),
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(Settings, env=env)
    assert named in str(info.value)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[sender]\nglobal_rat = 3\n")
    with pytest.raises(SettingsError, match="global_rat"):
        load_settings(Settings, env={"CALLWATCH_CONFIG": str(config)})


def test_secrets_never_print() -> None:
    settings = load_settings(
        Settings,
        env={
            "CALLWATCH_TELEGRAM_BOT_TOKEN": "123456:very-secret",
            "CALLWATCH_CONTROL_TOKEN": "ctl-secret",
        },
    )
    token = settings.telegram.bot_token
    assert isinstance(token, Secret) and token.reveal() == "123456:very-secret"
    for text in (repr(settings), str(settings), f"{token}", repr(token)):
        assert "very-secret" not in text and "ctl-secret" not in text
    assert set(settings.secrets()) == {"123456:very-secret", "ctl-secret"}


def test_log_redactor_scrubs_secret_values_anywhere() -> None:
    out = io.StringIO()
    configure_logging("info", "json", secrets=["s3cr3t-value"], stream=out)
    try:
        structlog.get_logger("t").info(
            "connect", url="redis://:s3cr3t-value@host/0", nested={"k": ["s3cr3t-value"]}
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue().strip())
    assert "s3cr3t-value" not in out.getvalue()
    assert line["url"] == "redis://:***@host/0"


def test_readable_secret_file_warns(tmp_path: Path) -> None:
    config = tmp_path / "cw.toml"
    config.write_text('[telegram]\nbot_token = "1:abc"\n')
    os.chmod(config, 0o644)
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        load_settings(Settings, env={"CALLWATCH_CONFIG": str(config)})
    assert any(e["event"] == "settings.secret_file_readable" for e in logs)
    assert all("1:abc" not in str(e) for e in logs)
