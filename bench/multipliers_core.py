"""Benchmark of the pure multiplier index (no actors, no Redis).

Shape as in the seed system: 25,000 tokens with about 100 tracked users each
(2,500,000 entries), then a stream of price updates, half for tracked tokens (random
walks with occasional pumps) and half for tokens nobody tracks. Reports the index's
resident memory, price updates per second and the time to encode every token to its
blob and load them all into a fresh index (the rebuild path without Redis).

Last line: multipliers_core: entries=... rss_mb=... price_updates_per_s=... encode_decode_s=...
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import psutil

from actors.multiplier_index import MultiplierIndex


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


@dataclass(frozen=True)
class Population:
    """Tokens, each tracked by ``per`` distinct users at FDVs spread around its base."""

    keys: list[str]
    untracked: list[str]
    """As many token keys that nobody tracks (the misses of a price stream)."""
    base: npt.NDArray[np.float64]
    spread: npt.NDArray[np.float64]
    users: npt.NDArray[np.int64]


def make_population(rng: np.random.Generator, n_tok: int, per: int) -> Population:
    keys = [f"solana:{i:08d}TokenAddressPaddingToLookReal{i % 97:02d}" for i in range(n_tok)]
    untracked = [f"ethereum:0xuntracked{i:08d}" for i in range(n_tok)]
    base = np.exp(rng.uniform(np.log(2e4), np.log(5e7), n_tok))
    spread = np.exp(rng.normal(0.0, 0.3, (n_tok, per)))
    # Distinct users per token: a random offset into a population of 200,000 users.
    offsets = rng.integers(0, 200_000, n_tok)
    users = (offsets[:, None] + np.arange(per)[None, :] * 1_999) % 200_000 + 1
    return Population(keys, untracked, base, spread, users)


def build_index(population: Population, at: float) -> tuple[MultiplierIndex, float, float]:
    """The index built with ``track()`` (as user actors would): (index, seconds, MB)."""
    before = rss_mb()
    index = MultiplierIndex()
    track = index.track
    t0 = time.perf_counter()
    users, spread = population.users, population.spread
    for t, key in enumerate(population.keys):
        b = float(population.base[t])
        for user, s in zip(users[t].tolist(), spread[t].tolist(), strict=True):
            track(key, user, b * s, at)
    build_s = time.perf_counter() - t0
    return index, build_s, rss_mb() - before


@dataclass(frozen=True)
class Prices:
    """A price stream: half for tracked tokens, half for untracked ones. Tracked prices walk
    (2 % steps, a slight downward drift, as most called tokens fade); one step in 2,000 is a
    pump of 1.5x to 20x, so some users cross thresholds during the run."""

    tracked: npt.NDArray[np.bool_]
    token_index: npt.NDArray[np.int64]
    fdvs: npt.NDArray[np.float64]
    pumps: int
    updates: list[tuple[str, float]]
    """(token key, FDV) in stream order."""


def make_prices(rng: np.random.Generator, population: Population, n: int) -> Prices:
    n_tok = len(population.keys)
    tracked = rng.random(n) < 0.5
    tok_idx = rng.integers(0, n_tok, n)
    steps = rng.normal(-0.002, 0.02, n)
    pumps = rng.random(n) < 0.0005
    steps[pumps] += np.log(rng.uniform(1.5, 20.0, int(pumps.sum())))
    walk = np.zeros(n_tok)
    logs = np.empty(n)
    for i, (t, st) in enumerate(zip(tok_idx.tolist(), steps.tolist(), strict=True)):
        walk[t] += st
        logs[i] = walk[t]
    fdvs = population.base[tok_idx] * np.exp(logs)
    keys, untracked = population.keys, population.untracked
    updates = [
        (keys[t] if tr else untracked[t], f)
        for t, tr, f in zip(tok_idx.tolist(), tracked.tolist(), fdvs.tolist(), strict=True)
    ]
    return Prices(tracked, tok_idx, fdvs, int(pumps.sum()), updates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=25_000)
    parser.add_argument("--users-per-token", type=int, default=100)
    parser.add_argument("--updates", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    population = make_population(rng, args.tokens, args.users_per_token)
    index, build_s, index_mb = build_index(population, 1_700_000_000.0)
    entries = len(index)
    n = args.updates
    prices = make_prices(rng, population, n)
    updates = prices.updates

    on_price = index.on_price
    alerts = 0
    gc.disable()
    t0, c0 = time.perf_counter(), time.process_time()
    for key, fdv in updates:
        got = on_price(key, fdv)
        if got:
            alerts += len(got)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.enable()
    per_s = n / elapsed

    t0 = time.perf_counter()
    blobs = dict(index.iter_blobs())
    encode_s = time.perf_counter() - t0
    rebuilt = MultiplierIndex()
    t0 = time.perf_counter()
    report = rebuilt.load_tokens(blobs.items())
    load_s = time.perf_counter() - t0
    assert not report.rejected and report.dropped == 0
    assert len(rebuilt) == entries
    blob_mb = sum(len(b) for b in blobs.values()) / 2**20

    print(f"build via track(): {build_s:.2f} s ({entries / build_s:,.0f} tracks/s)")
    print(f"index rss delta: {index_mb:.1f} MB (process rss {rss_mb():.0f} MB)")
    print(
        f"price updates: {n:,} in {elapsed:.2f} s wall, {cpu:.2f} s cpu "
        f"({n / cpu:,.0f}/s on cpu time), alerts={alerts:,}, pumps={prices.pumps}"
    )
    print(f"encode all: {encode_s:.2f} s, load all: {load_s:.2f} s, blobs {blob_mb:.1f} MB")
    print(
        f"multipliers_core: entries={entries} rss_mb={index_mb:.0f} "
        f"price_updates_per_s={per_s:.0f} encode_decode_s={encode_s + load_s:.2f}"
    )


if __name__ == "__main__":
    main()
