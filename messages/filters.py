"""A user's filter settings, presets and per-channel statistics.

Settings arrive from people typing into Telegram and from Redis, so every way in
(constructor, decoding, `with_changes`, `parse_field`) validates, and every
refusal is a `FilterError` naming the field with a sentence a trader understands.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, Final

import msgspec

__all__ = [
    "CHAIN_ALIASES",
    "DEFAULT_PRESETS",
    "FIELD_NAMES",
    "KNOWN_CHAINS",
    "LOOKBACK_MAX",
    "LOOKBACK_MIN",
    "ChannelStats",
    "FilterError",
    "FilterSettings",
    "Preset",
    "decode_settings",
    "encode_settings",
    "format_value",
    "normalize_chain",
    "parse_field",
    "preset_by_name",
]

KNOWN_CHAINS: Final[tuple[str, ...]] = (
    "solana",
    "ethereum",
    "bsc",
    "base",
    "arbitrum",
    "polygon",
    "avalanche",
    "optimism",
    "blast",
    "ton",
    "tron",
    "sui",
    "sonic",
    "hyperevm",
    "abstract",
    "linea",
    "zksync",
    "fantom",
    "pulsechain",
    "cronos",
)
"""Chain ids as DexScreener spells them. Settings may only name these: a typo like
"solanna" would otherwise silently filter out every token."""

CHAIN_ALIASES: Final[dict[str, str]] = {
    "sol": "solana",
    "eth": "ethereum",
    "ether": "ethereum",
    "mainnet": "ethereum",
    "bnb": "bsc",
    "bnbchain": "bsc",
    "binance": "bsc",
    "arb": "arbitrum",
    "matic": "polygon",
    "pol": "polygon",
    "avax": "avalanche",
    "op": "optimism",
    "trx": "tron",
    "ftm": "fantom",
    "pls": "pulsechain",
    "cro": "cronos",
    "hype": "hyperevm",
    "hyperliquid": "hyperevm",
}

WIN_RATE_MAX: Final = 100.0
AVG_GAIN_MAX: Final = 1000.0
FDV_LIMIT: Final = 1e15
MIN_CHANNELS_MAX: Final = 50
LOOKBACK_MIN: Final = 60
LOOKBACK_MAX: Final = 7 * 24 * 3600
MAX_CHAINS: Final = len(KNOWN_CHAINS)
MAX_TEXT: Final = 200

FIELD_LABELS: Final[dict[str, str]] = {
    "min_win_rate": "Minimum win rate",
    "min_avg_gain": "Minimum average gain",
    "fdv_min": "FDV minimum",
    "fdv_max": "FDV maximum",
    "chains": "Chains",
    "min_channels": "Minimum channels",
    "lookback": "Lookback window",
    "paused": "Paused",
}
FIELD_NAMES: Final[tuple[str, ...]] = tuple(FIELD_LABELS)


class FilterError(ValueError):
    """A setting was refused; `message` is meant to be shown to the user as is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _money(value: float) -> str:
    return f"${value:,.0f}"


def _num(value: float) -> str:
    return f"{value:g}"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _in_range(value: object, low: float, high: float) -> bool:
    """True for a real number within [low, high]; NaN, bools and non-numbers are out."""
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def normalize_chain(name: str) -> str | None:
    """Canonical chain id for a name or alias ("SOL" -> "solana"), None if unknown."""
    key = name.strip().lower()
    key = CHAIN_ALIASES.get(key, key)
    return key if key in KNOWN_CHAINS else None


class FilterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One user's filters. Constructing (or decoding) validates, so an instance is always sane.

    Units: `min_win_rate` in percent; `min_avg_gain` a multiple (0 = any); FDVs in USD
    (`fdv_max` None = no maximum); `chains` empty = every chain; `lookback` in seconds.
    """

    min_win_rate: float = 0.0
    min_avg_gain: float = 0.0
    fdv_min: float = 0.0
    fdv_max: float | None = None
    chains: frozenset[str] = frozenset()
    min_channels: int = 1
    lookback: int = 3600
    paused: bool = False

    def __post_init__(self) -> None:
        given: object = self.chains
        if isinstance(given, str) or not isinstance(given, Iterable):
            raise FilterError("chains", "Chains must be a list of chain names.")
        chains = frozenset(_check_chain_name(c) for c in given)
        if chains != self.chains or type(self.chains) is not frozenset:
            msgspec.structs.force_setattr(self, "chains", chains)
        self.validate()

    def validate(self) -> None:
        """Raise `FilterError` for the first field that is out of range."""
        for name in FIELD_NAMES:
            _check_field(name, getattr(self, name))
        if self.fdv_max is not None and self.fdv_min > self.fdv_max:
            raise FilterError(
                "fdv_min",
                f"FDV minimum ({_money(self.fdv_min)}) is above the maximum "
                f"({_money(self.fdv_max)}).",
            )

    def with_changes(self, **fields: Any) -> FilterSettings:
        """A validated copy with `fields` replaced."""
        for name in fields:
            if name not in FIELD_LABELS:
                raise FilterError(name, f"Unknown setting {_shown(name)}.")
        return msgspec.structs.replace(self, **fields)

    def with_text(self, name: str, text: str) -> FilterSettings:
        """A validated copy with one field set from what the user typed."""
        return self.with_changes(**{name: parse_field(name, text)})

    def describe(self) -> list[tuple[str, str]]:
        """(label, shown value) for every field, for the settings screen."""
        return [(FIELD_LABELS[n], format_value(n, getattr(self, n))) for n in FIELD_NAMES]


def _check_chain_name(name: object) -> str:
    if not isinstance(name, str):
        raise FilterError("chains", f"Chain names must be text, you sent {_shown(name)}.")
    canonical = normalize_chain(name)
    if canonical is None:
        raise FilterError(
            "chains",
            f"Unknown chain {_shown(name.strip())[:40]}. Known chains: {', '.join(KNOWN_CHAINS)}.",
        )
    return canonical


def _check_field(name: str, value: object) -> None:
    """Range check of one field on its own (cross-field rules live in `validate`)."""
    if name == "min_win_rate":
        if not _in_range(value, 0.0, WIN_RATE_MAX):
            raise FilterError(name, f"Win rate must be between 0 and 100 %, you sent {_v(value)}.")
    elif name == "min_avg_gain":
        if not (_is_number(value) and value == 0) and not _in_range(value, 1.0, AVG_GAIN_MAX):
            raise FilterError(
                name,
                "Average gain must be 0 (any) or a multiple between 1x and "
                f"{AVG_GAIN_MAX:g}x, you sent {_v(value)}.",
            )
    elif name in ("fdv_min", "fdv_max"):
        which = "minimum" if name == "fdv_min" else "maximum"
        if value is None and name == "fdv_max":
            return
        if not _in_range(value, 0.0, FDV_LIMIT):
            raise FilterError(
                name,
                f"FDV {which} must be between $0 and {_money(FDV_LIMIT)}, you sent {_v(value)}.",
            )
    elif name == "chains":
        if not isinstance(value, frozenset) or len(value) > MAX_CHAINS:
            raise FilterError(name, "Chains must be a set of known chain names.")
        for chain in value:
            if chain not in KNOWN_CHAINS:
                _check_chain_name(chain)
    elif name == "min_channels":
        if isinstance(value, bool) or not isinstance(value, int):
            raise FilterError(
                name, f"Minimum channels must be a whole number, you sent {_v(value)}."
            )
        if not 1 <= value <= MIN_CHANNELS_MAX:
            raise FilterError(
                name,
                f"Minimum channels must be between 1 and {MIN_CHANNELS_MAX}, you sent {value}.",
            )
    elif name == "lookback":
        if isinstance(value, bool) or not isinstance(value, int):
            raise FilterError(
                name, f"Lookback must be a whole number of seconds, you sent {_v(value)}."
            )
        if not LOOKBACK_MIN <= value <= LOOKBACK_MAX:
            raise FilterError(
                name,
                f"Lookback must be between 1 minute and 7 days, you sent {_duration(value)}.",
            )
    elif name == "paused":
        if not isinstance(value, bool):
            raise FilterError(name, f"Paused must be yes or no, you sent {_v(value)}.")
    else:
        raise FilterError(name, f"Unknown setting {_shown(name)}.")


def _v(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return _num(value)
    return _shown(value)


def _duration(seconds: int) -> str:
    if seconds < 0:
        return f"{seconds} s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            amount, seconds = divmod(seconds, size)
            parts.append(f"{amount}{unit}")
    return " ".join(parts)


def format_value(name: str, value: object) -> str:
    """How a field's value is shown to the user."""
    if name == "min_win_rate":
        return "any" if value == 0 else f"{_v(value)} %"
    if name == "min_avg_gain":
        return "any" if value == 0 else f"{_v(value)}x"
    if name in ("fdv_min", "fdv_max"):
        if value is None:
            return "no max"
        if _in_range(value, 0.0, math.inf) and isinstance(value, int | float):
            return _money(value)
        return _v(value)
    if name == "chains":
        if isinstance(value, frozenset | set | tuple | list):
            return ", ".join(sorted(str(c) for c in value)) or "all"
        return _shown(value)
    if name == "lookback" and isinstance(value, int) and not isinstance(value, bool):
        return _duration(value)
    if name == "paused" and isinstance(value, bool):
        return "yes" if value else "no"
    return _v(value)


# -- parsing what users type -------------------------------------------------------------

_NUMBER = re.compile(
    r"""^\$?\s*
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+(?:\.\d*)?|\.\d+)
    \s*(?P<suffix>k|thousand|m|mm|mil|mln|million|b|bn|billion|t|tn|trillion)?
    \s*\$?$""",
    re.ASCII | re.IGNORECASE | re.VERBOSE,
)
_SUFFIX: Final[dict[str, float]] = {
    "": 1.0,
    "k": 1e3,
    "thousand": 1e3,
    "m": 1e6,
    "mm": 1e6,
    "mil": 1e6,
    "mln": 1e6,
    "million": 1e6,
    "b": 1e9,
    "bn": 1e9,
    "billion": 1e9,
    "t": 1e12,
    "tn": 1e12,
    "trillion": 1e12,
}
_DURATION_PART = re.compile(
    r"(\d+(?:\.\d+)?)\s*(days?|d|hours?|hrs?|h|minutes?|mins?|m|seconds?|secs?|s)",
    re.ASCII | re.IGNORECASE,
)
_DURATION_UNITS: Final[dict[str, int]] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_NONE_WORDS: Final = frozenset({"any", "none", "off", "no", "-", "all", "unlimited", "no max"})
_TRUE_WORDS: Final = frozenset({"yes", "y", "true", "on", "1", "pause", "paused", "stop"})
_FALSE_WORDS: Final = frozenset({"no", "n", "false", "off", "0", "resume", "active", "run"})


def _plain_number(name: str, text: str, what: str, example: str) -> float:
    match = _NUMBER.match(text)
    if match is None and re.search(r"\d,\d{1,2}(?!\d)", text):
        raise FilterError(name, f"{what}: use a dot for decimals (1.5m), you sent {_shown(text)}.")
    if match is None:
        raise FilterError(name, f"{what} must be a number like {example}, you sent {_shown(text)}.")
    number = float(match["num"].replace(",", ""))
    value = number * _SUFFIX[(match["suffix"] or "").lower()]
    if not math.isfinite(value):
        raise FilterError(name, f"{what} is too large, you sent {_shown(text)}.")
    return value


def _parse_duration(text: str) -> int:
    compact = text.replace(" ", "").lower()
    if compact.isascii() and compact.isdigit():
        return int(compact)
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += float(match[1]) * _DURATION_UNITS[match[2][0].lower()]
        pos = match.end()
    else:
        if pos and not text[pos:].strip() and math.isfinite(total):
            return round(total)
    raise FilterError(
        "lookback", f"Lookback must be a duration like 30m, 1h or 2h30m, you sent {_shown(text)}."
    )


def parse_field(name: str, text: str) -> Any:
    """Parse what a user typed for one field ("1.5m", "200k", "$2,000,000", "45%", "1h").

    The value is range-checked for that field alone; cross-field rules are checked by
    `FilterSettings.with_changes`. Raises only `FilterError`.
    """
    if not isinstance(name, str) or name not in FIELD_LABELS:
        raise FilterError(str(name)[:40], f"Unknown setting {_shown(name)}.")
    if not isinstance(text, str):
        raise FilterError(name, f"Please send text, not {_shown(text)}.")
    if len(text) > MAX_TEXT:
        raise FilterError(name, f"That is too long ({len(text)} characters) for a setting.")
    raw = text.strip()
    low = raw.lower()
    value: Any
    if name == "min_win_rate":
        if low in _NONE_WORDS:
            value = 0.0
        else:
            value = _plain_number(name, raw.rstrip("%").rstrip(), "Win rate", "45 or 45%")
    elif name == "min_avg_gain":
        if low in _NONE_WORDS:
            value = 0.0
        else:
            value = _plain_number(name, raw.rstrip("xX").rstrip(), "Average gain", "2 or 2.5x")
    elif name in ("fdv_min", "fdv_max"):
        if low in _NONE_WORDS or low in ("0", "$0"):
            value = 0.0 if name == "fdv_min" else None
        else:
            what = "FDV minimum" if name == "fdv_min" else "FDV maximum"
            value = _plain_number(name, raw, what, "200k, 1.5m or $2,000,000")
    elif name == "chains":
        if low in _NONE_WORDS or not low:
            value = frozenset()
        else:
            parts = [p for p in re.split(r"[\s,;/|+]+", raw) if p]
            value = frozenset(_check_chain_name(p) for p in parts)
    elif name == "min_channels":
        number = _plain_number(name, raw, "Minimum channels", "2")
        if number != int(number):
            raise FilterError(name, f"Minimum channels must be a whole number, you sent {raw}.")
        value = int(number)
    elif name == "lookback":
        value = _parse_duration(raw)
    else:
        if low in _TRUE_WORDS:
            value = True
        elif low in _FALSE_WORDS:
            value = False
        else:
            raise FilterError(name, f"Paused must be yes or no, you sent {_shown(raw)}.")
    _check_field(name, value)
    return value


# -- wire -------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder(order="deterministic")
_DECODER = msgspec.json.Decoder(FilterSettings)


def encode_settings(settings: FilterSettings) -> bytes:
    """JSON for Redis / Postgres; `chains` is written sorted so equal settings encode equally."""
    return _ENCODER.encode(settings)


def decode_settings(data: bytes | str) -> FilterSettings:
    """Strict decode of stored settings; any problem is a `FilterError`."""
    try:
        return _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        if isinstance(exc.__cause__, FilterError):
            raise exc.__cause__ from None
        raise FilterError("settings", f"Stored settings are invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise FilterError("settings", f"Stored settings are not valid JSON: {exc}") from None


# -- presets ----------------------------------------------------------------------------

_PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$", re.ASCII)


class Preset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A named filter set that admins manage and users apply in one step."""

    name: str
    description: str
    settings: FilterSettings

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _PRESET_NAME.match(self.name):
            raise FilterError(
                "name",
                "Preset names are 1 to 32 lowercase letters, digits, - or _, "
                f"you sent {_shown(self.name)}.",
            )
        if not isinstance(self.description, str) or len(self.description) > 300:
            raise FilterError("description", "A preset description is text of at most 300 chars.")
        if not isinstance(self.settings, FilterSettings):
            raise FilterError("settings", "A preset needs filter settings.")

    def apply_to(self, current: FilterSettings) -> FilterSettings:
        """The preset's filters, keeping the user's own paused flag."""
        return self.settings.with_changes(paused=current.paused)


DEFAULT_PRESETS: Final[tuple[Preset, ...]] = (
    Preset(
        name="conservative",
        description="Only tokens called by 3+ proven channels (60 %+ win rate, 3x+ average) "
        "in the last hour, $100k to $10m FDV.",
        settings=FilterSettings(
            min_win_rate=60.0,
            min_avg_gain=3.0,
            fdv_min=100_000.0,
            fdv_max=10_000_000.0,
            min_channels=3,
            lookback=3600,
        ),
    ),
    Preset(
        name="balanced",
        description="2+ good channels (45 %+ win rate, 2x+ average) within 2 hours, "
        "$50k to $50m FDV.",
        settings=FilterSettings(
            min_win_rate=45.0,
            min_avg_gain=2.0,
            fdv_min=50_000.0,
            fdv_max=50_000_000.0,
            min_channels=2,
            lookback=2 * 3600,
        ),
    ),
    Preset(
        name="degen",
        description="Early micro caps: any rated channel with 25 %+ win rate in the last "
        "30 minutes, FDV under $1m.",
        settings=FilterSettings(
            min_win_rate=25.0,
            fdv_max=1_000_000.0,
            min_channels=1,
            lookback=1800,
        ),
    ),
    Preset(
        name="large-caps",
        description="Established tokens above $10m FDV called by 2+ channels with 50 %+ "
        "win rate within 6 hours.",
        settings=FilterSettings(
            min_win_rate=50.0,
            fdv_min=10_000_000.0,
            min_channels=2,
            lookback=6 * 3600,
        ),
    ),
)


def preset_by_name(name: str, presets: Iterable[Preset] = DEFAULT_PRESETS) -> Preset:
    """The preset called `name` (case-insensitive), else `FilterError`."""
    key = name.strip().lower() if isinstance(name, str) else ""
    for preset in presets:
        if preset.name == key:
            return preset
    raise FilterError("preset", f"There is no preset called {_shown(name)}.")


# -- channel statistics -----------------------------------------------------------------


class ChannelStats(msgspec.Struct, frozen=True, kw_only=True):
    """One signal channel's track record over the statistics window.

    `win_rate` is a percentage of resolved calls; gains are peak multiples of the FDV at
    the call. `rated` is False below the minimum sample; filters ignore unrated channels.
    """

    channel_id: int
    calls: int
    resolved: int
    win_rate: float
    avg_gain: float
    median_gain: float
    rated: bool
    wins: int = 0
