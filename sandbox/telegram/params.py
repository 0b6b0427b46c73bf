"""Decoding Bot API request parameters from url-encoded, multipart and JSON bodies.

Telegram accepts all three encodings; python-telegram-bot sends forms whose complex values
(reply_markup, commands, allowed_updates, ...) are JSON strings, while other clients send a
JSON body with real objects. `Params` hides the difference behind typed getters that raise
`ApiError(400, ...)` with Telegram-like descriptions, so a malformed request is answered,
never crashes the server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ApiError", "Params", "UploadedFile"]

INT_PARAMS = frozenset(
    {
        "message_id",
        "offset",
        "limit",
        "timeout",
        "user_id",
        "reply_to_message_id",
        "message_thread_id",
        "cache_time",
        "from_chat_id",
    }
)
BOOL_PARAMS = frozenset(
    {
        "disable_notification",
        "protect_content",
        "show_alert",
        "drop_pending_updates",
        "disable_web_page_preview",
        "allow_sending_without_reply",
        "has_spoiler",
        "disable_content_type_detection",
        "show_caption_above_media",
    }
)
JSON_PARAMS = frozenset(
    {
        "reply_markup",
        "allowed_updates",
        "commands",
        "scope",
        "entities",
        "caption_entities",
        "link_preview_options",
        "reply_parameters",
        "media",
    }
)


class ApiError(Exception):
    """A Bot API error answer: HTTP status, description and optional retry_after."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.retry_after is not None:
            out["parameters"] = {"retry_after": self.retry_after}
        return out


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """One multipart file part."""

    filename: str
    content_type: str
    data: bytes


def bad_request(detail: str) -> ApiError:
    return ApiError(400, f"Bad Request: {detail}")


def _to_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isascii() and digits.isdigit() and len(digits) <= 20:
            return int(text)
    return None


def _to_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0", ""):
            return False
    return None


def _to_json(value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return _INVALID
    return value


_INVALID = object()


class Params:
    """Request parameters with typed, Telegram-flavoured access."""

    def __init__(
        self, raw: Mapping[str, object], files: Mapping[str, UploadedFile] | None = None
    ) -> None:
        self.raw: dict[str, object] = dict(raw)
        self.files: dict[str, UploadedFile] = dict(files or {})

    def __contains__(self, name: str) -> bool:
        return name in self.raw or name in self.files

    def get_int(self, name: str, default: int | None = None) -> int | None:
        if name not in self.raw:
            return default
        value = _to_int(self.raw[name])
        if value is None:
            raise bad_request(f"invalid {name} specified")
        return value

    def get_float(self, name: str, default: float) -> float:
        value = self.raw.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                pass
            else:
                if math.isfinite(number):
                    return number
        raise bad_request(f"invalid {name} specified")

    def require_int(self, name: str) -> int:
        value = self.get_int(name)
        if value is None:
            raise bad_request(f"{name} is empty")
        return value

    def get_str(self, name: str, default: str | None = None) -> str | None:
        value = self.raw.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad_request(f"invalid {name} specified")

    def get_bool(self, name: str, default: bool = False) -> bool:
        if name not in self.raw:
            return default
        value = _to_bool(self.raw[name])
        if value is None:
            raise bad_request(f"invalid {name} specified")
        return value

    def get_json(self, name: str) -> object:
        """The decoded value of a JSON-typed parameter, or None when absent."""
        if name not in self.raw:
            return None
        value = _to_json(self.raw[name])
        if value is _INVALID:
            raise bad_request(f"can't parse {name} JSON object")
        return value

    def chat_id(self) -> int | str:
        """An integer chat id or an @username; Telegram says "chat not found" otherwise."""
        value = self.raw.get("chat_id")
        if value is None or value == "":
            raise bad_request("chat_id is empty")
        as_int = _to_int(value)
        if as_int is not None:
            return as_int
        if isinstance(value, str) and value.startswith("@") and len(value) > 1:
            return value
        raise bad_request("chat not found")

    def decoded(self) -> dict[str, Any]:
        """A readable copy for the call log: numbers, booleans and JSON values decoded."""
        out: dict[str, Any] = {}
        for name, value in self.raw.items():
            converted: object = value
            if name in INT_PARAMS or name == "chat_id":
                as_int = _to_int(value)
                converted = value if as_int is None else as_int
            elif name in BOOL_PARAMS:
                as_bool = _to_bool(value)
                converted = value if as_bool is None else as_bool
            elif name in JSON_PARAMS:
                as_json = _to_json(value)
                converted = value if as_json is _INVALID else as_json
            out[name] = converted
        for name, upload in self.files.items():
            out[name] = {"filename": upload.filename, "size": len(upload.data)}
        return out
