"""The settings schema: every knob of callwatch, grouped by the part it tunes.

Environment names: ``CALLWATCH_<FIELD>`` for top-level fields and
``CALLWATCH_<SECTION>_<FIELD>`` for sectioned ones (``CALLWATCH_SENDER_GLOBAL_RATE``);
a TOML file (``CALLWATCH_CONFIG``) uses the same names, sections as tables.
Secrets are :class:`Secret`, whose repr never shows the value.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Port = Annotated[int, Meta(ge=0, le=65535)]


class Secret:
    """A string that is never printed: repr, str and format all show ``***``.

    Call :meth:`reveal` at the one place the value is needed (the HTTP header, the URL).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


class SupervisionSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    max_restarts: Annotated[int, Meta(ge=0)] = 10
    period: PositiveFloat = 60.0
    backoff_initial: NonNegFloat = 0.2
    backoff_max: PositiveFloat = 30.0
    backoff_reset_after: PositiveFloat = 60.0


class StoreSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    call_timeout: PositiveFloat = 2.0
    pool_min: PositiveInt = 1
    pool_max: PositiveInt = 10
    outbox_stream: str = "callwatch:outbox"
    outbox_batch: PositiveInt = 5_000
    outbox_block_ms: PositiveInt = 200


class FeedSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = ""
    """socket.io URL of the signal feed; empty in the demo (the sandbox feed)."""
    connect_timeout: PositiveFloat = 10.0
    dedup_size: PositiveInt = 200_000
    mailbox: PositiveInt = 10_000


class TelegramSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    bot_token: Secret | None = None
    api_base_url: str = ""
    """Bot API base URL; empty means Telegram itself (the demo sets the emulator's)."""
    admin_chat_ids: tuple[int, ...] = ()
    poll_timeout: NonNegFloat = 10.0


class SenderSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    global_rate: PositiveFloat = 30.0
    private_interval: NonNegFloat = 1.0
    group_per_minute: PositiveInt = 20
    in_flight: PositiveInt = 8
    max_attempts: PositiveInt = 5
    aging_s: PositiveFloat = 10.0


class MultiplierSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    thresholds: tuple[PositiveFloat, ...] = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    entry_ttl_days: PositiveFloat = 7.0


class FilterSettingsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    shards: PositiveInt = 4
    accepted_ttl_days: PositiveFloat = 14.0
    rejected_ttl_s: PositiveFloat = 3600.0
    stats_refresh_s: PositiveFloat = 300.0
    stats_window_days: PositiveFloat = 30.0
    stats_min_sample: PositiveInt = 5


class ControlSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Port = 8787
    token: Secret | None = None


class HealthSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sample_s: PositiveFloat = 5.0
    store_down_s: PositiveFloat = 300.0
    feed_silent_s: PositiveFloat = 60.0
    mailbox_full_s: PositiveFloat = 60.0
    mailbox_full_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.8
    memory_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.8
    repeat_s: PositiveFloat = 3600.0


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """All of callwatch's settings."""

    data_dir: str = ".callwatch"
    redis_url: Secret | None = None
    """Empty: start an embedded Redis in ``data_dir``."""
    database_url: Secret | None = None
    """Empty: start an embedded PostgreSQL in ``data_dir``."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    supervision: SupervisionSettings = msgspec.field(default_factory=SupervisionSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    feed: FeedSettings = msgspec.field(default_factory=FeedSettings)
    telegram: TelegramSettings = msgspec.field(default_factory=TelegramSettings)
    sender: SenderSettings = msgspec.field(default_factory=SenderSettings)
    multipliers: MultiplierSettings = msgspec.field(default_factory=MultiplierSettings)
    filters: FilterSettingsSection = msgspec.field(default_factory=FilterSettingsSection)
    control: ControlSettings = msgspec.field(default_factory=ControlSettings)
    health: HealthSettings = msgspec.field(default_factory=HealthSettings)

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log redactor."""
        found: list[str] = []
        for value in _walk(self):
            if isinstance(value, Secret) and value.reveal():
                found.append(value.reveal())
        return found


def _walk(struct: msgspec.Struct) -> list[object]:
    out: list[object] = []
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, msgspec.Struct):
            out.extend(_walk(value))
        else:
            out.append(value)
    return out
