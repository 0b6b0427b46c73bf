"""Deployment files: compose.yml parses and names the right services; .env.example is complete."""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml

from messages.settings import Settings
from runtime.settings import env_name

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_and_images() -> None:
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"bot", "redis", "postgres"}
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in services["redis"]["command"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["bot"]["build"] == "."
    bot_env = services["bot"]["environment"]
    assert bot_env["CALLWATCH_REDIS_URL"].startswith("redis://redis:")
    assert "@postgres:5432/" in bot_env["CALLWATCH_DATABASE_URL"]
    for port in services["bot"].get("ports", []):
        assert port.startswith("127.0.0.1:"), "the control port must not be published publicly"
    assert {"redis", "postgres"} <= set(services["bot"]["depends_on"])


def test_dockerfile_runs_as_non_root() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def all_setting_names() -> list[str]:
    names = []
    for field in msgspec.structs.fields(Settings):
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            names += [env_name(field.name, sub.name) for sub in msgspec.structs.fields(field.type)]
        else:
            names.append(env_name(None, field.name))
    return names


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    missing = [name for name in all_setting_names() if name not in text]
    assert not missing, f".env.example lacks {missing}"
