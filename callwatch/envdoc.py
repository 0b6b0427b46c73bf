"""Print ``.env.example``: every setting with its default (``python -m callwatch.envdoc``)."""

from __future__ import annotations

from typing import Any

import msgspec

from messages.settings import Secret, Settings
from runtime.settings import env_name

HEADER = """\
# callwatch settings: every one, with its default. Copy to .env and fill in what you need.
# Secrets (tokens, passwords in URLs) belong here, never in code; chmod 600 this file.
# Empty CALLWATCH_REDIS_URL / CALLWATCH_DATABASE_URL start embedded servers in DATA_DIR.
"""


def _value(value: Any) -> str:
    if value is None or isinstance(value, Secret):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list | frozenset):
        return ",".join(str(v) for v in value)
    return str(value)


def render() -> str:
    defaults = Settings()
    lines = [HEADER]
    top = []
    for field in msgspec.structs.fields(Settings):
        value = getattr(defaults, field.name)
        if isinstance(value, msgspec.Struct):
            lines.append(f"\n# [{field.name}]")
            for sub in msgspec.structs.fields(type(value)):
                name = env_name(field.name, sub.name)
                lines.append(f"{name}={_value(getattr(value, sub.name))}")
        else:
            top.append(f"{env_name(None, field.name)}={_value(value)}")
    lines[1:1] = top
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
