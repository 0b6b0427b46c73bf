"""What the bot says: every reply rendered as Telegram HTML from plain reply data.

Pure functions, no I/O. Everything that came from outside (usernames, channel names,
preset descriptions, admin text, validation messages that quote what the user typed) is
escaped with `html.escape`; every text stays under Telegram's 4096 characters.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from actors.texts import format_usd
from messages.billing import OrderCreated, PlanList, SubscriptionInfo
from messages.filters import FIELD_LABELS
from messages.users import (
    LeaderboardView,
    PresetList,
    SettingRow,
    TrackedList,
    UserStatus,
)

__all__ = [
    "ADMIN_ONLY",
    "COMMANDS",
    "FIELD_HINTS",
    "LOCKED",
    "NOT_UNDERSTOOD",
    "THROTTLED",
    "admin_text",
    "clip",
    "help_text",
    "leaderboard_text",
    "order_text",
    "plans_text",
    "presets_text",
    "prompt_text",
    "settings_text",
    "start_text",
    "status_text",
    "tracked_text",
    "unknown_command",
]

LIMIT: Final = 4096

COMMANDS: Final[tuple[tuple[str, str], ...]] = (
    ("start", "Register and see what callwatch does"),
    ("help", "All commands"),
    ("settings", "View and change your filters"),
    ("presets", "Apply a ready-made set of filters"),
    ("pause", "Stop alerts for now"),
    ("resume", "Get alerts again"),
    ("status", "Your subscription, filters and tracked tokens"),
    ("leaderboard", "Top signal channels"),
    ("tracked", "Tokens you were told about recently"),
    ("subscribe", "Plans and payment"),
    ("redeem", "Redeem a coupon: /redeem CODE"),
)
"""Also sent with setMyCommands, so Telegram's command menu matches /help."""

FIELD_HINTS: Final[dict[str, str]] = {
    "min_win_rate": "a percentage, e.g. 45 or 45% (0 = any)",
    "min_avg_gain": "a multiple, e.g. 2 or 2.5x (0 = any)",
    "fdv_min": "a dollar amount, e.g. 200k or 1.5m (0 = none)",
    "fdv_max": "a dollar amount, e.g. 10m (none = no maximum)",
    "chains": "chain names, e.g. solana, base (any = every chain)",
    "min_channels": "a whole number, e.g. 2",
    "lookback": "a duration, e.g. 30m, 1h or 2h30m",
    "paused": "yes or no",
}

THROTTLED: Final = (
    "You are sending commands faster than I can answer. "
    "I will ignore them for a moment; please slow down."
)
LOCKED: Final = "Your account is locked. Please contact support."
NOT_UNDERSTOOD: Final = "I did not understand that. Send /help to see what I can do."
ADMIN_ONLY: Final = "Sorry, that command is for the callwatch admins only."
REDEEM_USAGE: Final = "Send the coupon code with the command, e.g. <code>/redeem SUMMER24</code>."
EXPIRED_BUTTON: Final = "That button is no longer valid. Send /settings to start again."
NOTHING_TO_CANCEL: Final = "Nothing to cancel."


def esc(value: object) -> str:
    return html.escape(str(value), quote=False)


def clip(text: str, limit: int = LIMIT) -> str:
    """Cut a rendered text to ``limit`` characters at a line break (tags are per line)."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit - 20)
    return text[: cut if cut > 0 else limit - 20] + "\n…"


def _when(ts: float | datetime | None) -> str:
    if ts is None:
        return "-"
    moment = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _ago(ts: float, now: float) -> str:
    seconds = max(0, int(now - ts))
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def help_text() -> str:
    lines = ["<b>callwatch</b> tells you when signal channels call tokens that pass your filters,"]
    lines.append("and again when those tokens reach 2x, 5x, 10x and more.\n")
    lines += [f"/{name} - {esc(description)}" for name, description in COMMANDS]
    return "\n".join(lines)


def start_text(status: UserStatus) -> str:
    if status.locked:
        return LOCKED
    lines = [esc(status.message or "Welcome back!")]
    if status.created:
        lines.append("")
        lines.append(
            "callwatch watches crypto signal channels. When a token is called by channels "
            "with a good track record and passes your filters, you get a message, and again "
            "when it multiplies."
        )
    lines.append("")
    lines.append("<b>Next steps</b>")
    lines.append("1. /settings - set your filters (or /presets for a ready-made set)")
    if not status.subscribed:
        lines.append("2. /subscribe - choose a plan (or /redeem a coupon)")
    else:
        lines.append(f"2. You are subscribed until {esc(_when(status.subscription_expires_at))}")
    lines.append("3. /help - every command")
    return "\n".join(lines)


def settings_text(rows: Sequence[SettingRow], note: str | None = None) -> str:
    lines = []
    if note:
        lines += [f"<i>{esc(note)}</i>", ""]
    lines.append("<b>Your filters</b>")
    lines += [f"{esc(r.label)}: <b>{esc(r.value)}</b>" for r in rows]
    lines += ["", "Press a button to change a filter."]
    return clip("\n".join(lines))


def prompt_text(field: str, current: str | None, problem: str | None = None) -> str:
    label = FIELD_LABELS.get(field, field)
    lines = []
    if problem:
        lines += [f"<b>{esc(problem)}</b>", ""]
    lines.append(f"Send the new value for <b>{esc(label)}</b>")
    if current is not None:
        lines.append(f"(now: {esc(current)})")
    lines.append(f"Format: {esc(FIELD_HINTS.get(field, 'text'))}.")
    lines.append("Or press Cancel.")
    return "\n".join(lines)


def status_text(status: UserStatus, info: SubscriptionInfo | None, tracked: int | None) -> str:
    lines = ["<b>Your callwatch status</b>"]
    if status.locked:
        return LOCKED
    if info is not None and info.active:
        until = "for life" if info.lifetime else f"until {_when(info.expires_at)}"
        plan = f" ({esc(info.plan)})" if info.plan else ""
        lines.append(f"Subscription: active{plan} {esc(until)}")
    elif status.subscribed:
        lines.append(f"Subscription: active until {esc(_when(status.subscription_expires_at))}")
    else:
        lines.append("Subscription: none - /subscribe to get alerts")
    lines.append("Alerts: " + ("paused (/resume)" if status.paused else "on"))
    if not status.reachable:
        lines.append("Delivery: the bot was blocked; send /start to get messages again")
    if tracked is not None:
        lines.append(f"Tracked tokens: {tracked}")
    lines += ["", "<b>Filters</b>"]
    lines += [f"{esc(r.label)}: {esc(r.value)}" for r in status.rows]
    if status.message:
        lines += ["", esc(status.message)]
    return clip("\n".join(lines))


def tracked_text(tracked: TrackedList, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not tracked.tokens:
        return "You have not been told about any token recently."
    lines = ["<b>Tokens you were told about</b> (newest first)"]
    for t in tracked.tokens:
        name = esc(t.symbol or t.token_key.partition(":")[2][:12])
        lines.append(
            f"• <b>{name}</b> on {esc(t.chain)} at {esc(format_usd(t.fdv_at_notify))} FDV, "
            f"{esc(_ago(t.notified_at, now))}"
        )
    return clip("\n".join(lines))


def leaderboard_text(view: LeaderboardView) -> str:
    if not view.entries:
        return "No channel has enough resolved calls for a leaderboard yet. Check back later."
    days = f"{view.window_days:g}"
    lines = [f"<b>Top channels</b> (last {days} days)"]
    for e in view.entries:
        name = esc(e.username or f"channel {e.channel_id}")
        lines.append(
            f"{e.rank}. {name}: win rate {e.win_rate:.0f}%, avg {e.avg_gain:.1f}x, "
            f"{e.resolved} calls"
        )
    if view.computed_at is not None:
        lines.append(f"\n<i>As of {esc(_when(view.computed_at))}</i>")
    return clip("\n".join(lines))


def presets_text(presets: PresetList) -> str:
    if not presets.presets:
        return "There are no presets yet."
    lines = ["<b>Presets</b> - press one to apply it (your pause setting is kept)"]
    for p in presets.presets:
        lines.append(f"\n<b>{esc(p.name)}</b>: {esc(p.description)}")
    return clip("\n".join(lines))


def plans_text(plans: PlanList) -> str:
    if not plans.methods:
        return "Payments are switched off right now. Please try again later."
    lines = ["<b>Plans</b>"]
    for q in plans.plans:
        days = "lifetime" if q.days is None else f"{q.days} days"
        lines.append(f"• <b>{esc(q.plan.value.title())}</b> ({days}): {esc(q.sol)} SOL or ${q.usd}")
    lines.append("\nChoose a plan and how to pay. Have a coupon? /redeem CODE first.")
    return "\n".join(lines)


def order_text(order: OrderCreated) -> str:
    lines = [f"<b>Order for the {esc(order.plan.value)} plan</b>"]
    if order.discount:
        lines.append(f"Coupon {esc(order.coupon or '')}: {esc(order.discount)}")
    if order.method == "sol":
        lines.append(f"Amount: <b>{esc(order.amount_sol)} SOL</b>")
        lines.append("Pay with a Solana Pay wallet using this link:")
        lines.append(f"<code>{esc(order.pay_url)}</code>")
    else:
        lines.append(f"Amount: <b>${esc(order.amount_usd)}</b>")
        lines.append(f'Pay here: <a href="{html.escape(order.pay_url)}">invoice</a>')
    lines.append(f"The offer stands until {esc(_when(order.expires_at))}.")
    lines.append("Your subscription starts as soon as the payment is confirmed.")
    return "\n".join(lines)


def unknown_command(name: str) -> str:
    return f"I do not know the command /{esc(name[:32])}. Send /help to see what I can do."


def admin_text(text: str) -> str:
    """An admin reply as preformatted text."""
    return "<pre>" + esc(clip(text, 3500)) + "</pre>"
