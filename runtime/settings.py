"""Settings primitives: secrets, and loading a settings struct from env and TOML.

Settings are untrusted input like any other: a bad value stops the process with exit
status 2 and a message naming the setting the operator has to fix.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from messages.settings import Secret

PREFIX = "CALLWATCH_"
CONFIG_ENV = "CALLWATCH_CONFIG"
EXIT_BAD_SETTINGS = 2

T = TypeVar("T", bound=msgspec.Struct)

log = structlog.get_logger("callwatch.settings")


class SettingsError(Exception):
    """A setting is missing, unknown or invalid; ``setting`` names it as the operator sets it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"bad setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


def env_name(section: str | None, field: str) -> str:
    """The environment variable for a field: CALLWATCH_<FIELD> or CALLWATCH_<SECTION>_<FIELD>."""
    parts = [section, field] if section else [field]
    return PREFIX + "_".join(parts).upper()


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


_SEQUENCE_INFO = (
    msgspec.inspect.ListType,
    msgspec.inspect.VarTupleType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
)


def _is_sequence(tp: Any) -> bool:
    info = msgspec.inspect.type_info(tp)
    if isinstance(info, msgspec.inspect.UnionType):
        return any(isinstance(t, _SEQUENCE_INFO) for t in info.types)
    return isinstance(info, _SEQUENCE_INFO)


def _env_value(tp: Any, raw: str) -> Any:
    text = raw.strip()
    if _is_sequence(tp):
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return [part.strip() for part in text.split(",") if part.strip()]
    if text == "" and _allows_none(tp):
        return None
    return raw


def _allows_none(tp: Any) -> bool:
    info = msgspec.inspect.type_info(tp)
    if isinstance(info, msgspec.inspect.UnionType):
        return any(isinstance(t, msgspec.inspect.NoneType) for t in info.types)
    return False


def _collect_env(cls: type[msgspec.Struct], env: Mapping[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    known = {CONFIG_ENV}
    for field in msgspec.structs.fields(cls):
        if _is_struct(field.type):
            section: dict[str, Any] = {}
            for sub in msgspec.structs.fields(field.type):
                name = env_name(field.encode_name, sub.encode_name)
                known.add(name)
                if name in env:
                    section[sub.encode_name] = _env_value(sub.type, env[name])
            if section:
                data[field.encode_name] = section
        else:
            name = env_name(None, field.encode_name)
            known.add(name)
            if name in env:
                data[field.encode_name] = _env_value(field.type, env[name])
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise SettingsError(unknown[0], "unknown setting (check the spelling)")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise SettingsError(CONFIG_ENV, f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(CONFIG_ENV, f"{path} is not valid TOML: {exc}") from exc


def _setting_for_path(cls: type[msgspec.Struct], path: str) -> str:
    """Map msgspec's error path ``$.sender.global_rate`` to ``CALLWATCH_SENDER_GLOBAL_RATE``."""
    parts = [p for p in path.removeprefix("$").split(".") if p and not p.startswith("[")]
    if not parts:
        return "settings"
    parts = [p.split("[")[0] for p in parts]
    if len(parts) >= 2:
        return f"{env_name(parts[0], parts[1])} ({parts[0]}.{parts[1]})"
    top = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    field = top.get(parts[0])
    if field is not None and _is_struct(field.type):
        return f"[{parts[0]}]"
    return env_name(None, parts[0])


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Secret:
        if isinstance(obj, str):
            return Secret(obj)
        raise TypeError(f"expected a string, got {type(obj).__name__}")
    raise NotImplementedError


def load_settings(
    cls: type[T],
    *,
    env: Mapping[str, str] | None = None,
    file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from (lowest first) its defaults, a TOML file, the environment, overrides.

    The file is ``file`` or the path in ``CALLWATCH_CONFIG``. Raises SettingsError.
    """
    environ = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    path = file if file is not None else environ.get(CONFIG_ENV)
    if path:
        path = Path(path)
        data = _read_file(path)
        _warn_if_exposed(path, data)
    data = _merge(data, _collect_env(cls, environ))
    if overrides:
        data = _merge(data, dict(overrides))
    try:
        return msgspec.convert(data, cls, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        text = str(exc)
        problem, _, where = text.rpartition(" - at `")
        if not problem:
            problem, where = text, "$`"
        setting = _setting_for_path(cls, where.rstrip("`"))
        unknown = problem.startswith("Object contains unknown field")
        if unknown:
            name = problem.split("`")[1] if "`" in problem else "?"
            section = setting if setting.startswith("[") else ""
            raise SettingsError(f"{section}{name}".strip(), "unknown setting") from exc
        raise SettingsError(setting, problem) from exc


def _warn_if_exposed(path: Path, data: Mapping[str, Any]) -> None:
    """A config file holding secrets should not be readable by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH) and _mentions_secret(data):
        log.warning(
            "settings.secret_file_readable",
            file=str(path),
            mode=oct(mode & 0o777),
            hint="chmod 600 the file",
        )


SECRET_WORDS = ("token", "secret", "password", "api_key", "_url")


def _mentions_secret(data: Mapping[str, Any]) -> bool:
    for key, value in data.items():
        if isinstance(value, Mapping):
            if _mentions_secret(value):
                return True
        elif any(word in key for word in SECRET_WORDS) and value:
            return True
    return False
