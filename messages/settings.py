"""The settings schema: every knob of callwatch, grouped by the part it tunes.

Environment names: ``CALLWATCH_<FIELD>`` for top-level fields and
``CALLWATCH_<SECTION>_<FIELD>`` for sectioned ones (``CALLWATCH_SENDER_GLOBAL_RATE``);
a TOML file (``CALLWATCH_CONFIG``) uses the same names, sections as tables.
Secrets are :class:`Secret`, whose repr never shows the value.
"""

from __future__ import annotations

from decimal import Decimal
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
    outbox_linger_ms: Annotated[int, Meta(ge=0)] = 100
    """After a batch smaller than ``outbox_batch`` the writer waits this long before reading
    again, so a trickle of entries is written a batch at a time: the history is not
    urgent, and a round trip to Redis and PostgreSQL per small entry cost a fifth of the
    users flow's CPU at 1,000 events/s."""
    watch_interval: PositiveFloat = 0.5
    """Seconds between the store owners' liveness probes (PING / SELECT 1)."""
    backoff_initial: NonNegFloat = 0.1
    backoff_max: PositiveFloat = 0.5
    """Small on purpose: a server that comes back is picked up within about a second."""


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
    """Messages per second overall (Telegram: 30; paid broadcasts up to 1000)."""
    private_interval: NonNegFloat = 1.0
    group_per_minute: PositiveInt = 20
    in_flight: PositiveInt = 8
    """Requests on the wire at once, so the rate is reached despite network latency."""
    max_attempts: PositiveInt = 5
    """Tries per message on network errors and timeouts before it is recorded as failed."""
    aging_s: PositiveFloat = 10.0
    """A bulk message waiting this long competes with alerts as an equal."""
    private_margin: NonNegFloat = 0.05
    """Extra seconds between two messages to one private chat, against jitter."""
    group_margin: NonNegFloat = 0.5
    global_margin: NonNegFloat = 0.002
    one_way_share: Annotated[float, Meta(ge=0, le=0.5)] = 0.0
    """Share of the smallest recent round trip assumed spent on each network leg when pacing
    (0 assumes nothing and is provably safe; see actors/sender_lanes.py before raising it)."""
    aged_share: Annotated[float, Meta(ge=0, le=0.5)] = 0.1
    """Share of send slots kept for aged alerts/bulk when interactive replies saturate."""
    retry_initial_s: NonNegFloat = 0.5
    retry_max_s: PositiveFloat = 10.0
    request_timeout: PositiveFloat = 10.0
    connection_pool: Annotated[int, Meta(ge=0)] = 0
    """HTTP connections to the Bot API; 0 = in_flight + 2."""
    dedup_ttl_days: PositiveFloat = 14.0
    start_quiet_s: NonNegFloat | None = None
    """Pause after (re)start, since the pacing state of a previous sender is gone; None = one
    private interval plus its margin."""
    drain_s: NonNegFloat = 3.0
    """On a graceful stop, how long to wait for requests in flight to be answered."""
    namespace: str = "callwatch:sender"
    """Redis key prefix of the durable outbox."""


class MultiplierSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    thresholds: tuple[PositiveFloat, ...] = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    entry_ttl_days: PositiveFloat = 7.0


class FilterSettingsSection(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    shards: PositiveInt = 1
    """Filter shards (users by chat id modulo this). They share one event loop, so every
    shard adds work per batch: with 10,000 users one shard took 10 % less CPU than two at
    1,000 events/s and had the lower latency (bench.filters, runs taken turn about). More
    shards confine a shard's crash (and the refill after it) to a share of the users."""
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
    memory_s: NonNegFloat = 60.0
    """Memory must stay above ``memory_ratio`` this long (a GC spike is not an alert)."""
    telegram_down_s: PositiveFloat = 60.0
    """Telegram not answering this long is logged (it cannot be told on Telegram)."""
    repeat_s: PositiveFloat = 3600.0


class PaymentsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Plans, prices and the two payment rails (SOL on chain, the NOWPayments gateway)."""

    daily_lamports: PositiveInt = 100_000_000
    weekly_lamports: PositiveInt = 500_000_000
    monthly_lamports: PositiveInt = 1_500_000_000
    lifetime_lamports: PositiveInt = 10_000_000_000
    daily_usd: Decimal = Decimal("15")
    weekly_usd: Decimal = Decimal("75")
    monthly_usd: Decimal = Decimal("225")
    lifetime_usd: Decimal = Decimal("1500")
    wallet: str = ""
    """Service wallet public key (base58) that SOL payments go to; empty disables SOL."""
    solana_rpc_url: str = ""
    poll_interval_s: PositiveFloat = 5.0
    rpc_timeout_s: PositiveFloat = 10.0
    order_ttl_s: PositiveFloat = 1800.0
    """How long a SOL order's quote stands."""
    settle_grace_s: NonNegFloat = 120.0
    """An order is still watched this long after it expired, for transfers sent in time but
    finalized late (only those dated before the expiry grant)."""
    invoice_ttl_s: PositiveFloat = 86400.0
    nowpayments_api_url: str = ""
    nowpayments_api_key: Secret | None = None
    ipn_secret: Secret | None = None
    ipn_host: str = "127.0.0.1"
    ipn_port: Port = 8789
    ipn_callback_url: str = ""
    """Public URL NOWPayments calls (the IPN listener behind your proxy); empty: the one set
    in the NOWPayments dashboard."""
    price_currency: str = "usd"
    reminder_lead_s: PositiveFloat = 86400.0
    sweep_interval_s: PositiveFloat = 60.0
    """How often expired orders are closed and expiry reminders go out."""
    http_timeout_s: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        for name in ("daily_usd", "weekly_usd", "monthly_usd", "lifetime_usd"):
            value = getattr(self, name)
            if not value.is_finite() or not Decimal("0.01") <= value < Decimal("1e9"):
                raise ValueError(f"{name} must be between 0.01 and 1e9")
            if value != value.quantize(Decimal("0.01")):
                raise ValueError(f"{name} must have at most 2 decimals")


class ReportsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The daily and best-of-day reports; times are "HH:MM" in UTC."""

    daily_at: Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "20:00"
    best_at: Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] = "21:00"
    top_n: Annotated[int, Meta(ge=1, le=40)] = 10


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
    payments: PaymentsSettings = msgspec.field(default_factory=PaymentsSettings)
    reports: ReportsSettings = msgspec.field(default_factory=ReportsSettings)

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
