"""Texts of multiplier alerts, as Telegram HTML.

Everything that comes from outside (symbol, chain, address) is escaped here, once, so a
token named ``<b>`` or ``&amp;`` shows as typed and can never break the parse mode or
smuggle a link. Pure functions: the multiplier actor builds, the sender only delivers.
"""

from __future__ import annotations

import math
from html import escape
from urllib.parse import quote

__all__ = [
    "DEXSCREENER",
    "dexscreener_url",
    "format_multiple",
    "format_usd",
    "multiplier_alert",
    "split_token_key",
]

DEXSCREENER = "https://dexscreener.com"
_SYMBOL_MAX = 32


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())


def split_token_key(token_key: str) -> tuple[str, str]:
    """``chain:address`` -> (chain, address); a key without a chain gives ("", key)."""
    chain, sep, address = token_key.partition(":")
    return (chain, address) if sep else ("", token_key)


def dexscreener_url(chain: str, address: str) -> str:
    """The token's DexScreener page (path parts percent-encoded, not yet HTML-escaped)."""
    if not chain:
        return f"{DEXSCREENER}/search?q={quote(address, safe='')}"
    return f"{DEXSCREENER}/{quote(chain, safe='')}/{quote(address, safe='')}"


def format_usd(value: float) -> str:
    """A dollar amount as people read FDVs: $950, $12.3K, $4.56M, $1.2B."""
    if not math.isfinite(value):
        return "n/a"
    sign = "-" if value < 0 else ""
    value = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if value >= limit:
            scaled = value / limit
            digits = 2 if scaled < 10 else 1 if scaled < 100 else 0
            return f"{sign}${scaled:.{digits}f}{suffix}"
    return f"{sign}${value:.0f}"


def format_multiple(value: float) -> str:
    """12.3x, 2.05x, 150x."""
    if not math.isfinite(value):
        return "n/a"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f}x"


def multiplier_alert(
    *,
    token_key: str,
    symbol: str,
    threshold: float,
    multiple: float,
    fdv_then: float,
    fdv_now: float,
) -> str:
    """The one message for a (user, token) crossing, naming the highest new threshold."""
    chain, address = split_token_key(token_key)
    shown = _printable(symbol).strip()
    if not shown:
        short = _printable(address).strip()
        shown = (short[:6] + ("…" if len(short) > 6 else "")) or "?"
    if len(shown) > _SYMBOL_MAX:
        shown = shown[: _SYMBOL_MAX - 1] + "…"
    where = f" on {escape(chain)}" if chain else ""
    link = escape(dexscreener_url(chain, address), quote=True)
    return (
        f"🚀 <b>{escape(shown)}</b> hit <b>{threshold:g}x</b>{where}\n"
        f"Now {format_multiple(multiple)}: FDV {format_usd(fdv_then)} → {format_usd(fdv_now)}\n"
        f'<a href="{link}">DexScreener</a>'
    )
