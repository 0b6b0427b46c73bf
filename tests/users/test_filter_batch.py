"""The batched, win-rate-pruned shard decides exactly as the one-user-at-a-time reference."""

from __future__ import annotations

import random

from actors.filter_batch import BatchColumns, FactsBatch
from actors.filter_logic import EventFacts, decide_one
from messages.filters import KNOWN_CHAINS, ChannelStats, FilterSettings
from messages.wire import ChannelCall, TokenEvent

NOW = 1_750_000_000.0


def random_settings(rng: random.Random) -> FilterSettings:
    fdv_min = rng.choice([0.0, 1e4, 1e5, 1e6])
    fdv_max = rng.choice([None, 5e5, 5e6, 5e7])
    if fdv_max is not None and fdv_max < fdv_min:
        fdv_max = None
    return FilterSettings(
        min_win_rate=rng.choice([0.0, rng.uniform(0, 100), 50.0]),
        min_avg_gain=rng.choice([0.0, rng.uniform(1, 6), 2.0]),
        fdv_min=fdv_min,
        fdv_max=fdv_max,
        chains=frozenset(rng.sample(KNOWN_CHAINS[:6], rng.choice([0, 0, 1, 2]))),
        min_channels=rng.choice([1, 1, 2, 3, 5]),
        lookback=rng.choice([60, 600, 3600, 7200]),
        paused=rng.random() < 0.05,
    )


def random_event(rng: random.Random, i: int, channels: int) -> TokenEvent:
    fdv = 10 ** rng.uniform(3, 8)
    calls = tuple(
        ChannelCall(
            channel_id=rng.randrange(1, channels + 1),
            username=f"c{k}",
            message_id=k + 1,
            called_at=NOW - rng.uniform(0, 8000),
            fdv_at_call=fdv,
        )
        for k in range(rng.randint(1, 7))
    )
    return TokenEvent(
        v=1,
        event_id=f"e{i}",
        seq=i + 1,
        emitted_at=NOW,
        chain_id=rng.choice([*KNOWN_CHAINS[:6], "unknownchain"]),
        token_address=f"T{i}",
        pair_address=f"P{i}",
        price_usd="1",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=1.0,
        volume_h24=1.0,
        symbol="S",
        name="N",
        calls=calls,
    )


def random_stats(rng: random.Random, channels: int) -> dict[int, ChannelStats]:
    out = {}
    for cid in range(1, channels + 1):
        if rng.random() < 0.1:
            continue  # never seen: unrated
        wr = rng.choice([rng.uniform(0, 100), 50.0, 100.0])
        out[cid] = ChannelStats(
            channel_id=cid,
            calls=10,
            resolved=10,
            win_rate=wr,
            avg_gain=rng.choice([rng.uniform(1, 8), 2.0]),
            median_gain=1.0,
            rated=rng.random() < 0.85,
        )
    return out


def reference(
    users: dict[int, tuple[FilterSettings, bool]],
    event: TokenEvent,
    stats: dict[int, ChannelStats],
) -> list[int]:
    facts = EventFacts.from_calls(
        event.chain_id, event.fdv, [(c.channel_id, c.called_at) for c in event.calls], stats, NOW
    )
    return sorted(u for u, (s, active) in users.items() if decide_one(s, facts, active=active))


def test_batches_decide_like_the_reference() -> None:
    rng = random.Random(20240607)
    channels = 60
    stats = random_stats(rng, channels)
    columns = BatchColumns(capacity=8)
    users: dict[int, tuple[FilterSettings, bool]] = {}
    for uid in range(1_500):
        settings, active = random_settings(rng), rng.random() < 0.9
        users[uid] = (settings, active)
        columns.upsert(uid, settings, active=active)
    events = [random_event(rng, i, channels) for i in range(400)]
    checked = passed = 0
    position = 0
    while position < len(events):
        size = rng.choice([1, 1, 3, 17, 64])
        chunk = events[position : position + size]
        position += size
        batch = FactsBatch(chunk, stats, NOW)
        got = {index: sorted(ids.tolist()) for index, ids in columns.decide_batch(batch)}
        for index, event in enumerate(chunk):
            expected = reference(users, event, stats)
            assert got.get(index, []) == expected, (event.event_id, index)
            checked += 1
            passed += len(expected)
        # users come, go and change between batches (one kind of change per round, so a
        # stale copy after any one of them would show)
        roll = rng.random()
        for _ in range(rng.randint(0, 20)):
            uid = rng.randrange(1_600)
            if roll < 0.2 and uid in users:
                columns.remove(uid)
                del users[uid]
            elif roll < 0.4 and uid in users:
                active = not users[uid][1]
                columns.set_active(uid, active)
                users[uid] = (users[uid][0], active)
            else:
                settings = random_settings(rng)
                active = users[uid][1] if uid in users else False
                columns.upsert(uid, settings)
                users[uid] = (settings, active)
    assert checked == len(events)
    assert passed > 500  # the cases are not all trivially empty


def test_each_event_text_is_rendered_once_and_shared() -> None:
    rng = random.Random(3)
    stats = random_stats(rng, 10)
    events = [random_event(rng, i, 10) for i in range(5)]
    batch = FactsBatch(events, stats, NOW, routed_at=12.5)
    first = batch.text(2)
    assert batch.text(2) is first
    assert "<b>S</b>" in first
