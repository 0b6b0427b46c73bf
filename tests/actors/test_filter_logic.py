"""Filter settings (validation, parsing, presets) and the decision rules: reference and shard."""

from __future__ import annotations

import contextlib
import math
import random
import time

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.filter_logic import EventFacts, ShardColumns, decide_one
from messages.filters import (
    DEFAULT_PRESETS,
    FIELD_NAMES,
    KNOWN_CHAINS,
    ChannelStats,
    FilterError,
    FilterSettings,
    Preset,
    decode_settings,
    encode_settings,
    parse_field,
    preset_by_name,
)

PROPERTY = settings(max_examples=200, deadline=None)

# -- helpers ------------------------------------------------------------------------------


def facts(
    channels: list[tuple[float, float, bool, float]],
    *,
    chain: str = "solana",
    fdv: float = 1_000_000.0,
) -> EventFacts:
    """An event from (win_rate, avg_gain, rated, age_seconds) per calling channel."""
    return EventFacts(
        chain,
        fdv,
        list(range(1, len(channels) + 1)),
        [c[0] for c in channels],
        [c[1] for c in channels],
        [c[2] for c in channels],
        [c[3] for c in channels],
    )


GOOD = (60.0, 3.0, True, 60.0)  # a strong, rated channel that called a minute ago


def decide(s: FilterSettings, f: EventFacts, *, active: bool = True) -> bool:
    """Decide with the reference and with a shard; they must agree."""
    shard = ShardColumns(capacity=1)
    shard.upsert(7, FilterSettings(), active=True)  # a neighbour row that is not asked about
    shard.upsert(42, s, active=active)
    ref = decide_one(s, f, active=active)
    got = 42 in shard.decide(f).tolist()
    assert got == ref, (s, f)
    return ref


# -- decision rules, one at a time ---------------------------------------------------------


def test_defaults_pass_any_rated_recent_call() -> None:
    assert decide(FilterSettings(), facts([GOOD]))


@pytest.mark.parametrize(("win_rate", "expected"), [(59.9, False), (60.0, True), (75.0, True)])
def test_min_win_rate_alone(win_rate: float, expected: bool) -> None:
    s = FilterSettings(min_win_rate=60.0)
    assert decide(s, facts([(win_rate, 1.0, True, 10.0)])) is expected


@pytest.mark.parametrize(("gain", "expected"), [(1.99, False), (2.0, True), (8.0, True)])
def test_min_avg_gain_alone(gain: float, expected: bool) -> None:
    s = FilterSettings(min_avg_gain=2.0)
    assert decide(s, facts([(0.0, gain, True, 10.0)])) is expected


@pytest.mark.parametrize(
    ("fdv", "expected"),
    [(99_999.0, False), (100_000.0, True), (1_000_000.0, True), (1_000_001.0, False)],
)
def test_fdv_range(fdv: float, expected: bool) -> None:
    s = FilterSettings(fdv_min=100_000.0, fdv_max=1_000_000.0)
    assert decide(s, facts([GOOD], fdv=fdv)) is expected


def test_fdv_without_maximum_and_nan_fdv() -> None:
    s = FilterSettings(fdv_min=10.0)
    assert decide(s, facts([GOOD], fdv=1e14))
    assert not decide(s, facts([GOOD], fdv=math.nan))


def test_chains() -> None:
    s = FilterSettings(chains=frozenset({"solana", "base"}))
    assert decide(s, facts([GOOD], chain="solana"))
    assert decide(s, facts([GOOD], chain="SOL"))  # aliases fold to the canonical id
    assert decide(s, facts([GOOD], chain="base"))
    assert not decide(s, facts([GOOD], chain="ethereum"))
    assert not decide(s, facts([GOOD], chain="somechain"))  # unknown to the shard
    assert decide(FilterSettings(), facts([GOOD], chain="somechain"))  # empty = every chain


def test_min_channels_counts_only_qualifying_channels() -> None:
    s = FilterSettings(min_win_rate=50.0, min_channels=2)
    weak = (40.0, 3.0, True, 10.0)
    assert not decide(s, facts([GOOD]))
    assert not decide(s, facts([GOOD, weak, weak]))
    assert decide(s, facts([GOOD, weak, GOOD]))


@pytest.mark.parametrize(("age", "expected"), [(1799.0, True), (1800.0, True), (1800.5, False)])
def test_lookback(age: float, expected: bool) -> None:
    s = FilterSettings(lookback=1800)
    assert decide(s, facts([(60.0, 3.0, True, age)])) is expected


def test_unrated_channels_never_qualify() -> None:
    unrated = (100.0, 50.0, False, 10.0)
    assert not decide(FilterSettings(), facts([unrated]))
    assert not decide(FilterSettings(min_channels=2), facts([GOOD, unrated]))
    assert decide(FilterSettings(min_channels=2), facts([GOOD, unrated, GOOD]))


def test_no_channels_never_pass() -> None:
    assert not decide(FilterSettings(), facts([]))


def test_paused_user_gets_nothing() -> None:
    assert not decide(FilterSettings(paused=True), facts([GOOD]))


def test_inactive_subscription_gets_nothing() -> None:
    assert not decide(FilterSettings(), facts([GOOD]), active=False)


def test_event_facts_from_calls_uses_latest_call_and_stats() -> None:
    stats = {
        1: ChannelStats(
            channel_id=1,
            calls=10,
            resolved=10,
            win_rate=70.0,
            avg_gain=4.0,
            median_gain=2.5,
            rated=True,
        ),
        2: ChannelStats(
            channel_id=2,
            calls=2,
            resolved=2,
            win_rate=100.0,
            avg_gain=9.0,
            median_gain=9.0,
            rated=False,
        ),
    }
    f = EventFacts.from_calls(
        "Solana", 5e5, [(1, 100.0), (1, 900.0), (2, 950.0), (3, 990.0)], stats, now=1000.0
    )
    assert f.chain == "solana"
    assert f.channel_id.tolist() == [1, 2, 3]
    assert f.age_seconds.tolist() == [100.0, 50.0, 10.0]
    assert f.rated.tolist() == [True, False, False]
    assert f.rated_rows == ((70.0, 4.0, 100.0),)
    with pytest.raises(ValueError):
        f.win_rate[0] = 1.0  # shared between shards, so read-only


def test_event_facts_rejects_ragged_arrays() -> None:
    with pytest.raises(ValueError, match="one row per channel"):
        EventFacts("solana", 1.0, [1, 2], [1.0], [1.0, 1.0], [True, True], [1.0, 1.0])


# -- shard bookkeeping -----------------------------------------------------------------------


def test_shard_upsert_remove_and_active_flags() -> None:
    shard = ShardColumns(capacity=2)
    f = facts([GOOD])
    for uid in range(1, 11):  # grows past the initial capacity
        shard.upsert(uid, FilterSettings())
    assert len(shard) == 10
    assert shard.decide(f).tolist() == []  # new users start inactive
    for uid in range(1, 11):
        assert shard.set_active(uid, True)
    assert sorted(shard.decide(f).tolist()) == list(range(1, 11))

    assert shard.remove(3)
    assert not shard.remove(3)
    assert 3 not in shard
    assert len(shard) == 9
    shard.upsert(10, FilterSettings(paused=True))  # the row that was swapped into 3's place
    assert sorted(shard.decide(f).tolist()) == [1, 2, 4, 5, 6, 7, 8, 9]
    shard.upsert(10, FilterSettings())  # upsert keeps the active flag
    assert 10 in shard.decide(f).tolist()
    assert not shard.set_active(999, True)
    assert shard.set_paused(1, True)
    assert 1 not in shard.decide(f).tolist()
    assert sorted(shard.user_list()) == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_shard_gathering_and_full_paths_agree() -> None:
    """Few eligible rows take the gathering path, many the full one; both must be right."""
    shard = ShardColumns()
    for uid in range(100):
        chains = frozenset({"solana"}) if uid < 10 else frozenset({"ethereum"})
        shard.upsert(uid, FilterSettings(chains=chains, min_channels=1 + uid % 3), active=True)
    two = facts([GOOD, GOOD], chain="solana")
    assert sorted(shard.decide(two).tolist()) == [u for u in range(10) if 1 + u % 3 <= 2]
    eth = facts([GOOD, GOOD], chain="ethereum")
    assert sorted(shard.decide(eth).tolist()) == [u for u in range(10, 100) if 1 + u % 3 <= 2]


# -- vectorized shard == reference on random populations ------------------------------------

CHAIN_POOL = ("solana", "ethereum", "bsc", "base", "ton")
WIN_RATES = (0.0, 25.0, 40.0, 45.0, 50.0, 55.5, 60.0, 70.0)
GAINS = (0.0, 0.0, 1.5, 2.0, 3.0, 5.0)
LOOKBACKS = (300, 900, 1800, 3600, 7200)


def random_settings(rng: random.Random) -> FilterSettings:
    fdv_min = rng.choice((0.0, 0.0, 10_000.0, 50_000.0, 100_000.0, 1_000_000.0))
    fdv_max = rng.choice((None, None, 500_000.0, 1_000_000.0, 5_000_000.0, 100_000_000.0))
    if fdv_max is not None and fdv_max < fdv_min:
        fdv_max = None
    chains = frozenset(c for c in CHAIN_POOL if rng.random() < 0.3) if rng.random() < 0.6 else ()
    return FilterSettings(
        min_win_rate=rng.choice(WIN_RATES) if rng.random() < 0.8 else rng.uniform(0, 100),
        min_avg_gain=rng.choice(GAINS),
        fdv_min=fdv_min,
        fdv_max=fdv_max,
        chains=frozenset(chains),
        min_channels=rng.randint(1, 4),
        lookback=rng.choice(LOOKBACKS),
        paused=rng.random() < 0.05,
    )


def random_event(rng: random.Random) -> EventFacts:
    n = rng.choice((0, 1, 1, 2, 2, 3, 4, 6, 8))
    channels = [
        (
            rng.choice(WIN_RATES) if rng.random() < 0.5 else rng.uniform(0, 100),
            rng.choice(GAINS[1:]) if rng.random() < 0.5 else rng.uniform(1, 8),
            rng.random() < 0.85,
            float(rng.choice(LOOKBACKS)) if rng.random() < 0.3 else rng.uniform(0, 8000),
        )
        for _ in range(n)
    ]
    fdv = rng.choice((100_000.0, 1_000_000.0)) if rng.random() < 0.2 else 10 ** rng.uniform(3, 9)
    chain = rng.choice((*CHAIN_POOL, "SOL", "polygon", "newchain"))
    return facts(channels, chain=chain, fdv=fdv)


def test_shard_equals_reference_on_10000_users_x_1000_events() -> None:
    rng = random.Random(20240605)
    shard = ShardColumns()
    users: dict[int, tuple[FilterSettings, bool]] = {}
    for uid in rng.sample(range(1, 10**12), 10_500):
        s, active = random_settings(rng), rng.random() < 0.9
        shard.upsert(uid, s, active=active)
        users[uid] = (s, active)
    for uid in rng.sample(sorted(users), 500):  # swap-removes scramble the row order
        assert shard.remove(uid)
        del users[uid]
    for uid in rng.sample(sorted(users), 1_000):  # settings changes and lapsed subscriptions
        s, active = random_settings(rng), rng.random() < 0.9
        shard.upsert(uid, s)
        shard.set_active(uid, active)
        users[uid] = (s, active)
    assert len(shard) == len(users) == 10_000

    population = list(users.items())
    passes = 0
    started = time.perf_counter()
    for _ in range(1_000):
        event = random_event(rng)
        expected = [uid for uid, (s, active) in population if decide_one(s, event, active)]
        got = shard.decide(event)
        assert sorted(got.tolist()) == sorted(expected), event
        passes += len(expected)
    # The population must be mixed enough that both outcomes are common.
    assert 10_000 < passes < 5_000_000
    assert time.perf_counter() - started < 120


# -- settings: validation, parsing, wire, presets --------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (
            {"min_win_rate": 150},
            "min_win_rate",
            "Win rate must be between 0 and 100 %, you sent 150",
        ),
        ({"min_win_rate": -1.0}, "min_win_rate", "between 0 and 100 %"),
        ({"min_win_rate": math.nan}, "min_win_rate", "you sent nan"),
        ({"min_avg_gain": 0.5}, "min_avg_gain", "0 (any) or a multiple"),
        (
            {"fdv_min": 2_000_000.0, "fdv_max": 1_000_000.0},
            "fdv_min",
            "FDV minimum ($2,000,000) is above the maximum ($1,000,000)",
        ),
        ({"fdv_max": -5.0}, "fdv_max", "FDV maximum must be between $0"),
        ({"chains": frozenset({"solanna"})}, "chains", "Unknown chain 'solanna'"),
        ({"chains": "solana"}, "chains", "list of chain names"),
        ({"min_channels": 0}, "min_channels", "between 1 and 50"),
        ({"min_channels": 2.5}, "min_channels", "whole number"),
        ({"lookback": 10}, "lookback", "between 1 minute and 7 days, you sent 10s"),
        ({"lookback": 30 * 86400}, "lookback", "you sent 30d"),
        ({"paused": "yes"}, "paused", "yes or no"),
        ({"min_win_rate": True}, "min_win_rate", "you sent True"),
    ],
)
def test_validation_messages(changes: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        FilterSettings().with_changes(**changes)
    assert err.value.field == field
    assert message in err.value.message


def test_constructor_validates_and_normalizes_chains() -> None:
    with pytest.raises(FilterError, match="Win rate"):
        FilterSettings(min_win_rate=101.0)
    s = FilterSettings(chains=["SOL", "eth", "solana"])  # type: ignore[arg-type]
    assert s.chains == frozenset({"solana", "ethereum"})
    assert s.with_changes(lookback=600).lookback == 600
    with pytest.raises(FilterError, match="Unknown setting"):
        s.with_changes(colour="red")


def test_settings_round_trip_and_strict_decode() -> None:
    s = FilterSettings(min_win_rate=45.5, fdv_max=5e6, chains=frozenset({"base", "solana"}))
    blob = encode_settings(s)
    assert b'"chains":["base","solana"]' in blob
    assert decode_settings(blob) == s
    with pytest.raises(FilterError) as err:
        decode_settings(b'{"min_win_rate": 150}')
    assert err.value.field == "min_win_rate"
    for bad in (b"{", b"[]", b'{"min_channels": "2"}', b'{"surprise": 1}'):
        with pytest.raises(FilterError):
            decode_settings(bad)


@pytest.mark.parametrize(
    ("field", "text", "value"),
    [
        ("fdv_min", "1.5m", 1_500_000.0),
        ("fdv_min", "200k", 200_000.0),
        ("fdv_min", "$2,000,000", 2_000_000.0),
        ("fdv_min", " 2 B ", 2e9),
        ("fdv_min", "any", 0.0),
        ("fdv_max", "none", None),
        ("fdv_max", "50M", 50_000_000.0),
        ("min_win_rate", "45%", 45.0),
        ("min_win_rate", "62.5 %", 62.5),
        ("min_win_rate", "off", 0.0),
        ("min_avg_gain", "2.5x", 2.5),
        ("min_avg_gain", "3", 3.0),
        ("min_avg_gain", "any", 0.0),
        ("min_channels", "3", 3),
        ("lookback", "1h", 3600),
        ("lookback", "2h30m", 9000),
        ("lookback", "45 min", 2700),
        ("lookback", "900", 900),
        ("chains", "sol, eth base", frozenset({"solana", "ethereum", "base"})),
        ("chains", "all", frozenset()),
        ("paused", "yes", True),
        ("paused", "Off", False),
    ],
)
def test_parse_field_accepts_what_people_type(field: str, text: str, value: object) -> None:
    assert parse_field(field, text) == value


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("min_win_rate", "150", "Win rate must be between 0 and 100 %, you sent 150"),
        ("min_win_rate", "lots", "Win rate must be a number"),
        ("fdv_min", "1,5m", "use a dot for decimals"),
        ("fdv_min", "-5k", "FDV minimum must be a number"),
        ("min_channels", "2.5", "whole number"),
        ("lookback", "5ms", "duration like"),
        ("lookback", "30d", "between 1 minute and 7 days"),
        ("chains", "solanna", "Unknown chain"),
        ("paused", "maybe", "yes or no"),
        ("colour", "red", "Unknown setting"),
        ("fdv_min", "9" * 300, "too long"),
    ],
)
def test_parse_field_refusals(field: str, text: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        parse_field(field, text)
    assert message in err.value.message


def test_with_text_checks_cross_field_rules() -> None:
    s = FilterSettings().with_text("fdv_max", "1m")
    with pytest.raises(FilterError, match=r"\(\$2,000,000\) is above the maximum \(\$1,000,000\)"):
        s.with_text("fdv_min", "2m")


@PROPERTY
@given(field=st.sampled_from((*FIELD_NAMES, "bogus")), text=st.text(max_size=60))
def test_parse_field_raises_only_filter_error(field: str, text: str) -> None:
    try:
        value = parse_field(field, text)
    except FilterError as err:
        assert err.message
        return
    assert FilterSettings().with_changes(**{field: value}) is not None


@PROPERTY
@given(
    field=st.sampled_from(FIELD_NAMES),
    number=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**20), max_value=10**20),
    ),
    suffix=st.sampled_from(("", "k", "m", "b", "%", "x", "h", "m", " min", "$")),
)
def test_parse_field_numbers_raise_only_filter_error(
    field: str, number: float, suffix: str
) -> None:
    with contextlib.suppress(FilterError):
        parse_field(field, f"{number}{suffix}")


@PROPERTY
@given(data=st.dictionaries(st.sampled_from(FIELD_NAMES), st.from_type(object), max_size=4))
def test_with_changes_raises_only_filter_error(data: dict[str, object]) -> None:
    with contextlib.suppress(FilterError):
        FilterSettings().with_changes(**data)


def test_default_presets_are_valid_and_apply() -> None:
    names = [p.name for p in DEFAULT_PRESETS]
    assert {"conservative", "balanced", "degen"} <= set(names)
    assert len(set(names)) == len(names)
    paused = FilterSettings(paused=True)
    applied = preset_by_name("Balanced").apply_to(paused)
    assert (
        applied.paused and applied.min_channels == preset_by_name("balanced").settings.min_channels
    )
    for preset in DEFAULT_PRESETS:
        assert msgspec.json.decode(msgspec.json.encode(preset), type=Preset) == preset
        assert set(preset.settings.chains) <= set(KNOWN_CHAINS)
    with pytest.raises(FilterError, match="no preset called"):
        preset_by_name("yolo")
    with pytest.raises(FilterError, match="Preset names"):
        Preset(name="Bad Name!", description="", settings=FilterSettings())


def test_describe_shows_user_facing_values() -> None:
    s = FilterSettings(
        min_win_rate=45.0,
        min_avg_gain=2.0,
        fdv_min=50_000.0,
        lookback=5400,
        chains=frozenset({"solana", "base"}),
    )
    shown = dict(s.describe())
    assert shown["Minimum win rate"] == "45 %"
    assert shown["Minimum average gain"] == "2x"
    assert shown["FDV minimum"] == "$50,000"
    assert shown["FDV maximum"] == "no max"
    assert shown["Chains"] == "base, solana"
    assert shown["Lookback window"] == "1h 30m"


def test_shard_rows_hold_settings_values() -> None:
    shard = ShardColumns()
    shard.upsert(5, FilterSettings(fdv_max=None, fdv_min=3.0, lookback=120), active=True)
    assert shard.fdv_max[0] == np.inf and shard.fdv_min[0] == 3.0 and shard.lookback[0] == 120
