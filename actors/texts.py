"""Notification texts (Telegram HTML): what a user reads when a token passes their filters.

Everything that came from the feed is escaped with `html.escape`; links are built from
percent-quoted path parts. A text never exceeds Telegram's 4096 characters: channel lines
beyond what fits are summarised as "and N more".
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote

from messages.filters import ChannelStats
from messages.wire import TokenEvent

__all__ = [
    "MAX_CHANNEL_LINES",
    "TELEGRAM_LIMIT",
    "chain_label",
    "dexscreener_url",
    "format_usd",
    "notification_text",
]

TELEGRAM_LIMIT: Final = 4096
MAX_CHANNEL_LINES: Final = 12

_CHAIN_LABELS: Final[dict[str, str]] = {
    "bsc": "BSC",
    "hyperevm": "HyperEVM",
    "zksync": "zkSync",
    "ton": "TON",
    "sui": "Sui",
}


def chain_label(chain: str) -> str:
    """How a chain id is shown ("solana" -> "Solana", "bsc" -> "BSC")."""
    return _CHAIN_LABELS.get(chain, chain[:1].upper() + chain[1:])


def format_usd(value: float) -> str:
    """Compact dollars: $950, $12.3K, $1.25M, $3.4B."""
    if not math.isfinite(value) or value < 0:
        return "n/a"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= size:
            scaled = value / size
            digits = 2 if scaled < 10 else 1 if scaled < 100 else 0
            return f"${scaled:.{digits}f}{suffix}"
    return f"${value:,.0f}"


def dexscreener_url(chain: str, pair_or_token: str) -> str:
    return f"https://dexscreener.com/{quote(chain, safe='')}/{quote(pair_or_token, safe='')}"


def _channel_line(username: str, stats: ChannelStats | None) -> str:
    name = html.escape(username.lstrip("@"))
    who = f"@{name}" if name else "(unnamed)"
    if stats is None or not stats.rated:
        return f"• {who}: unrated"
    return (
        f"• {who}: win rate {stats.win_rate:.0f} %, "
        f"avg {stats.avg_gain:.1f}x ({stats.resolved} calls)"
    )


def notification_text(
    event: TokenEvent,
    stats: Mapping[int, ChannelStats],
    line_cache: dict[tuple[int, str], str] | None = None,
) -> str:
    """The alert for ``event``: token, chain, FDV, calling channels with their record, links.

    Channels are listed best first (rated by win rate, then unrated), most recent call of
    each channel once. ``line_cache`` may keep rendered channel lines between calls; it must be
    dropped when ``stats`` changes.
    """
    latest: dict[int, str] = {}
    for call in sorted(event.calls, key=lambda c: c.called_at):
        latest[call.channel_id] = call.username
    ordered = sorted(
        latest.items(),
        key=lambda item: _rank(stats.get(item[0])),
    )
    symbol = html.escape(event.symbol)
    name = html.escape(event.name)
    chain = html.escape(chain_label(event.chain_id))
    head = [
        f"🔔 <b>{symbol}</b>" + (f" ({name})" if name and name != symbol else "") + f" on {chain}",
        f"FDV: <b>{format_usd(event.fdv)}</b>",
        f"Called by {len(ordered)} channel{'s' if len(ordered) != 1 else ''}:",
    ]
    pair = html.escape(dexscreener_url(event.chain_id, event.pair_address), quote=True)
    tail = [
        f"<code>{html.escape(event.token_address)}</code>",
        f'<a href="{pair}">DexScreener</a>',
    ]
    budget = TELEGRAM_LIMIT - sum(len(x) + 1 for x in head + tail) - 40
    lines: list[str] = []
    for shown, (channel_id, username) in enumerate(ordered):
        line = line_cache.get((channel_id, username)) if line_cache is not None else None
        if line is None:
            line = _channel_line(username, stats.get(channel_id))
            if line_cache is not None:
                line_cache[(channel_id, username)] = line
        if shown >= MAX_CHANNEL_LINES or len(line) + 1 > budget:
            lines.append(f"… and {len(ordered) - shown} more")
            break
        budget -= len(line) + 1
        lines.append(line)
    text = "\n".join([*head, *lines, "", *tail])
    return text if len(text) <= TELEGRAM_LIMIT else text[: TELEGRAM_LIMIT - 1] + "…"


def _rank(stats: ChannelStats | None) -> tuple[int, float, float]:
    if stats is None or not stats.rated:
        return (1, 0.0, 0.0)
    return (0, -stats.win_rate, -stats.avg_gain)
