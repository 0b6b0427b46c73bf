"""Admin commands: one command set for Telegram (``/admin ...``) and the CLI (``POST /admin``).

Both ways in end as the same typed `AdminRequest`: Telegram text goes through
`parse_admin_text`, an HTTP body through `decode_admin_body`, and both through
`build_request`, which checks the command name and converts the arguments into that
command's argument struct (strings such as ``"7"`` become numbers where a number is
expected). Anything wrong raises `AdminInputError` with a sentence for the admin; nothing
here trusts its input, and nothing here decides who is an admin (the admin actor does).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from messages.filters import FIELD_NAMES

__all__ = [
    "ADMIN_COMMANDS",
    "AUDIENCES",
    "AdminInputError",
    "AdminRequest",
    "AdminResult",
    "BroadcastArgs",
    "BroadcastStatusArgs",
    "CommandSpec",
    "CouponCreateArgs",
    "ExtendArgs",
    "GrantArgs",
    "LockArgs",
    "LockChanged",
    "NoArgs",
    "Origin",
    "PresetArgs",
    "PresetNameArgs",
    "RevokeArgs",
    "UserArgs",
    "build_request",
    "decode_admin_body",
    "parse_admin_text",
]

Origin = Literal["telegram", "cli"]
Audience = Literal["all", "subscribers"]
AUDIENCES: Final[tuple[str, ...]] = ("all", "subscribers")
MAX_COMMAND_TEXT: Final = 4096
MAX_BROADCAST: Final = 3500
"""Leaves room under Telegram's 4096 characters once HTML entities are escaped."""
_COMMAND_NAME: Final = re.compile(r"^[a-z][a-z_]{0,31}$")

UserRef = int | str
"""A chat id (``123``, ``"123"``) or a username (``"@bob"``); resolved by the admin actor."""


class AdminInputError(ValueError):
    """The command could not be understood; ``reason`` is meant for the admin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- argument structs (one per command shape) ----------------------------------------------


class NoArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class UserArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user: UserRef


class LockArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user: UserRef
    reason: str = ""


class GrantArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Exactly one of ``plan`` (daily, weekly, monthly, lifetime) or ``days``."""

    user: UserRef
    plan: str | None = None
    days: int | None = None


class ExtendArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user: UserRef
    days: int


class RevokeArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    user: UserRef
    reason: str = "revoked by an admin"


class PresetArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``filters`` maps filter field names to what a user would type ("45%", "1.5m")."""

    name: str
    description: str | None = None
    filters: dict[str, str] = msgspec.field(default_factory=dict)


class PresetNameArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str


class BroadcastArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: str
    audience: Audience = "all"


class BroadcastStatusArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str | None = None


class CouponCreateArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``kind``: percent, fixed (USD) or free_days; ``value`` as decimal text."""

    code: str
    kind: Literal["percent", "fixed", "free_days"]
    value: str
    max_uses: int | None = None
    valid_days: float | None = None
    plan: str | None = None


class ReconcileArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days: Annotated[float, Meta(gt=0, le=366)] = 1.0


class CommandSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How one command is called: its argument struct, which arguments may be given by
    position in Telegram text, and which one takes the rest of the line verbatim."""

    args: type[Any]
    summary: str
    positional: tuple[str, ...] = ()
    rest: str | None = None
    mutates: bool = False


ADMIN_COMMANDS: Final[dict[str, CommandSpec]] = {
    "help": CommandSpec(args=NoArgs, summary="this list"),
    "lookup": CommandSpec(
        args=UserArgs, positional=("user",), summary="lookup <id|@username>: a user's record"
    ),
    "lock": CommandSpec(
        args=LockArgs,
        positional=("user",),
        rest="reason",
        mutates=True,
        summary="lock <user> [reason]: the user gets nothing and is told so",
    ),
    "unlock": CommandSpec(
        args=UserArgs, positional=("user",), mutates=True, summary="unlock <user>"
    ),
    "grant": CommandSpec(
        args=GrantArgs,
        positional=("user", "plan"),
        mutates=True,
        summary="grant <user> <plan|days>: grant a plan or N days",
    ),
    "extend": CommandSpec(
        args=ExtendArgs,
        positional=("user", "days"),
        mutates=True,
        summary="extend <user> <days>: add days to the subscription",
    ),
    "revoke": CommandSpec(
        args=RevokeArgs,
        positional=("user",),
        rest="reason",
        mutates=True,
        summary="revoke <user> [reason]: end the subscription now",
    ),
    "stats": CommandSpec(args=NoArgs, summary="users, subscriptions, today's events, queues"),
    "status": CommandSpec(args=NoArgs, summary="the supervision tree at a glance"),
    "presets": CommandSpec(args=NoArgs, summary="list presets"),
    "preset_create": CommandSpec(
        args=PresetArgs,
        positional=("name",),
        mutates=True,
        summary="preset_create <name> description=... min_win_rate=45 ...",
    ),
    "preset_edit": CommandSpec(
        args=PresetArgs,
        positional=("name",),
        mutates=True,
        summary="preset_edit <name> [description=...] [field=value ...]",
    ),
    "preset_delete": CommandSpec(
        args=PresetNameArgs, positional=("name",), mutates=True, summary="preset_delete <name>"
    ),
    "broadcast": CommandSpec(
        args=BroadcastArgs,
        rest="text",
        mutates=True,
        summary="broadcast [all|subscribers] <text>: bulk message with progress",
    ),
    "broadcast_status": CommandSpec(
        args=BroadcastStatusArgs, positional=("id",), summary="broadcast_status [id]"
    ),
    "coupon_create": CommandSpec(
        args=CouponCreateArgs,
        positional=("code", "kind", "value"),
        mutates=True,
        summary="coupon_create <code> <percent|fixed|free_days> <value> "
        "[max_uses=N] [valid_days=N] [plan=...]",
    ),
    "coupons": CommandSpec(args=NoArgs, summary="list coupons"),
    "reconcile": CommandSpec(
        args=ReconcileArgs,
        positional=("days",),
        summary="reconcile [days]: payments and grants of the last days, mismatches flagged",
    ),
}
_ALIASES: Final[dict[str, str]] = {
    "find": "lookup",
    "user": "lookup",
    "server": "status",
    "coupon_list": "coupons",
    "preset_list": "presets",
    "preset_add": "preset_create",
    "preset_update": "preset_edit",
    "preset_remove": "preset_delete",
}


# -- requests and results --------------------------------------------------------------------


class AdminRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One admin command. ``by`` is the admin's chat id (0 for the CLI, whose gate is the
    control token); ``reply_chat`` is where progress messages go (Telegram only)."""

    command: str
    args: Any
    origin: Origin
    by: int
    reply_chat: int | None = None


class AdminResult(msgspec.Struct, frozen=True, kw_only=True):
    """``text`` is plain text for a person; ``data`` the same facts for tools; ``status``
    an HTTP status for the control server (200 done, 4xx refused, 503 unavailable)."""

    ok: bool
    text: str
    status: int = 200
    data: dict[str, Any] = msgspec.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins({"ok": self.ok, "text": self.text})
        out["data"] = msgspec.to_builtins(self.data)
        return out


class LockChanged(msgspec.Struct, frozen=True):
    """Admin -> bot: this chat was locked (or unlocked); the bot answers it accordingly."""

    chat_id: int
    locked: bool


# -- parsing ---------------------------------------------------------------------------------


def _command_name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise AdminInputError("No command given. Send 'help' for the list.")
    name = raw.strip().lower().replace("-", "_")
    if not _COMMAND_NAME.match(name):
        raise AdminInputError(f"Unknown command {raw[:32]!r}. Send 'help' for the list.")
    name = _ALIASES.get(name, name)
    if name not in ADMIN_COMMANDS:
        raise AdminInputError(f"Unknown command {name!r}. Send 'help' for the list.")
    return name


def parse_admin_text(text: str) -> tuple[str, dict[str, Any]]:
    """Split ``"<command> [positional ...] [key=value ...]"`` (the part after /admin).

    Values may be quoted. A command with a free-text argument (broadcast text, a lock
    reason) takes the rest of the line verbatim, so quotes and apostrophes survive.
    """
    if not isinstance(text, str):
        raise AdminInputError("Send the command as text.")
    if len(text) > MAX_COMMAND_TEXT:
        raise AdminInputError("That command is too long.")
    head, _, tail = text.strip().partition(" ")
    name = _command_name(head)
    spec = ADMIN_COMMANDS[name]
    args: dict[str, Any] = {}
    tail = tail.strip()
    if name == "broadcast":
        first, _, remainder = tail.partition(" ")
        if first.lower() in AUDIENCES:
            args["audience"] = first.lower()
            tail = remainder.strip()
        if tail.lower().startswith("text="):
            tail = tail[5:].strip()
        if tail:
            args["text"] = tail
        return name, args
    positional = list(spec.positional)
    if spec.rest is not None:
        words = tail.split(None, len(positional))
        for key in positional:
            if words and "=" not in words[0]:
                args[key] = words.pop(0)
        rest = " ".join(words).strip()
        if rest.startswith(f"{spec.rest}="):
            rest = rest[len(spec.rest) + 1 :].strip()
        if rest:
            args[spec.rest] = rest
        return name, args
    try:
        tokens = shlex.split(tail)
    except ValueError as exc:
        raise AdminInputError(f"Could not read the arguments: {exc}.") from None
    for token in tokens:
        key, eq, value = token.partition("=")
        if eq:
            key = key.strip().lower()
            if not key:
                raise AdminInputError(f"Argument {token[:40]!r} has no name.")
            args[key] = value
        elif positional:
            args[positional.pop(0)] = token
        else:
            raise AdminInputError(f"Unexpected argument {token[:40]!r}; use name=value.")
    return name, args


def decode_admin_body(body: object) -> tuple[str, dict[str, Any]]:
    """``{"command": "...", "args": {...}}`` from the control server, checked."""
    if not isinstance(body, Mapping):
        raise AdminInputError("The body must be a JSON object.")
    unknown = set(body) - {"command", "args"}
    if unknown:
        raise AdminInputError(f"Unknown body fields: {sorted(str(k)[:32] for k in unknown)}.")
    raw_args = body.get("args", {})
    if raw_args is None:
        raw_args = {}
    if not isinstance(raw_args, Mapping) or not all(isinstance(k, str) for k in raw_args):
        raise AdminInputError("'args' must be a JSON object.")
    return _command_name(body.get("command")), dict(raw_args)


def _normalise(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    args = dict(raw)
    if name in ("preset_create", "preset_edit"):
        filters: dict[str, Any] = {}
        given = args.pop("filters", None)
        if given is not None:
            if not isinstance(given, Mapping):
                raise AdminInputError("'filters' must map filter names to values.")
            filters.update(given)
        for key in list(args):
            if key not in ("name", "description"):
                filters[key] = args.pop(key)
        for key, value in filters.items():
            if key not in FIELD_NAMES or key == "paused":
                raise AdminInputError(
                    f"Unknown filter {str(key)[:32]!r}; filters are "
                    + ", ".join(f for f in FIELD_NAMES if f != "paused")
                    + "."
                )
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise AdminInputError(f"Filter {key} needs a value like a user would type.")
            filters[key] = str(value)
        args["filters"] = filters
    if name == "grant":
        plan = args.get("plan")
        if isinstance(plan, str) and plan.strip().isdigit() and "days" not in args:
            args["days"] = args.pop("plan")
    value = args.get("value")
    if name == "coupon_create" and isinstance(value, int | float) and not isinstance(value, bool):
        args["value"] = str(value)
    for key in ("user",):
        value = args.get(key)
        if isinstance(value, str):
            text = value.strip()
            if re.fullmatch(r"-?\d{1,19}", text):
                args[key] = int(text)
    return args


def build_request(
    command: str,
    raw_args: Mapping[str, Any],
    *,
    origin: Origin,
    by: int,
    reply_chat: int | None = None,
) -> AdminRequest:
    """Check ``command`` and convert ``raw_args`` into its argument struct."""
    name = _command_name(command)
    spec = ADMIN_COMMANDS[name]
    args = _normalise(name, dict(raw_args))
    try:
        typed = msgspec.convert(args, type=spec.args, strict=False)
    except msgspec.ValidationError as exc:
        raise AdminInputError(f"{name}: {_explain(exc)}. Usage: {spec.summary}") from None
    _check(name, typed)
    return AdminRequest(command=name, args=typed, origin=origin, by=by, reply_chat=reply_chat)


def _explain(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    found = re.match(r"^Object missing required field `(?P<f>[^`]*)`", text)
    if found:
        return f"missing {found['f']}"
    found = re.match(r"^Object contains unknown field `(?P<f>[^`]*)`", text)
    if found:
        return f"unknown argument {found['f']}"
    found = re.match(r"^(?P<msg>.*?) - at `\$\.(?P<f>[^`]*)`", text)
    if found:
        return f"bad value for {found['f']} ({found['msg'].lower()})"
    return text[:200]


def _check(name: str, args: Any) -> None:
    user = getattr(args, "user", None)
    if isinstance(user, str):
        handle = user.strip()
        if not re.fullmatch(r"@?[A-Za-z0-9_]{3,64}", handle):
            raise AdminInputError(f"{name}: 'user' is a chat id or an @username.")
    elif isinstance(user, int) and (user == 0 or not -(2**63) <= user < 2**63):
        raise AdminInputError(f"{name}: 'user' is not a valid chat id.")
    if isinstance(args, LockArgs | RevokeArgs) and len(args.reason) > 300:
        raise AdminInputError(f"{name}: the reason is limited to 300 characters.")
    if isinstance(args, GrantArgs) and (args.plan is None) == (args.days is None):
        raise AdminInputError(
            "grant: give either a plan (daily, weekly, monthly, lifetime) or days."
        )
    if (
        isinstance(args, GrantArgs | ExtendArgs)
        and args.days is not None
        and not (1 <= args.days <= 36500)
    ):
        raise AdminInputError(f"{name}: days must be between 1 and 36500.")
    if isinstance(args, BroadcastArgs):
        if not args.text.strip():
            raise AdminInputError("broadcast: the text is empty.")
        if len(args.text) > MAX_BROADCAST:
            raise AdminInputError(f"broadcast: the text is limited to {MAX_BROADCAST} characters.")
    if isinstance(args, PresetArgs | PresetNameArgs) and not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", args.name.strip()
    ):
        raise AdminInputError(
            f"{name}: preset names are 1 to 32 letters, digits, - or _ (starting with a "
            "letter or digit)."
        )
    if (
        isinstance(args, PresetArgs)
        and args.description is not None
        and len(args.description) > 300
    ):
        raise AdminInputError(f"{name}: the description is limited to 300 characters.")
    if isinstance(args, CouponCreateArgs):
        if args.max_uses is not None and not 1 <= args.max_uses <= 10_000_000:
            raise AdminInputError("coupon_create: max_uses must be between 1 and 10000000.")
        if args.valid_days is not None and not 0 < args.valid_days <= 3650:
            raise AdminInputError("coupon_create: valid_days must be between 0 and 3650.")
    if (
        isinstance(args, BroadcastStatusArgs)
        and args.id is not None
        and not re.fullmatch(r"[a-z0-9-]{1,32}", args.id)
    ):
        raise AdminInputError("broadcast_status: unknown broadcast id.")
