"""The reports actor: a daily report per subscriber and a best-of-day report, each with a chart.

Schedule (wall time, UTC, on ``ctx.clock``): at ``daily_at`` every active subscriber gets the
tokens they were told about in the 24 hours before that moment, with the peak multiple each
reached; at ``best_at`` every active subscriber gets the day's top ``top_n`` calls across all
users. "Active subscriber": ``users.active AND NOT users.locked`` with a live, unrevoked
subscription at the report moment. A subscriber told about nothing that day gets no daily
report (a report of nothing is noise); with no calls at all there is no best-of-day report.

Where the peak multiple comes from (the larger wins, never below 1):

* the highest multiplier alert the user was sent for the token: ``notifications`` rows of
  kind ``'multiplier'`` (their ``threshold``), and, for the daily report, the multiplier
  actor's live state (``TrackedBy``: the highest threshold sent, persisted in Redis under
  ``mult:<token_key>``), which covers alerts whose history row is still in the outbox;
* the token's recorded peak in ``calls_history`` (``peak_fdv`` from the channel statistics)
  divided by the FDV at which the user was told (``notifications.fdv``), counted only when
  that peak was reached after the user was told.

So a token that went 3.4x shows 3.4x when the peak was recorded, and at least 2x otherwise.
The best-of-day ranks each token by the best multiple any user saw (SQL only; asking the
multiplier actor about every user would be a broadcast of asks).

Charts are rendered on the pykka island (child ``charts``, a ``ThreadIsland`` hosting
:class:`actors.charts.ChartRenderer`): this actor only awaits an ask, so the event loop never
waits on matplotlib. If rendering fails, the report goes out as text.

Idempotency: each report day has a Redis key ``<namespace>:<kind>:<YYYY-MM-DD>`` claimed with
``SET NX`` ("started") before the run and set to "done" after every message was handed to the
sender. A restart after the run finds "done" and sends nothing; a restart during the run
finds "started" and resumes, and the per-chat ``dedup_key`` (``report:<kind>:<day>:<chat>``,
claimed by the sender in Redis) keeps the chats served before the crash from a second copy.
At start the actor catches up on a report whose moment passed less than ``catch_up_s`` ago,
so a process that was down at 20:00 still sends the day's report when it comes back.
Store errors during a run are logged and the run retried ``retry_s`` later (within the
catch-up window) instead of crashing the actor into a restart loop while a server is away.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Literal, NamedTuple

import anyio
import anyio.abc
import asyncpg
import msgspec
from prometheus_client import Counter
from redis.exceptions import RedisError

from actors.charts import MAX_BARS, BestChart, ChartBar, DailyChart
from actors.multipliers import TrackedToken
from actors.sender_lanes import plain_length
from actors.store.handle import StoreHandle, StoreUnavailable
from messages.delivery import MAX_CAPTION, Lane, Outbound
from messages.settings import ReportsSettings
from messages.tracking import TrackedBy
from runtime import (
    ASK_ERRORS,
    Actor,
    ActorStopped,
    MailboxFull,
    MailboxSpec,
    NameNotFound,
)

__all__ = [
    "BEST",
    "DAILY",
    "ReportKind",
    "ReportOutcome",
    "ReportStats",
    "Reports",
    "ReportsStatus",
    "RunReport",
    "TokenPeak",
    "best_caption",
    "daily_caption",
    "format_multiple",
    "latest_due",
    "next_due",
    "report_day",
]

ReportKind = Literal["daily", "best"]
DAILY: Final = "daily"
BEST: Final = "best"
DAY_S: Final = 86_400.0
DAY_KEY_TTL_S: Final = 3 * 86_400
MAX_NAP_S: Final = 60.0
"""The scheduler re-reads the wall clock at least this often (it may be set while we sleep)."""
_PNG: Final = b"\x89PNG\r\n\x1a\n"
_STORE_ERRORS = (
    StoreUnavailable,
    RedisError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)

REPORTS_SENT = Counter("callwatch_reports_sent", "Reports handed to the sender", ["kind"])
CHART_FAILURES = Counter(
    "callwatch_reports_chart_failures", "Reports sent as text because the chart failed"
)


class RunReport(msgspec.Struct, frozen=True, kw_only=True):
    """Run one report for the moment ``at`` (Unix seconds; its UTC date is the report day).

    Told by the scheduler; an admin or a test may ask it too. Idempotent per report day.
    """

    kind: ReportKind
    at: float


class ReportOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to an asked :class:`RunReport`."""

    kind: str
    day: str
    status: Literal["sent", "already_sent", "deferred"]
    recipients: int = 0
    """Messages handed to the sender (subscribers with nothing to report get none)."""
    chart_failures: int = 0


class ReportStats(msgspec.Struct, frozen=True):
    """Ask the reports actor how it is doing; answered with :class:`ReportsStatus`."""


class ReportsStatus(msgspec.Struct, frozen=True, kw_only=True):
    runs: int
    sent: int
    already_sent: int
    deferred: int
    chart_failures: int
    last: dict[str, str]
    """Report kind -> the last day it completed."""
    next_due: dict[str, float]
    """Report kind -> the wall time of its next scheduled run."""


class TokenPeak(NamedTuple):
    token_key: str
    symbol: str
    peak: float
    users: int = 1


class _Deferred(Exception):
    """A run could not finish now (a store or the sender is away); it is retried later."""


# --- schedule arithmetic (pure) --------------------------------------------------------------


def _hhmm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def latest_due(now: float, at: str) -> float:
    """The most recent moment at ``at`` ("HH:MM" UTC) that is not after ``now``."""
    midnight = math.floor(now / DAY_S) * DAY_S
    due = midnight + _hhmm(at)
    return due if due <= now else due - DAY_S


def next_due(now: float, at: str) -> float:
    """The first moment at ``at`` ("HH:MM" UTC) strictly after ``now``."""
    return latest_due(now, at) + DAY_S


def report_day(at: float) -> str:
    """The report day of a moment: its UTC date, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


# --- captions (pure) -------------------------------------------------------------------------


def format_multiple(multiple: float) -> str:
    """``<2x`` below 2, one decimal below 10 (``3.4x``, ``5x``), whole numbers above."""
    if not math.isfinite(multiple) or multiple < 2:
        return "<2x"
    if multiple < 10:
        return f"{multiple:.1f}".rstrip("0").rstrip(".") + "x"
    return f"{multiple:,.0f}x"


def token_label(token_key: str, symbol: str) -> str:
    """The symbol when known, else the address shortened (``7xKX..9fQp``)."""
    symbol = "".join(c for c in symbol if c.isprintable()).strip()
    if symbol:
        return symbol[:24]
    address = token_key.split(":", 1)[-1]
    return address if len(address) <= 12 else f"{address[:4]}..{address[-4:]}"


def _fit(head: str, lines: Sequence[str], budget: int = MAX_CAPTION) -> str:
    """``head`` plus as many lines as fit in ``budget`` plain characters, then "... and N more".

    Every piece is whole HTML (no tag or entity spans two lines), so plain lengths add up.
    """
    used = plain_length(head)
    sizes = [plain_length(line) + 1 for line in lines]
    for i in range(len(lines)):
        rest = len(lines) - i - 1
        tail = len(f"\n... and {rest} more") if rest else 0
        if used + sizes[i] + tail > budget:
            return head + "".join("\n" + line for line in lines[:i]) + f"\n... and {rest + 1} more"
        used += sizes[i]
    return head + "".join("\n" + line for line in lines)


def daily_caption(day: str, tokens: Sequence[TokenPeak]) -> str:
    """HTML caption of a daily report, at most MAX_CAPTION characters as Telegram counts."""
    hits = sum(1 for t in tokens if t.peak >= 2)
    noun = "token" if len(tokens) == 1 else "tokens"
    head = f"<b>Your calls today</b> · {day} (UTC)\n{len(tokens)} {noun}, {hits} reached 2x or more"
    lines = [
        f"• {html.escape(token_label(t.token_key, t.symbol))} — "
        f"{html.escape(format_multiple(t.peak))}"
        for t in tokens
    ]
    return _fit(head, lines)


def best_caption(day: str, tokens: Sequence[TokenPeak]) -> str:
    """HTML caption of the best-of-day report, at most MAX_CAPTION characters."""
    head = f"<b>Best calls of the day</b> · {day} (UTC)"
    lines = [
        f"{i}. {html.escape(token_label(t.token_key, t.symbol))} — "
        f"<b>{html.escape(format_multiple(t.peak))}</b>"
        f" · {t.users} {'user' if t.users == 1 else 'users'}"
        for i, t in enumerate(tokens, 1)
    ]
    return _fit(head, lines)


def _bars(tokens: Iterable[TokenPeak], *, with_users: bool = False) -> tuple[ChartBar, ...]:
    return tuple(
        ChartBar(
            token_label(t.token_key, t.symbol),
            t.peak,
            f"({t.users} {'user' if t.users == 1 else 'users'})" if with_users else "",
        )
        for t in tokens
    )


# --- SQL -------------------------------------------------------------------------------------


def _subscribed(moment: str) -> str:
    """Active, unlocked users (alias ``u``) with a live subscription at ``moment``."""
    return f"""
    u.active AND NOT u.locked AND EXISTS (
        SELECT 1 FROM subscriptions s
        WHERE s.chat_id = u.chat_id AND s.revoked_at IS NULL
          AND s.starts_at <= {moment} AND s.expires_at > {moment})
"""  # noqa: S608 - a parameter placeholder of ours, not a value


_PEAK = """
    GREATEST(
        1.0,
        (SELECT max(m.threshold) FROM notifications m
          WHERE m.chat_id = c.chat_id AND m.token_key = c.token_key AND m.kind = 'multiplier'),
        (SELECT max(h.peak_fdv) FROM calls_history h
          WHERE h.token_key = c.token_key AND h.peak_at >= c.sent_at) / NULLIF(c.fdv, 0)
    )::float8
"""


def _symbol_of(column: str) -> str:
    return f"""
    (SELECT h.symbol FROM calls_history h
      WHERE h.token_key = {column} AND h.symbol IS NOT NULL
      ORDER BY h.called_at DESC LIMIT 1)
"""  # noqa: S608 - a column name of ours, not a value


DAILY_SQL: Final = f"""
SELECT c.chat_id, c.token_key, {_PEAK} AS peak, {_symbol_of("c.token_key")} AS symbol
FROM notifications c
JOIN users u ON u.chat_id = c.chat_id
WHERE c.kind = 'call' AND c.sent_at > $1 AND c.sent_at <= $2 AND {_subscribed("$2")}
ORDER BY c.chat_id, peak DESC, c.sent_at, c.token_key
"""  # noqa: S608 - constant fragments only; every value is a parameter
"""(chat_id, token_key, peak, symbol) for every active subscriber told about a token in the
window ($1, $2]; $2 is the report moment."""

BEST_SQL: Final = f"""
WITH peaks AS (
    SELECT c.token_key, {_PEAK} AS peak
    FROM notifications c
    WHERE c.kind = 'call' AND c.sent_at > $1 AND c.sent_at <= $2
)
SELECT p.token_key, max(p.peak) AS peak, count(*) AS users,
       {_symbol_of("p.token_key")} AS symbol
FROM peaks p
GROUP BY p.token_key
ORDER BY peak DESC, users DESC, p.token_key
LIMIT $3
"""  # noqa: S608 - constant fragments only; every value is a parameter
"""The top $3 tokens told to anyone in ($1, $2], by the best multiple any user saw."""

SUBSCRIBERS_SQL: Final = f"""
SELECT u.chat_id FROM users u WHERE {_subscribed("$1")}
ORDER BY u.chat_id
"""  # noqa: S608 - constant fragments only; every value is a parameter


# --- the actor -------------------------------------------------------------------------------


class Reports(Actor):
    """Schedules and sends the daily and best-of-day reports (see the module docstring)."""

    mailbox = MailboxSpec(capacity=64)

    def __init__(
        self,
        store: StoreHandle,
        settings: ReportsSettings | None = None,
        *,
        charts: str = "charts",
        sender: str = "sender",
        multipliers: str | None = "multipliers",
        catch_up_s: float = 4 * 3600.0,
        retry_s: float = 60.0,
        render_timeout: float = 120.0,
        namespace: str = "callwatch:reports",
    ) -> None:
        self.store = store
        self.settings = settings or ReportsSettings()
        self.charts_name = charts
        self.sender_name = sender
        self.multipliers_name = multipliers
        self.catch_up_s = catch_up_s
        self.retry_s = retry_s
        self.render_timeout = render_timeout
        self.namespace = namespace
        self.times: dict[ReportKind, str] = {
            DAILY: self.settings.daily_at,
            BEST: self.settings.best_at,
        }
        self._next: dict[str, float] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.counts = dict.fromkeys(("runs", "sent", "already_sent", "deferred", "charts"), 0)
        self.last: dict[str, str] = {}

    async def started(self) -> None:
        now = self.ctx.clock.wall()
        for kind, at in self.times.items():
            due = latest_due(now, at)
            if now - due <= self.catch_up_s:
                self.ctx.ref.tell_nowait(RunReport(kind=kind, at=due))
            self._next[kind] = next_due(now, at)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._schedule)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, RunReport):
            return await self._run(message)
        if isinstance(message, ReportStats):
            return self.status()
        self.ctx.log.warning("reports.unexpected_message", type=type(message).__name__)
        return None

    def status(self) -> ReportsStatus:
        c = self.counts
        return ReportsStatus(
            runs=c["runs"],
            sent=c["sent"],
            already_sent=c["already_sent"],
            deferred=c["deferred"],
            chart_failures=c["charts"],
            last=dict(self.last),
            next_due=dict(self._next),
        )

    # --- scheduling ----------------------------------------------------------------------

    async def _schedule(self) -> None:
        clock = self.ctx.clock
        while True:
            due = min(self._next.values())
            while (left := due - clock.wall()) > 0:
                await clock.sleep(min(left, MAX_NAP_S))
            for kind, at in self.times.items():
                now = clock.wall()
                if self._next[kind] > now:
                    continue
                # After a long suspend or a wall-clock jump, only the latest moment counts,
                # and only while it is recent: no burst of stale reports for past days.
                self._next[kind] = next_due(now, at)
                moment = latest_due(now, at)
                if now - moment <= self.catch_up_s:
                    await self.ctx.ref.tell(RunReport(kind=kind, at=moment))

    async def _retry_later(self, message: RunReport) -> None:
        await self.ctx.clock.sleep(self.retry_s)
        await self.ctx.ref.tell(message)

    # --- a run ---------------------------------------------------------------------------

    async def _run(self, message: RunReport) -> ReportOutcome:
        kind, at = message.kind, message.at
        day = report_day(at)
        log = self.ctx.log.bind(kind=kind, day=day)
        key = f"{self.namespace}:{kind}:{day}"
        try:
            redis = self.store.redis()
            if not await redis.set(key, b"started", nx=True, ex=DAY_KEY_TTL_S):
                if await redis.get(key) == b"done":
                    self.counts["already_sent"] += 1
                    log.info("reports.already_sent")
                    return ReportOutcome(kind=kind, day=day, status="already_sent")
                log.warning("reports.resuming", reason="an earlier run did not finish")
            self.counts["runs"] += 1
            if kind == DAILY:
                outcome = await self._daily(at, day)
            else:
                outcome = await self._best(at, day)
            await self.store.redis().set(key, b"done", ex=DAY_KEY_TTL_S)
        except (_Deferred, *_STORE_ERRORS) as exc:
            self.counts["deferred"] += 1
            retry = self.ctx.clock.wall() + self.retry_s - at <= self.catch_up_s
            log.warning("reports.deferred", error=f"{type(exc).__name__}: {exc}", will_retry=retry)
            if retry and self._tg is not None:
                self._tg.start_soon(self._retry_later, message)
            return ReportOutcome(kind=kind, day=day, status="deferred")
        self.last[kind] = day
        log.info(
            "reports.sent",
            recipients=outcome.recipients,
            chart_failures=outcome.chart_failures,
        )
        return outcome

    async def _daily(self, at: float, day: str) -> ReportOutcome:
        rows = await self.store.pool().fetch(DAILY_SQL, _utc(at - DAY_S), _utc(at))
        by_chat: dict[int, list[TokenPeak]] = {}
        for row in rows:
            by_chat.setdefault(row["chat_id"], []).append(
                TokenPeak(row["token_key"], row["symbol"] or "", float(row["peak"]))
            )
        sent = failures = 0
        tracked_ok = self.multipliers_name is not None
        for chat_id, found in by_chat.items():
            tokens = found
            if tracked_ok:
                tokens, tracked_ok = await self._with_tracked(chat_id, found)
            tokens.sort(key=lambda t: -t.peak)
            chart = DailyChart(
                title=f"Your calls today · {day} (UTC)", bars=_bars(tokens[:MAX_BARS])
            )
            png = await self._render(chart)
            failures += png is None
            await self._send(
                chat_id, daily_caption(day, tokens), png, f"report:daily:{day}:{chat_id}"
            )
            sent += 1
        self._count(DAILY, sent, failures)
        return ReportOutcome(
            kind=DAILY, day=day, status="sent", recipients=sent, chart_failures=failures
        )

    async def _best(self, at: float, day: str) -> ReportOutcome:
        pool = self.store.pool()
        rows = await pool.fetch(
            BEST_SQL, _utc(at - DAY_S), _utc(at), min(self.settings.top_n, MAX_BARS)
        )
        if not rows:
            return ReportOutcome(kind=BEST, day=day, status="sent")
        tokens = [
            TokenPeak(r["token_key"], r["symbol"] or "", float(r["peak"]), int(r["users"]))
            for r in rows
        ]
        chats = [r["chat_id"] for r in await pool.fetch(SUBSCRIBERS_SQL, _utc(at))]
        if not chats:
            return ReportOutcome(kind=BEST, day=day, status="sent")
        chart = BestChart(
            title=f"Best calls of the day · {day} (UTC)", bars=_bars(tokens, with_users=True)
        )
        png = await self._render(chart)
        caption = best_caption(day, tokens)
        for chat_id in chats:
            await self._send(chat_id, caption, png, f"report:best:{day}:{chat_id}")
        failures = int(png is None)
        self._count(BEST, len(chats), failures)
        return ReportOutcome(
            kind=BEST, day=day, status="sent", recipients=len(chats), chart_failures=failures
        )

    def _count(self, kind: str, sent: int, chart_failures: int) -> None:
        self.counts["sent"] += sent
        self.counts["charts"] += chart_failures
        REPORTS_SENT.labels(kind).inc(sent)
        CHART_FAILURES.inc(chart_failures)

    async def _with_tracked(
        self, chat_id: int, tokens: list[TokenPeak]
    ) -> tuple[list[TokenPeak], bool]:
        """Raise peaks to the multiplier actor's highest threshold sent; (tokens, still usable)."""
        assert self.multipliers_name is not None
        try:
            ref = self.ctx.lookup(self.multipliers_name)
            tracked = await ref.ask(TrackedBy(chat_id), timeout=5.0)
        except ASK_ERRORS as exc:
            self.ctx.log.info("reports.multipliers_unavailable", error=type(exc).__name__)
            return tokens, False
        highest: dict[str, tuple[float, str]] = {}
        for line in tracked if isinstance(tracked, list) else ():
            if isinstance(line, TrackedToken) and line.highest_threshold is not None:
                highest[line.token_key] = (float(line.highest_threshold), line.symbol)
        out: list[TokenPeak] = []
        for t in tokens:
            level, symbol = highest.get(t.token_key, (1.0, ""))
            out.append(t._replace(peak=max(t.peak, level), symbol=t.symbol or symbol))
        return out, True

    async def _render(self, chart: DailyChart | BestChart) -> bytes | None:
        """PNG bytes from the island; None (and a log line) when it cannot render now."""
        try:
            png = await self.ctx.lookup(self.charts_name).ask(chart, timeout=self.render_timeout)
        except ASK_ERRORS as exc:
            self.ctx.log.warning("reports.chart_failed", error=f"{type(exc).__name__}: {exc}")
            return None
        if not isinstance(png, bytes) or not png.startswith(_PNG):
            self.ctx.log.warning("reports.chart_failed", error="the renderer returned no PNG")
            return None
        return png

    async def _send(self, chat_id: int, caption: str, png: bytes | None, dedup_key: str) -> None:
        try:
            sender = self.ctx.lookup(self.sender_name)
        except NameNotFound as exc:
            raise _Deferred(f"no actor named {self.sender_name!r}") from exc
        out = Outbound(
            chat_id=chat_id,
            text=caption,
            photo=png,
            lane=Lane.BULK,
            kind="report",
            dedup_key=dedup_key,
        )
        try:
            await sender.tell(out)
        except (ActorStopped, MailboxFull) as exc:
            raise _Deferred(str(exc)) from exc
