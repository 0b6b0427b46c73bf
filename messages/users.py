"""Messages of the users flow: bot commands and their replies, and the filter pipeline.

Three groups:

* **Commands** the Telegram front end sends (through ``actors.user_directory.ask_users``)
  and the **replies** it renders. Replies are plain data: settings come with their
  user-facing rows (label, shown value), refusals carry the sentence from `FilterError`,
  and a store outage is an `Unavailable` with a message to show, never an exception.
* **Pipeline** messages between the filter router, the shards, the user actors, the
  notify gate and the channel-statistics actor.
* **Snapshots** of channel statistics pushed to the router.

Fields typed ``object`` carry actor refs; these messages never leave the process.
"""

from __future__ import annotations

import math
from typing import TypeAlias

import msgspec

from messages.filters import FIELD_NAMES, ChannelStats, FilterSettings
from messages.wire import TokenEvent

__all__ = [
    "ApplyPreset",
    "CallSeen",
    "CallsSeen",
    "GetSettings",
    "GetStatus",
    "GetTracked",
    "LeaderboardEntry",
    "LeaderboardRequest",
    "LeaderboardView",
    "ListPresets",
    "Locate",
    "Located",
    "NotRegistered",
    "Passed",
    "Passes",
    "Pause",
    "PresetInfo",
    "PresetList",
    "RefreshUser",
    "Register",
    "Resume",
    "SetFilter",
    "SettingRow",
    "SettingsRejected",
    "SettingsUpdated",
    "SettingsView",
    "StatsSnapshot",
    "StatsWanted",
    "TrackedList",
    "TrackedToken",
    "Unavailable",
    "UserCommand",
    "UserRemoved",
    "UserReply",
    "UserSettingsChanged",
    "UserStatus",
    "setting_rows",
]


# -- commands (bot -> users) -------------------------------------------------------------


class Register(msgspec.Struct, frozen=True, kw_only=True):
    """``/start``: create the user on first contact, reactivate one who had blocked the bot.

    Replied with `UserStatus` (``created`` True the first time).
    """

    chat_id: int
    username: str | None = None
    first_name: str | None = None


class GetStatus(msgspec.Struct, frozen=True):
    """``/status``: replied with `UserStatus`."""

    chat_id: int


class GetSettings(msgspec.Struct, frozen=True):
    """``/settings``: replied with `SettingsView`."""

    chat_id: int


class SetFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Set one filter field from what the user typed ("45%", "1.5m", "sol, base", "2h").

    Replied with `SettingsUpdated` or `SettingsRejected`.
    """

    chat_id: int
    field: str
    text: str


class ApplyPreset(msgspec.Struct, frozen=True, kw_only=True):
    """Apply a named preset (the user's paused flag is kept): `SettingsUpdated` or
    `SettingsRejected`."""

    chat_id: int
    name: str


class Pause(msgspec.Struct, frozen=True):
    """``/pause``: replied with `SettingsUpdated`."""

    chat_id: int


class Resume(msgspec.Struct, frozen=True):
    """``/resume``: replied with `SettingsUpdated`."""

    chat_id: int


class ListPresets(msgspec.Struct, frozen=True):
    """``/presets``: replied with `PresetList` (answered by the directory)."""

    chat_id: int = 0


class GetTracked(msgspec.Struct, frozen=True, kw_only=True):
    """``/tracked``: the tokens this user was notified of that the multiplier index still
    follows (``multipliers.entry_ttl_days``, 7 by default), newest first.

    Replied with `TrackedList`.
    """

    chat_id: int
    limit: int = 20


class RefreshUser(msgspec.Struct, frozen=True):
    """Reload the user from PostgreSQL (subscription, lock, settings).

    Payments sends it after writing a subscription row, admin after (un)locking.
    Replied with `UserStatus`.
    """

    chat_id: int


class LeaderboardRequest(msgspec.Struct, frozen=True):
    """``/leaderboard``: top channels by win rate; answered by ``channel-stats``."""

    limit: int = 10


class Locate(msgspec.Struct, frozen=True):
    """Ask the directory for a known user's actor (started on demand): `Located` or
    `NotRegistered`."""

    chat_id: int


UserCommand: TypeAlias = (
    Register
    | GetStatus
    | GetSettings
    | SetFilter
    | ApplyPreset
    | Pause
    | Resume
    | ListPresets
    | GetTracked
    | RefreshUser
    | LeaderboardRequest
)


# -- replies -----------------------------------------------------------------------------


class SettingRow(msgspec.Struct, frozen=True):
    """One line of the settings screen: field name (for callbacks), label, shown value."""

    field: str
    label: str
    value: str


def setting_rows(settings: FilterSettings) -> tuple[SettingRow, ...]:
    """The settings screen of ``settings``, in field order."""
    return tuple(
        SettingRow(name, label, value)
        for name, (label, value) in zip(FIELD_NAMES, settings.describe(), strict=True)
    )


class UserStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where a user stands. ``reachable`` is False after they blocked the bot."""

    chat_id: int
    created: bool = False
    reachable: bool = True
    locked: bool = False
    paused: bool = False
    subscribed: bool = False
    subscription_expires_at: float | None = None
    """Unix seconds when the current subscription (with back-to-back renewals) ends."""
    settings: FilterSettings = msgspec.field(default_factory=FilterSettings)
    rows: tuple[SettingRow, ...] = ()
    message: str = ""
    """A sentence to show ("Welcome! ...", "Your subscription has expired."), may be empty."""

    @property
    def receives_alerts(self) -> bool:
        return self.reachable and not self.locked and not self.paused and self.subscribed


class SettingsView(msgspec.Struct, frozen=True, kw_only=True):
    chat_id: int
    settings: FilterSettings
    rows: tuple[SettingRow, ...]


class SettingsUpdated(msgspec.Struct, frozen=True, kw_only=True):
    """The change was saved; ``message`` says what changed, in words."""

    chat_id: int
    settings: FilterSettings
    rows: tuple[SettingRow, ...]
    changed: tuple[str, ...]
    message: str


class SettingsRejected(msgspec.Struct, frozen=True, kw_only=True):
    """The change was refused; ``message`` is meant for the user as is."""

    chat_id: int
    field: str
    message: str


class PresetInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    rows: tuple[SettingRow, ...]


class PresetList(msgspec.Struct, frozen=True):
    presets: tuple[PresetInfo, ...]


class TrackedToken(msgspec.Struct, frozen=True, kw_only=True):
    token_key: str
    chain: str
    symbol: str
    fdv_at_notify: float
    notified_at: float


class TrackedList(msgspec.Struct, frozen=True, kw_only=True):
    chat_id: int
    tokens: tuple[TrackedToken, ...]


class LeaderboardEntry(msgspec.Struct, frozen=True, kw_only=True):
    rank: int
    channel_id: int
    username: str
    calls: int
    resolved: int
    win_rate: float
    avg_gain: float
    median_gain: float


class LeaderboardView(msgspec.Struct, frozen=True, kw_only=True):
    entries: tuple[LeaderboardEntry, ...]
    computed_at: float | None
    """When the statistics were computed (Unix seconds); None before the first refresh."""
    window_days: float


class NotRegistered(msgspec.Struct, frozen=True):
    chat_id: int
    message: str = "You are not registered yet: send /start first."


class Unavailable(msgspec.Struct, frozen=True):
    """A store was down; nothing changed. ``message`` is meant for the user."""

    message: str = "Sorry, that did not work right now. Please try again in a minute."


class Located(msgspec.Struct, frozen=True):
    chat_id: int
    ref: object


UserReply: TypeAlias = (
    UserStatus
    | SettingsView
    | SettingsUpdated
    | SettingsRejected
    | PresetList
    | TrackedList
    | LeaderboardView
    | NotRegistered
    | Unavailable
)


# -- the filter pipeline -----------------------------------------------------------------


class UserSettingsChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A user actor's row for its shard: settings, whether it may receive alerts at all
    (subscribed, reachable, not locked), and until when (the subscription's end: the shard
    stops at that moment without being told)."""

    user_id: int
    settings: FilterSettings
    active: bool
    until: float = math.inf


class UserRemoved(msgspec.Struct, frozen=True):
    user_id: int


class Passed(msgspec.Struct, frozen=True):
    """One token event and the users of one shard whose filters it passed.

    ``text`` is the rendered notification, made once per event and shared.
    """

    event: TokenEvent
    text: str
    user_ids: tuple[int, ...]


class Passes(msgspec.Struct, frozen=True, kw_only=True):
    """Shard -> notify gate: what one shard decided for one batch of events.

    One message per batch, not per user: at thousands of events a second with ~10
    passing users each, a message per notification was most of the cost. ``now`` is the
    wall-clock time of the decision, ``routed_at`` the router's monotonic time (latency).
    """

    passed: tuple[Passed, ...]
    now: float
    routed_at: float


class CallSeen(msgspec.Struct, frozen=True, kw_only=True):
    channel_id: int
    username: str
    called_at: float
    fdv_at_call: float


class CallsSeen(msgspec.Struct, frozen=True, kw_only=True):
    """Router -> channel-stats: calls of channels not seen before on this token, for the
    calls history and for following the token's peak price."""

    event_id: str
    token_key: str
    chain: str
    symbol: str
    calls: tuple[CallSeen, ...]


class StatsSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Every channel's statistics, as computed at ``computed_at`` (Unix seconds)."""

    version: int
    computed_at: float
    stats: tuple[ChannelStats, ...]


class StatsWanted(msgspec.Struct, frozen=True):
    """Ask channel-stats to tell its current snapshot to ``reply_to`` (a restarted router)."""

    reply_to: object
