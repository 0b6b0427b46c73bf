"""Inline keyboards of the bot and the grammar of their ``callback_data``.

Callback data comes back from Telegram as text anyone can forge (a modified client sends
whatever it likes), so it is parsed strictly by `parse_callback` into one of a few small
types and never carries an identity: the chat it acts on is always the chat the press came
from. Every button made here round-trips through `parse_callback` (a test holds that), and
each ``callback_data`` stays well under Telegram's 64 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

import msgspec

from messages.filters import FIELD_NAMES
from messages.payments import Plan
from messages.users import SettingRow

__all__ = [
    "MAX_CALLBACK_BYTES",
    "Callback",
    "Cancel",
    "ChoosePlan",
    "Menu",
    "PickPreset",
    "SetField",
    "cancel_keyboard",
    "encode_callback",
    "parse_callback",
    "plans_keyboard",
    "presets_keyboard",
    "settings_keyboard",
]

MAX_CALLBACK_BYTES: Final = 64
MAX_BUTTON_TEXT: Final = 60
MENUS: Final = ("settings", "presets", "subscribe")
METHODS: Final = ("sol", "nowpayments")
METHOD_LABELS: Final = {"sol": "SOL", "nowpayments": "Crypto (NOWPayments)"}

_PRESET: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}", re.ASCII)
_FIELDS: Final = frozenset(FIELD_NAMES)
_PLANS: Final = frozenset(p.value for p in Plan)


class SetField(msgspec.Struct, frozen=True):
    """Change one filter field (``paused`` toggles at once, the others ask for a value)."""

    field: str


class Cancel(msgspec.Struct, frozen=True):
    """Stop waiting for a typed value."""


class PickPreset(msgspec.Struct, frozen=True):
    name: str


class ChoosePlan(msgspec.Struct, frozen=True):
    plan: str
    method: str


class Menu(msgspec.Struct, frozen=True):
    """Open another screen (settings, presets, subscribe)."""

    name: str


Callback: TypeAlias = SetField | Cancel | PickPreset | ChoosePlan | Menu


def parse_callback(data: object) -> Callback | None:
    """The press ``data`` stands for, or None when it is not one of ours."""
    if not isinstance(data, str) or not data.isascii():
        return None
    if len(data.encode()) > MAX_CALLBACK_BYTES:
        return None
    kind, _, rest = data.partition(":")
    if kind == "set" and rest in _FIELDS:
        return SetField(rest)
    if kind == "cancel" and data == "cancel":
        return Cancel()
    if kind == "preset" and _PRESET.fullmatch(rest):
        return PickPreset(rest)
    if kind == "plan":
        plan, _, method = rest.partition(":")
        if plan in _PLANS and method in METHODS:
            return ChoosePlan(plan, method)
        return None
    if kind == "menu" and rest in MENUS:
        return Menu(rest)
    return None


def encode_callback(callback: Callback) -> str:
    if isinstance(callback, SetField):
        data = f"set:{callback.field}"
    elif isinstance(callback, Cancel):
        data = "cancel"
    elif isinstance(callback, PickPreset):
        data = f"preset:{callback.name}"
    elif isinstance(callback, ChoosePlan):
        data = f"plan:{callback.plan}:{callback.method}"
    else:
        data = f"menu:{callback.name}"
    if len(data.encode()) > MAX_CALLBACK_BYTES:
        raise ValueError(f"callback data too long: {data[:80]!r}")
    return data


def _button(text: str, callback: Callback) -> dict[str, object]:
    if len(text) > MAX_BUTTON_TEXT:
        text = text[: MAX_BUTTON_TEXT - 1] + "…"
    return {"text": text, "callback_data": encode_callback(callback)}


def _markup(rows: Iterable[Sequence[dict[str, object]]]) -> dict[str, object]:
    return {"inline_keyboard": [list(row) for row in rows if row]}


def settings_keyboard(rows: Sequence[SettingRow]) -> dict[str, object]:
    """One button per filter field showing its value, then a presets shortcut."""
    buttons = [[_button(f"{row.label}: {row.value}", SetField(row.field))] for row in rows]
    buttons.append([_button("Presets", Menu("presets"))])
    return _markup(buttons)


def cancel_keyboard() -> dict[str, object]:
    return _markup([[_button("Cancel", Cancel())]])


def presets_keyboard(names: Sequence[str]) -> dict[str, object]:
    """Two preset buttons per row (names that would not parse back are left out)."""
    usable = [n for n in names if _PRESET.fullmatch(n)]
    buttons = [_button(f"Apply {n}", PickPreset(n)) for n in usable]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    rows.append([_button("Settings", Menu("settings"))])
    return _markup(rows)


def plans_keyboard(plans: Sequence[str], methods: Sequence[str]) -> dict[str, object]:
    """One row per plan, one button per configured payment method."""
    rows = []
    for plan in plans:
        if plan not in _PLANS:
            continue
        rows.append(
            [
                _button(f"{plan.title()} · {METHOD_LABELS[m]}", ChoosePlan(plan, m))
                for m in methods
                if m in METHODS
            ]
        )
    return _markup(rows)
