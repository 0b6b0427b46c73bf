"""A seeded, synchronous model of a signal feed: channels call tokens, prices walk.

It knows nothing of sockets or time passing: the server asks it for the next event and
hands it the ``seq`` and the wall-clock ``now``, so the same seed and the same calls give
the same stream (only ``emittedAt``/``calledAt`` follow the injected clock).

The model is deliberately shaped like the real thing: a few dozen channels, each with its
own activity and hit rate; a token's fate (a pump to 2x-100x, or a slow bleed and maybe a
rug) is decided by the channel that found it; other channels pile on while it pumps, so
repeat token events with growing ``calls`` lists cluster on winners; Solana tokens use
mixed-case base58 addresses, EVM chains 0x hex.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from messages.wire import SCHEMA_VERSION, ChannelCall, PriceUpdate, TokenEvent

__all__ = ["CHAINS", "Channel", "FeedGenerator", "Token", "base58", "format_price"]

CHAINS: Final[tuple[tuple[str, float], ...]] = (
    ("solana", 0.55),
    ("base", 0.17),
    ("bsc", 0.15),
    ("ethereum", 0.13),
)
"""Chains and their share of new tokens (DexScreener chain ids)."""

_BASE58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_WORDS: Final = (
    "pepe", "doge", "wif", "bonk", "moon", "cat", "frog", "chad", "giga", "based", "turbo",
    "neiro", "popcat", "brett", "mog", "toshi", "degen", "ape", "shib", "floki", "kitty",
    "goat", "pnut", "fwog", "mew", "slerf", "bome", "myro", "wen", "sigma", "retard",
    "rocket", "lambo", "pump", "alpha", "zoomer", "boomer", "pixel", "nyan", "hamster",
)  # fmt: skip
_SUFFIXES: Final = ("", "", "", "inu", "ai", "coin", "2", "x", "sol", "cto", "og")
_CHANNEL_STYLES: Final = (
    "calls", "gems", "alpha", "degens", "signals", "insiders", "whales", "apes", "lab", "club",
)  # fmt: skip
_PUMP_BANDS: Final[tuple[tuple[float, float, float], ...]] = (
    (0.50, 2.0, 5.0),
    (0.25, 5.0, 10.0),
    (0.12, 10.0, 20.0),
    (0.08, 20.0, 50.0),
    (0.05, 50.0, 100.0),
)
"""(probability, low, high) of a pumping token's peak multiple, drawn log-uniformly."""


@dataclass(slots=True)
class Channel:
    """A signal channel: how often it posts and how often its calls pump."""

    channel_id: int
    username: str
    hit_rate: float
    activity: float
    next_message_id: int


@dataclass(slots=True)
class Token:
    """A live token's market state and the calls made on it so far."""

    chain: str
    address: str
    pair_address: str
    symbol: str
    name: str
    supply: float
    circulating: float
    fdv: float
    launch_fdv: float
    liquidity_ratio: float
    volume_h24: float
    target: float
    """Peak multiple over ``launch_fdv`` this token will pump to (below 1.5: it never pumps)."""
    pump_steps: int
    lifetime: int
    updates: int = 0
    peaked: bool = False
    calls: list[ChannelCall] = field(default_factory=list)
    callers: set[int] = field(default_factory=set)

    @property
    def key(self) -> str:
        return f"{self.chain}:{self.address}"

    @property
    def multiple(self) -> float:
        return self.fdv / self.launch_fdv


def format_price(price: float) -> str:
    """A float price as DexScreener writes it: plain decimal text, six significant digits."""
    if not math.isfinite(price) or price <= 0:
        return "0"
    return format(Decimal(f"{price:.6g}"), "f")


class FeedGenerator:
    """Deterministic stream of `TokenEvent` and `PriceUpdate` for the sandbox feed."""

    def __init__(
        self,
        *,
        seed: int = 0,
        price_ratio: float = 4.0,
        channels: int = 60,
        max_live_tokens: int = 300,
        repeat_share: float = 0.4,
    ) -> None:
        if price_ratio < 0 or not math.isfinite(price_ratio):
            raise ValueError("price_ratio must be a finite number >= 0")
        if channels < 1 or max_live_tokens < 1:
            raise ValueError("channels and max_live_tokens must be >= 1")
        self._rng = random.Random(seed)
        self.token_share = 1.0 / (1.0 + price_ratio)
        self.repeat_share = repeat_share
        self.max_live_tokens = max_live_tokens
        self.channels: list[Channel] = [self._make_channel(i) for i in range(channels)]
        self._channel_weights = [c.activity for c in self.channels]
        self.live: list[Token] = []
        self._by_key: dict[str, Token] = {}
        self._flood_only: list[Token] = []

    def next_event(self, seq: int, now: float) -> TokenEvent | PriceUpdate:
        """The next event of the stream: a (new or repeat) token event or a price update."""
        if not self.live or self._rng.random() < self.token_share:
            return self.token_event(seq, now)
        return self.price_update(seq, now)

    def token_event(self, seq: int, now: float) -> TokenEvent:
        """A channel calls a token: a repeat call on a live (often pumping) token, or a new one."""
        token = self._pick_repeat() if self._rng.random() < self.repeat_share else None
        if token is None:
            channel = self._pick_channel()
            token = self._new_token(channel)
        else:
            channel = self._pick_channel(exclude=token.callers)
        self._add_call(token, channel, now)
        return self.token_event_for(token, seq, now)

    def price_update(self, seq: int, now: float, token: Token | None = None) -> PriceUpdate:
        """One random-walk step of ``token`` (default: a random live token) and its new price."""
        if token is None:
            token = self._rng.choice(self.live)
        self._walk(token)
        return self.price_update_for(token, seq, now)

    def token_event_for(self, token: Token, seq: int, now: float) -> TokenEvent:
        """The token event describing ``token`` as it stands (calls so far included)."""
        return TokenEvent(
            v=SCHEMA_VERSION,
            event_id=self.event_id(),
            seq=seq,
            emitted_at=now,
            chain_id=token.chain,
            token_address=token.address,
            pair_address=token.pair_address,
            symbol=token.symbol,
            name=token.name,
            price_usd=format_price(token.fdv / token.supply),
            fdv=round(token.fdv, 2),
            market_cap=round(token.fdv * token.circulating, 2),
            liquidity_usd=round(token.fdv * token.liquidity_ratio, 2),
            volume_h24=round(token.volume_h24, 2),
            calls=tuple(token.calls),
        )

    def price_update_for(self, token: Token, seq: int, now: float) -> PriceUpdate:
        """The price update describing ``token``'s current market data."""
        return PriceUpdate(
            v=SCHEMA_VERSION,
            event_id=self.event_id(),
            seq=seq,
            emitted_at=now,
            chain_id=token.chain,
            token_address=token.address,
            pair_address=token.pair_address,
            price_usd=format_price(token.fdv / token.supply),
            fdv=round(token.fdv, 2),
            market_cap=round(token.fdv * token.circulating, 2),
            liquidity_usd=round(token.fdv * token.liquidity_ratio, 2),
            volume_h24=round(token.volume_h24, 2),
        )

    def flood_tokens(self, count: int) -> list[Token]:
        """``count`` tokens for a price flood: live ones first, then price-only extras."""
        chosen = self.live[:count]
        while len(chosen) + len(self._flood_only) < count:
            self._flood_only.append(self._new_token(self.channels[0], register=False))
        chosen += self._flood_only[: count - len(chosen)]
        return chosen

    def token(self, key: str) -> Token | None:
        """The live token with ``chain:address`` key, if any."""
        return self._by_key.get(key)

    def adopt(self, token: Token) -> None:
        """Make a token (published by a test) live, so repeat calls and price walks include it."""
        if token.key in self._by_key:
            return
        self._register(token)

    def make_token(
        self, chain: str, address: str, symbol: str, fdv: float, pair_address: str | None = None
    ) -> Token:
        """A token with the given identity and this model's market parameters (not yet live)."""
        supply = 1e9 if chain == "solana" else 10 ** self._rng.randint(9, 15)
        return Token(
            chain=chain,
            address=address,
            pair_address=pair_address or self._address(chain),
            symbol=symbol,
            name=symbol.title(),
            supply=float(supply),
            circulating=1.0 if chain == "solana" else self._rng.uniform(0.6, 1.0),
            fdv=fdv,
            launch_fdv=fdv,
            liquidity_ratio=self._rng.uniform(0.05, 0.3),
            volume_h24=fdv * self._rng.uniform(0.1, 2.0),
            target=1.0,
            pump_steps=1,
            lifetime=self._rng.randint(300, 3000),
        )

    def event_id(self) -> str:
        """A 64-bit id from the seeded stream: unique in practice, reproducible per seed."""
        return f"{self._rng.getrandbits(64):016x}"

    def _make_channel(self, index: int) -> Channel:
        rng = self._rng
        word = rng.choice(_WORDS)
        style = rng.choice(_CHANNEL_STYLES)
        return Channel(
            channel_id=1_000_000_000 + rng.randrange(1, 999_999_999),
            username=f"{word}_{style}_{index}",
            hit_rate=min(0.85, rng.betavariate(2.0, 5.0)),
            activity=rng.lognormvariate(0.0, 0.8),
            next_message_id=rng.randint(100, 50_000),
        )

    def _pick_channel(self, exclude: set[int] | None = None) -> Channel:
        for _ in range(8):
            channel = self._rng.choices(self.channels, weights=self._channel_weights)[0]
            if not exclude or channel.channel_id not in exclude:
                return channel
        free = [c for c in self.channels if not exclude or c.channel_id not in exclude]
        return self._rng.choice(free or self.channels)

    def _pick_repeat(self) -> Token | None:
        """A live token another channel may call; momentum attracts callers."""
        if not self.live:
            return None
        sample = [self._rng.choice(self.live) for _ in range(4)]
        sample = [t for t in sample if len(t.callers) < len(self.channels)]
        if not sample:
            return None
        return max(sample, key=lambda t: t.multiple)

    def _new_token(self, channel: Channel, *, register: bool = True) -> Token:
        rng = self._rng
        chain = rng.choices([c for c, _ in CHAINS], weights=[w for _, w in CHAINS])[0]
        word = rng.choice(_WORDS)
        suffix = rng.choice(_SUFFIXES)
        symbol = (word + suffix).upper()[:12]
        fdv = min(5e8, rng.lognormvariate(math.log(250_000), 1.3))
        token = self.make_token(chain, self._address(chain), symbol, fdv)
        token.name = f"{word.title()} {suffix.title()}".strip()
        if rng.random() < channel.hit_rate:
            token.target = self._pump_target()
            token.pump_steps = rng.randint(15, 250)
        else:
            token.target = rng.uniform(0.2, 1.6)
            token.pump_steps = rng.randint(10, 120)
        if register:
            self._register(token)
        return token

    def _register(self, token: Token) -> None:
        if len(self.live) >= self.max_live_tokens:
            self._retire(0)
        self.live.append(token)
        self._by_key[token.key] = token

    def _retire(self, index: int) -> None:
        token = self.live[index]
        self.live[index] = self.live[-1]
        self.live.pop()
        del self._by_key[token.key]

    def _pump_target(self) -> float:
        roll = self._rng.random()
        for share, low, high in _PUMP_BANDS:
            if roll < share:
                return math.exp(self._rng.uniform(math.log(low), math.log(high)))
            roll -= share
        return 2.0

    def _add_call(self, token: Token, channel: Channel, now: float) -> None:
        channel.next_message_id += self._rng.randint(1, 40)
        token.calls.append(
            ChannelCall(
                channel_id=channel.channel_id,
                username=channel.username,
                message_id=channel.next_message_id,
                called_at=max(0.0, round(now - self._rng.uniform(0.0, 5.0), 3)),
                fdv_at_call=round(token.fdv, 2),
            )
        )
        token.callers.add(channel.channel_id)

    def _walk(self, token: Token) -> None:
        """One step of a log-normal walk steered toward the token's fate, then a slow bleed."""
        rng = self._rng
        token.updates += 1
        if not token.peaked and token.multiple < token.target:
            drift = math.log(token.target) / token.pump_steps
            sigma = 0.04
        else:
            token.peaked = True
            drift = -0.01
            sigma = 0.05
        if token.target < 1.0 and rng.random() < 0.002:
            drift = math.log(0.1)
        step = drift + rng.gauss(0.0, sigma)
        token.fdv = min(1e12, max(100.0, token.fdv * math.exp(step)))
        token.volume_h24 = token.volume_h24 * 0.995 + abs(step) * token.fdv
        dead = token.updates > token.lifetime or token.multiple < 0.05
        if dead and token.key in self._by_key:
            self._retire(self.live.index(token))

    def _address(self, chain: str) -> str:
        if chain == "solana":
            return base58(self._rng.getrandbits(256))
        return "0x" + f"{self._rng.getrandbits(160):040x}"


def base58(number: int) -> str:
    """``number`` in Bitcoin/Solana base58 (mixed case: the case is part of the value)."""
    digits: list[str] = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(_BASE58[rem])
    return "".join(reversed(digits)) or "1"
