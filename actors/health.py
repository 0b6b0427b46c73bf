"""The health actor: notices when a part stays broken and tells the admins, once.

Every ``sample_s`` (on ``ctx.clock``) it takes one look at the system: Redis and
PostgreSQL reachable, the feed connected and delivering, Telegram answering, the outbox
keeping up, every mailbox against its capacity, every supervisor's restart intensity
against its limit, supervisors that gave up, and the process's memory against its limit.
Each look is a verdict per rule; :mod:`actors.health_rules` decides when a verdict has held
long enough to alert, when to repeat (at most every ``repeat_s``) and when it recovered.

Alerts go to every admin chat through the sender's interactive lane (so they are not stuck
behind a broadcast), one message per alert, repeat and recovery. When Telegram itself is
the broken part they go to the log (``health.alert``) and the status output only; alerts
held back that way are sent once Telegram answers again, and a recovery is sent only for an
alert the admins actually got. Every alert and recovery is also a Prometheus metric and part
of :meth:`HealthBoard.view`, which the control server shows under ``health``.

Probes are ``name -> async () -> (ok, detail)`` callables; defaults are built from the
registry (``ingest``, ``sender``, ``outbox``) and the store handle, and any of them can be
replaced or switched off (``None``) through the ``probes`` argument.
"""

from __future__ import annotations

import contextlib
import html
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import psutil
from prometheus_client import Counter, Gauge

from actors.health_rules import (
    Alert,
    Event,
    Phase,
    Probe,
    Recovery,
    Rule,
    RuleEngine,
    Unknown,
    gather_samples,
)
from actors.store.handle import StoreHandle
from actors.store.outbox import OutboxStats, OutboxStatus
from messages.delivery import Lane, Outbound, SenderStats, SenderStatus
from messages.ingest import IngestReport, IngestStatus
from messages.settings import HealthSettings
from messages.status import ActorStatus
from runtime import (
    Actor,
    ActorFailed,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    MailboxSpec,
    NameNotFound,
    Ref,
)
from runtime.timers import every

__all__ = [
    "Health",
    "HealthBoard",
    "HealthQuery",
    "SampleNow",
    "mailbox_findings",
    "memory_limit_bytes",
    "supervisor_findings",
    "telegram_verdict",
]

ALERTS = Counter("callwatch_health_alerts", "Health alerts raised (repeats count)", ["rule"])
RECOVERIES = Counter("callwatch_health_recoveries", "Health problems that cleared", ["rule"])
FIRING = Gauge("callwatch_health_firing", "1 while a health rule is firing", ["rule"])

SUPERVISOR_KINDS = frozenset({"supervisor", "dynamic_supervisor"})
DOWN_STATES = frozenset({"crashed", "stopped", "restarting", "starting", "idle"})
_ASK_ERRORS = (AskTimeout, ActorStopped, ActorFailed, MailboxFull)
_NO_LIMIT = 1 << 60
"""cgroup v1 reports "no limit" as a huge number."""


class HealthQuery(msgspec.Struct, frozen=True):
    """Ask the health actor for its view (the same dict :meth:`HealthBoard.view` gives)."""


class SampleNow(msgspec.Struct, frozen=True):
    """Ask the health actor to take a sample now; answered with the view afterwards."""


class HealthBoard:
    """The latest rule states: written by the health actor, read by anyone (the control server).

    Pass one board in the health actor's args and its :meth:`view` as the control server's
    ``health=``; the board outlives the actor's restarts.
    """

    def __init__(self) -> None:
        self._rules: dict[str, dict[str, Any]] = {}
        self.samples = 0
        """Samples taken so far (tests wait on it)."""
        self.sampled_at: float | None = None

    def publish(self, rules: dict[str, dict[str, Any]], wall: float) -> None:
        self._rules = rules
        self.sampled_at = wall
        self.samples += 1

    def view(self) -> dict[str, Any]:
        """``rule -> {state, since, detail, ...}``; times are Unix seconds."""
        return {name: dict(value) for name, value in self._rules.items()}

    def firing(self) -> list[str]:
        return [n for n, v in self._rules.items() if v.get("state") == Phase.FIRING.value]


# --- findings from the status snapshot (pure) -----------------------------------------------


def mailbox_findings(root: ActorStatus, ratio: float) -> dict[str, str]:
    """Failing ``mailbox:<path>`` rules with their detail; a dynamic supervisor's
    descendants are one rule, ``mailbox:<path>/*`` (no user id becomes a rule)."""
    found: dict[str, str] = {}

    def full(node: ActorStatus) -> bool:
        cap = node.mailbox_capacity
        return cap > 0 and node.mailbox_depth / cap > ratio

    def visit(node: ActorStatus) -> None:
        if full(node):
            found[f"mailbox:{node.path}"] = _depth(node)
        if node.kind == "dynamic_supervisor":
            members = [d for c in node.children for d in c.walk()]
            crowded = sorted(
                (d for d in members if full(d)),
                key=lambda d: d.mailbox_depth / d.mailbox_capacity,
                reverse=True,
            )
            if crowded:
                shown = ", ".join(f"{d.name} {_depth(d)}" for d in crowded[:3])
                more = f" and {len(crowded) - 3} more" if len(crowded) > 3 else ""
                found[f"mailbox:{node.path}/*"] = (
                    f"{len(crowded)} of {len(members)} mailboxes above {ratio:.0%}: {shown}{more}"
                )
            return
        for child in node.children:
            visit(child)

    visit(root)
    return found


def _depth(node: ActorStatus) -> str:
    pct = node.mailbox_depth / node.mailbox_capacity if node.mailbox_capacity else 0.0
    return f"{node.mailbox_depth}/{node.mailbox_capacity} ({pct:.0%})"


def supervisor_findings(
    root: ActorStatus, seen: dict[str, int]
) -> tuple[dict[str, str], dict[str, int]]:
    """Failing ``restarts:<path>`` and ``gave_up:<path>`` rules, and the updated ``seen``.

    A supervisor's intensity is the restarts of its children within its period (each child
    counts its own ``restarts_recent`` over that same period); it is near its limit at
    ``limit - 1`` (one more crash and it gives up). A supervisor gave up when it is down with
    a "gave up" error, or when it was restarted since the last look and its last error says
    it gave up (``seen`` holds the restart totals of the last look).
    """
    found: dict[str, str] = {}
    now_seen: dict[str, int] = {}

    def gave_up(node: ActorStatus) -> bool:
        if node.kind not in SUPERVISOR_KINDS or "gave up" not in (node.last_error or ""):
            return False
        before = seen.get(node.path)
        return node.state in DOWN_STATES or (before is not None and node.restarts_total > before)

    def visit(node: ActorStatus, inside_dynamic: str | None) -> None:
        if node.kind in SUPERVISOR_KINDS:
            now_seen[node.path] = node.restarts_total
        if gave_up(node):
            key = f"gave_up:{inside_dynamic}/*" if inside_dynamic else f"gave_up:{node.path}"
            found[key] = f"{node.path} {node.state}: {node.last_error}"[:300]
        if inside_dynamic is None and node.kind in SUPERVISOR_KINDS and node.restart_limit > 0:
            recent = sum(c.restarts_recent for c in node.children)
            if recent >= max(1, node.restart_limit - 1):
                worst = max(node.children, key=lambda c: c.restarts_recent)
                found[f"restarts:{node.path}"] = (
                    f"{recent} restarts recently, limit {node.restart_limit} "
                    f"(most: {worst.name}, {worst.restarts_recent}; "
                    f"last error: {worst.last_error or '-'})"
                )[:300]
        inner = inside_dynamic or (node.path if node.kind == "dynamic_supervisor" else None)
        for child in node.children:
            visit(child, inner)

    visit(root, None)
    return found, now_seen


# --- probes' interpretation (pure) ----------------------------------------------------------


def telegram_verdict(
    prev: SenderStatus | None, cur: SenderStatus, was_failing: bool
) -> tuple[bool, str]:
    """Whether Telegram answers, from two consecutive sender reports.

    Successful requests since the last look: it answers. Network errors (retries, failures
    for network reasons) and no success: it does not. Nothing sent and nothing failed: no
    news, so a problem already seen lasts while messages still wait.
    """
    sent, retried, failed = sum(cur.sent.values()), cur.retried, cur.failed
    base_sent = sum(prev.sent.values()) if prev is not None else 0
    base_retried = prev.retried if prev is not None else 0
    base_failed = prev.failed if prev is not None else 0
    if sent < base_sent or retried < base_retried or failed < base_failed:
        base_sent = base_retried = base_failed = 0  # a new sender incarnation: counters restart
    waiting = sum(cur.queued.values()) + cur.in_flight
    if sent > base_sent:
        return True, "answering"
    last = cur.recent_failures[-1].reason if cur.recent_failures else ""
    network_failed = failed > base_failed and _network_reason(last)
    if retried > base_retried or network_failed:
        detail = f"requests fail ({retried - base_retried} retries since the last look)"
        return False, detail + (f"; last failure: {last}" if last else "")
    if was_failing and waiting:
        return False, f"no request succeeded yet; {waiting} messages waiting"
    return True, "answering" if sent else "idle"


def _network_reason(reason: str) -> bool:
    lowered = reason.lower()
    return any(w in lowered for w in ("network", "timed out", "timeout", "connect"))


# --- memory ---------------------------------------------------------------------------------


def memory_limit_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The memory this process may use: the cgroup limit, else the machine's memory."""
    for candidate in (
        cgroup_root / "memory.max",
        cgroup_root / "memory" / "memory.limit_in_bytes",
    ):
        with contextlib.suppress(OSError, ValueError):
            text = candidate.read_text().strip()
            if text and text != "max":
                value = int(text)
                if 0 < value < _NO_LIMIT:
                    return value
    return int(psutil.virtual_memory().total)


def _rss_bytes() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


# --- texts ----------------------------------------------------------------------------------

TITLES = {
    "redis": "Redis unreachable",
    "postgres": "PostgreSQL unreachable",
    "feed": "Signal feed down or silent",
    "telegram": "Telegram not answering",
    "outbox": "History outbox falling behind",
    "memory": "Memory use high",
}


def title_of(name: str) -> str:
    kind, _, path = name.partition(":")
    if kind == "mailbox" and path:
        return f"Mailbox of {path} nearly full"
    if kind == "restarts" and path:
        return f"{path} near its restart limit"
    if kind == "gave_up" and path:
        return f"Supervisor {path} gave up"
    return TITLES.get(name, name)


def human_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _clock_text(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def alert_text(title: str, detail: str, since_wall: float, lasted: float, repeat: int) -> str:
    head = "still: " if repeat else ""
    lines = [f"🚨 <b>{html.escape(head + title)}</b>"]
    if detail:
        lines.append(html.escape(detail))
    lines.append(f"since {_clock_text(since_wall)} ({human_duration(lasted)})")
    return "\n".join(lines)


def recovery_text(title: str, lasted: float) -> str:
    return f"✅ <b>{html.escape('recovered: ' + title)}</b>\nit lasted {human_duration(lasted)}"


# --- the actor ------------------------------------------------------------------------------


class Health(Actor):
    """Samples the tree and the resources, alerts the admins, keeps the board current."""

    mailbox = MailboxSpec(capacity=100)

    def __init__(
        self,
        settings: HealthSettings | None = None,
        admin_chat_ids: Sequence[int] = (),
        *,
        store: StoreHandle | None = None,
        probes: Mapping[str, Probe | None] | None = None,
        board: HealthBoard | None = None,
        memory_limit: int | None = None,
        memory_used: Callable[[], int] | None = None,
        root: str = "root",
        sender: str = "sender",
        ingest: str = "ingest",
        outbox: str = "outbox",
        probe_timeout: float = 2.0,
    ) -> None:
        self.settings = settings if settings is not None else HealthSettings()
        self.admin_chat_ids = tuple(admin_chat_ids)
        self.store = store
        self.injected = dict(probes or {})
        self.board = board if board is not None else HealthBoard()
        self.memory_limit = memory_limit
        self.memory_used = memory_used if memory_used is not None else _rss_bytes
        self.root = root
        self.sender_name = sender
        self.ingest_name = ingest
        self.outbox_name = outbox
        self.probe_timeout = probe_timeout
        self.engine = RuleEngine()
        self.probes: dict[str, Probe] = {}
        self._told: dict[str, bool] = {}
        """Per firing rule: did its alert reach the admins (False: held back)."""
        self._telegram_ok = True
        self._feed_prev: tuple[int, float | None, int] | None = None
        self._sender_prev: SenderStatus | None = None
        self._gave_up_seen: dict[str, int] = {}
        self._tick_queued = False
        self._warned_no_sender = False

    # lifecycle

    async def started(self) -> None:
        if self.memory_limit is None:
            self.memory_limit = memory_limit_bytes()
        defaults: dict[str, Probe] = {
            "feed": self._feed_probe,
            "telegram": self._telegram_probe,
            "outbox": self._outbox_probe,
        }
        if self.store is not None:
            defaults["redis"] = self._redis_probe
            defaults["postgres"] = self._postgres_probe
        for name, probe in self.injected.items():
            if probe is None:
                defaults.pop(name, None)
            else:
                defaults[name] = probe
        self.probes = defaults

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                partial(every, immediately=True),
                self.ctx.clock,
                self.settings.sample_s,
                self._queue_tick,
            )
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    def _queue_tick(self) -> None:
        if not self._tick_queued:
            self._tick_queued = self.ctx.ref.tell_nowait(_Tick())

    async def receive(self, message: Any) -> Any:
        if isinstance(message, _Tick):
            self._tick_queued = False
            await self.sample()
            return None
        if isinstance(message, SampleNow):
            await self.sample()
            return self.board.view()
        if isinstance(message, HealthQuery):
            return self.board.view()
        self.ctx.log.warning("health.unexpected_message", message_type=type(message).__name__)
        return None

    async def stopped(self) -> None:
        for name in self.engine.names():
            FIRING.labels(name).set(0)

    # sampling

    async def sample(self) -> None:
        """One look at everything; alerts, recoveries, board and metrics follow."""
        clock = self.ctx.clock
        samples = await gather_samples(self.probes, self.probe_timeout + 0.5)
        t = clock.monotonic()
        if "telegram" in samples:
            self._telegram_ok = samples["telegram"][0]
        snapshot = self.ctx.system.status(self.root)
        if snapshot is not None:
            samples.update(self._tree_samples(snapshot))
        memory = self._memory_sample()
        if memory is not None:
            samples["memory"] = memory
        for name in samples:
            if name not in self.engine:
                self.engine.add(self._rule(name))
        events = self.engine.observe_many(t, samples)
        for event in events:
            self._on_event(event, t)
        if self._telegram_ok:
            self._send_held(t)
        self._publish(t)

    def _tree_samples(self, snapshot: ActorStatus) -> dict[str, tuple[bool, str]]:
        failing = mailbox_findings(snapshot, self.settings.mailbox_full_ratio)
        found, self._gave_up_seen = supervisor_findings(snapshot, self._gave_up_seen)
        failing.update(found)
        out = {name: (False, detail) for name, detail in failing.items()}
        for name in self.engine.names():
            if name.partition(":")[0] in ("mailbox", "restarts", "gave_up") and name not in out:
                out[name] = (True, "")
        return out

    def _memory_sample(self) -> tuple[bool, str] | None:
        limit = self.memory_limit
        if not limit:
            return None
        try:
            used = self.memory_used()
        except (OSError, psutil.Error):
            return None
        share = used / limit
        detail = f"{used / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB ({share:.0%})"
        return share <= self.settings.memory_ratio, detail

    def _rule(self, name: str) -> Rule:
        s = self.settings
        kind = name.partition(":")[0]
        durations = {
            "redis": s.store_down_s,
            "postgres": s.store_down_s,
            "feed": s.feed_silent_s,
            "telegram": s.telegram_down_s,
            "memory": s.memory_s,
            "mailbox": s.mailbox_full_s,
        }
        return Rule(name, durations.get(kind, 0.0), s.repeat_s, title_of(name))

    # events

    def _on_event(self, event: Event, t: float) -> None:
        clock = self.ctx.clock
        title = self.engine.state(event.rule).rule.label
        if isinstance(event, Alert):
            ALERTS.labels(event.rule).inc()
            FIRING.labels(event.rule).set(1)
            since_wall = clock.wall() - (t - event.since)
            deliver = self._telegram_ok and event.rule != "telegram"
            self.ctx.log.warning(
                "health.alert",
                rule=event.rule,
                title=title,
                detail=event.detail,
                since=round(since_wall, 3),
                lasted_s=round(t - event.since, 3),
                repeat=event.repeat,
                to_admins=deliver and bool(self.admin_chat_ids),
            )
            text = alert_text(title, event.detail, since_wall, t - event.since, event.repeat)
            told = deliver and self._notify(text)
            self._told[event.rule] = self._told.get(event.rule, False) or told
            return
        assert isinstance(event, Recovery)
        RECOVERIES.labels(event.rule).inc()
        FIRING.labels(event.rule).set(0)
        told = self._told.pop(event.rule, False)
        deliver = self._telegram_ok and (told or event.rule == "telegram")
        self.ctx.log.info(
            "health.recovery",
            rule=event.rule,
            title=title,
            lasted_s=round(event.duration, 3),
            to_admins=deliver and bool(self.admin_chat_ids),
        )
        if deliver:
            text = recovery_text(title, event.duration)
            if event.rule == "telegram":
                text += "\nalerts raised meanwhile went to the log; open ones follow"
            self._notify(text)

    def _send_held(self, t: float) -> None:
        """Alerts that fired while Telegram was down, sent now that it answers."""
        clock = self.ctx.clock
        for name in self.engine.firing():
            if name == "telegram" or self._told.get(name, True):
                continue
            state = self.engine.state(name)
            since = state.since if state.since is not None else t
            text = alert_text(
                state.rule.label, state.detail, clock.wall() - (t - since), t - since, 0
            )
            self._told[name] = self._notify(text)

    def _notify(self, text: str) -> bool:
        """One message per admin chat on the interactive lane; False when none was queued."""
        if not self.admin_chat_ids:
            return False
        try:
            sender = self.ctx.lookup(self.sender_name)
        except NameNotFound:
            if not self._warned_no_sender:
                self._warned_no_sender = True
                self.ctx.log.warning("health.no_sender", sender=self.sender_name)
            return False
        queued = False
        for chat_id in self.admin_chat_ids:
            message = Outbound(chat_id=chat_id, text=text, lane=Lane.INTERACTIVE, kind="health")
            queued = sender.tell_nowait(message) or queued
        return queued

    def _publish(self, t: float) -> None:
        clock = self.ctx.clock
        wall = clock.wall()

        def to_wall(x: float) -> float:
            return wall - (t - x)

        rules: dict[str, dict[str, Any]] = {}
        for name, state in self.engine.states().items():
            view = state.as_dict(to_wall)
            if state.phase is Phase.FIRING:
                view["notified"] = self._told.get(name, False)
            rules[name] = view
            FIRING.labels(name).set(1 if state.phase is Phase.FIRING else 0)
        self.board.publish(rules, wall)

    # default probes

    def _ref(self, name: str) -> Ref:
        try:
            return self.ctx.lookup(name)
        except NameNotFound:
            raise Unknown(name) from None

    async def _redis_probe(self) -> tuple[bool, str]:
        assert self.store is not None
        up = self.store.redis_up
        return up, "reachable" if up else "unreachable (its owner is reconnecting)"

    async def _postgres_probe(self) -> tuple[bool, str]:
        assert self.store is not None
        up = self.store.postgres_up
        return up, "reachable" if up else "unreachable (its owner is reconnecting)"

    async def _feed_probe(self) -> tuple[bool, str]:
        """Connected, and events arrived since the last look (the rule's duration turns
        "nothing since the last look" into "silent for more than feed_silent_s")."""
        ref = self._ref(self.ingest_name)
        if ref.state != "running":
            self._feed_prev = None
            return False, f"ingest is {ref.state} (feed connection lost?)"
        try:
            report: IngestReport = await ref.ask(IngestStatus(), timeout=self.probe_timeout)
        except _ASK_ERRORS as exc:
            return False, f"ingest does not answer: {type(exc).__name__}"
        total = sum(report.events.values())
        marker = (report.incarnation, report.last_event_at, total)
        prev, self._feed_prev = self._feed_prev, marker
        if not report.connected:
            return False, f"disconnected from the feed ({report.reconnects} reconnects)"
        if report.last_event_at is None:
            return False, "connected, no event received yet"
        if prev is not None and prev[0] == marker[0] and prev[1:] == marker[1:]:
            return False, "connected, but no new events"
        return True, f"connected, last seq {report.last_seq}"

    async def _telegram_probe(self) -> tuple[bool, str]:
        ref = self._ref(self.sender_name)
        if ref.state != "running":
            self._sender_prev = None
            return False, f"sender is {ref.state} (Telegram unreachable?)"
        try:
            status: SenderStatus = await ref.ask(SenderStats(), timeout=self.probe_timeout)
        except _ASK_ERRORS as exc:
            return False, f"sender does not answer: {type(exc).__name__}"
        prev, self._sender_prev = self._sender_prev, status
        was_failing = "telegram" in self.engine and self.engine.state("telegram").phase in (
            Phase.PENDING,
            Phase.FIRING,
        )
        return telegram_verdict(prev, status, was_failing)

    async def _outbox_probe(self) -> tuple[bool, str]:
        ref = self._ref(self.outbox_name)
        if ref.state != "running":
            raise Unknown("outbox writer not running")  # the store rules speak for it
        try:
            status: OutboxStatus = await ref.ask(OutboxStats(), timeout=self.probe_timeout)
        except _ASK_ERRORS:
            raise Unknown("outbox writer does not answer") from None
        if status.pending is None or status.lag_s is None:
            raise Unknown("outbox backlog unknown (Redis unreachable)")
        limit = self.settings.store_down_s
        detail = f"{status.pending} rows waiting, oldest {human_duration(status.lag_s)}"
        return status.lag_s <= limit, detail


class _Tick(msgspec.Struct, frozen=True):
    """Time for a sample (sent by the actor's own ticker)."""
