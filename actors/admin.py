"""The admin actor (``admin``): one command set for Telegram and the CLI.

Requests arrive as `AdminRequest` (built and validated in `messages.admin`): from the bot
for ``/admin ...`` in an admin chat, and from the control server's ``POST /admin`` through
`AdminGateway`. Who may ask is checked twice for Telegram (the bot, then here, against
``telegram.admin_chat_ids``); for HTTP the control token is the gate. Refusals are logged
(``admin.refused`` with the chat id) and every request, refused or not, is written to the
``activity_log`` history (through the outbox; straight to PostgreSQL if Redis is down).

What the commands touch: users (PostgreSQL ``users``, then the user's actor is told to
reload and the bot is told the lock state), subscriptions and coupons (only through the
payments actor's messages), presets (the ``presets`` table, which ``/presets`` reads),
broadcasts (the sender's bulk lane) and the tree's own status.

A broadcast runs beside the mailbox: at most ``broadcast_window`` messages are asked of
the sender at once, each answer (delivered, blocked, failed) is counted, and progress is
reported every ``progress_step`` percent, by editing a progress message in the admin's
chat (Telegram) or through ``broadcast_status`` (CLI). Every message carries a
``dedup_key`` per broadcast and chat, so a sender restart never sends one twice. A
broadcast does not survive a restart of this actor (what the sender already accepted is
still delivered); its final counts are in the activity log.
"""

from __future__ import annotations

import contextlib
import html
import itertools
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from uuid import uuid4

import anyio
import anyio.abc
import msgspec
import structlog
from prometheus_client import Counter

from actors.store.handle import StoreHandle
from actors.store.outbox import DEFAULT_STREAM, HistoryRejected, append_history
from actors.user import user_name
from actors.user_directory import DIRECTORY
from actors.user_store import STORE_ERRORS, load_presets
from messages.admin import (
    ADMIN_COMMANDS,
    AdminInputError,
    AdminRequest,
    AdminResult,
    BroadcastArgs,
    BroadcastStatusArgs,
    CouponCreateArgs,
    ExtendArgs,
    GrantArgs,
    LockArgs,
    LockChanged,
    PresetArgs,
    PresetNameArgs,
    ReconcileArgs,
    RevokeArgs,
    UserArgs,
    build_request,
    decode_admin_body,
)
from messages.billing import (
    CouponInfo,
    CouponList,
    CreateCoupon,
    ExtendSubscription,
    GrantSubscription,
    ListCoupons,
    Reconcile,
    ReconcileReport,
    Refused,
    RevokeSubscription,
    SubscriptionInfo,
    SubscriptionStatus,
)
from messages.delivery import ChatBlocked, Delivered, DeliveryFailed, Lane, Outbound, SenderStats
from messages.filters import (
    DEFAULT_PRESETS,
    FilterError,
    FilterSettings,
    Preset,
    decode_settings,
    encode_settings,
)
from messages.payments import Plan
from messages.status import ActorStatus
from messages.users import RefreshUser
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

__all__ = [
    "AdminActor",
    "AdminGateway",
    "Broadcast",
    "http_admin_handler",
    "summarize_tree",
]

log = structlog.get_logger(__name__)

CLI_ADMIN: Final = 0
"""``by`` of requests from the CLI: the control token holder, not a Telegram chat."""
LOCKED_TEXT: Final = (
    "Your callwatch account has been locked by an admin. You will get no alerts. "
    "Please contact support."
)
UNLOCKED_TEXT: Final = "Your callwatch account has been unlocked. Send /start to continue."
_ASK_ERRORS: Final = (AskTimeout, ActorStopped, ActorFailed, MailboxFull, NameNotFound)
KEEP_BROADCASTS: Final = 20

ADMIN_COMMANDS_RUN = Counter(
    "callwatch_admin_commands", "Admin commands run", ["command", "origin", "outcome"]
)
ADMIN_REFUSED = Counter("callwatch_admin_refused", "Admin commands refused", ["origin"])
BROADCAST_MESSAGES = Counter(
    "callwatch_admin_broadcast_messages", "Broadcast messages by outcome", ["outcome"]
)


def _ok(text: str, **data: Any) -> AdminResult:
    return AdminResult(ok=True, text=text, data=data)


def _no(text: str, status: int = 400, **data: Any) -> AdminResult:
    return AdminResult(ok=False, text=text, status=status, data=data)


def _ts(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


@dataclass
class Broadcast:
    """One broadcast's progress (plain counters, read by ``broadcast_status``)."""

    id: str
    audience: str
    text: str
    by: int
    origin: str
    reply_chat: int | None
    total: int = 0
    sent: int = 0
    blocked: int = 0
    failed: int = 0
    unconfirmed: int = 0
    started: float = 0.0
    finished: float | None = None
    state: str = "running"
    progress_message: int | None = None
    reported: int = -1
    changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def done(self) -> int:
        return self.sent + self.blocked + self.failed + self.unconfirmed

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else self.done * 100 // self.total

    def view(self, now: float) -> dict[str, Any]:
        elapsed = (self.finished or now) - self.started
        return {
            "id": self.id,
            "audience": self.audience,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "sent": self.sent,
            "blocked": self.blocked,
            "failed": self.failed,
            "unconfirmed": self.unconfirmed,
            "percent": self.percent,
            "elapsed_s": round(elapsed, 3),
        }

    def line(self, now: float) -> str:
        v = self.view(now)
        return (
            f"Broadcast {self.id} ({self.audience}): {v['state']}, {v['done']} of {v['total']} "
            f"({v['percent']}%): sent {v['sent']}, blocked {v['blocked']}, failed {v['failed']}"
            + (f", unconfirmed {v['unconfirmed']}" if v["unconfirmed"] else "")
            + f", {v['elapsed_s']:.1f} s"
        )


class AdminGateway:
    """The control server's way in: ``admin=gateway.handle`` on the control actor, and the
    admin actor binds itself at start (refs do not exist when the tree is declared)."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._ref: Ref | None = None

    def bind(self, ref: Ref | None) -> None:
        self._ref = ref

    async def handle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /admin`` body -> (HTTP status, JSON reply). Never raises."""
        try:
            command, args = decode_admin_body(body)
            request = build_request(command, args, origin="cli", by=CLI_ADMIN)
        except AdminInputError as exc:
            return 400, {"ok": False, "error": exc.reason, "text": exc.reason}
        ref = self._ref
        if ref is None or not ref.alive:
            return 503, {"ok": False, "error": "the admin actor is not running"}
        try:
            result = await ref.ask(request, self.timeout)
        except _ASK_ERRORS as exc:
            log.warning("admin.http_unavailable", error=type(exc).__name__)
            return 503, {"ok": False, "error": "the admin actor did not answer"}
        if not isinstance(result, AdminResult):
            return 503, {"ok": False, "error": "unexpected answer"}
        body_out = result.to_json()
        if not result.ok:
            body_out["error"] = result.text
        return result.status, body_out


def http_admin_handler(
    ref: Ref, timeout: float = 60.0
) -> Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]:
    """The control server's ``admin=`` handler for a known admin ref."""
    gateway = AdminGateway(timeout)
    gateway.bind(ref)
    return gateway.handle


class AdminActor(Actor):
    """Registered as ``admin``; see the module docs."""

    mailbox = MailboxSpec(capacity=1_000)

    def __init__(
        self,
        store: StoreHandle,
        admin_chat_ids: tuple[int, ...] | frozenset[int] = (),
        *,
        gateway: AdminGateway | None = None,
        sender: str = "sender",
        payments: str = "payments",
        directory: str = DIRECTORY,
        bot: str = "bot",
        broadcast_window: int = 200,
        broadcast_timeout: float = 600.0,
        progress_step: int = 10,
        ask_timeout: float = 10.0,
        history_stream: str = DEFAULT_STREAM,
    ) -> None:
        self.store = store
        self.history_stream = history_stream
        self.admins = frozenset(admin_chat_ids)
        self.gateway = gateway
        self.sender_name = sender
        self.payments_name = payments
        self.directory_name = directory
        self.bot_name = bot
        self.window = max(1, broadcast_window)
        self.broadcast_timeout = broadcast_timeout
        self.progress_step = max(1, min(100, progress_step))
        self.ask_timeout = ask_timeout
        self.broadcasts: OrderedDict[str, Broadcast] = OrderedDict()
        self._tg: anyio.abc.TaskGroup | None = None
        self._ids = itertools.count(1)
        self._handlers: dict[str, Callable[[AdminRequest], Awaitable[AdminResult]]] = {
            "help": self._help,
            "lookup": self._lookup,
            "lock": self._lock,
            "unlock": self._lock,
            "grant": self._grant,
            "extend": self._grant,
            "revoke": self._grant,
            "stats": self._stats,
            "status": self._status,
            "presets": self._presets,
            "preset_create": self._preset_save,
            "preset_edit": self._preset_save,
            "preset_delete": self._preset_delete,
            "broadcast": self._broadcast,
            "broadcast_status": self._broadcast_status,
            "coupon_create": self._coupon_create,
            "coupons": self._coupons,
            "reconcile": self._reconcile,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def started(self) -> None:
        if self.gateway is not None:
            self.gateway.bind(self.ctx.ref)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self.ctx.process(self)
            tg.cancel_scope.cancel()
        self._tg = None

    async def stopped(self) -> None:
        if self.gateway is not None:
            self.gateway.bind(None)
        for b in self.broadcasts.values():
            if b.state == "running":
                b.state = "interrupted"

    # -- dispatch ----------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if not isinstance(message, AdminRequest):
            log.warning("admin.unexpected_message", type=type(message).__name__)
            return None
        request = message
        if request.origin == "telegram" and request.by not in self.admins:
            ADMIN_REFUSED.labels(request.origin).inc()
            log.warning("admin.refused", chat_id=request.by, command=request.command)
            await self._activity(
                "admin.refused",
                request,
                actor_kind="user",
                detail={"command": request.command},
            )
            return _no("Sorry, admin commands are for the callwatch admins only.", 403)
        handler = self._handlers.get(request.command)
        if handler is None:
            return _no(f"Unknown command {request.command!r}.")
        try:
            result = await handler(request)
        except STORE_ERRORS as exc:
            log.warning("admin.store_error", command=request.command, error=repr(exc)[:200])
            result = _no("The database is not available right now; nothing was changed.", 503)
        except (FilterError, AdminInputError) as exc:
            reason = exc.message if isinstance(exc, FilterError) else exc.reason
            result = _no(reason)
        ADMIN_COMMANDS_RUN.labels(
            request.command, request.origin, "ok" if result.ok else "refused"
        ).inc()
        subject = result.data.get("chat_id") if isinstance(result.data, dict) else None
        await self._activity(
            f"admin.{request.command}",
            request,
            subject=subject if isinstance(subject, int) else None,
            detail={
                "args": _safe_args(request.args),
                "ok": result.ok,
                "result": result.text[:200],
            },
        )
        log.info(
            "admin.command",
            command=request.command,
            origin=request.origin,
            by=request.by,
            ok=result.ok,
        )
        return result

    # -- shared pieces -----------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.ctx.clock.wall(), UTC)

    async def _activity(
        self,
        action: str,
        request: AdminRequest,
        *,
        actor_kind: str = "admin",
        subject: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        row: dict[str, Any] = {
            "dedup_key": f"admin:{uuid4().hex}",
            "actor_kind": actor_kind,
            "actor_id": request.by,
            "action": action[:64],
            "subject_id": subject,
            "detail": {"origin": request.origin, **(detail or {})},
            "at": self._now(),
        }
        try:
            await append_history(self.store, "activity_log", row, stream=self.history_stream)
            return
        except HistoryRejected as exc:
            log.error("admin.activity_rejected", reason=exc.reason)
            return
        except STORE_ERRORS as exc:
            log.warning("admin.activity_outbox_down", error=type(exc).__name__)
        try:
            await self.store.pool().execute(
                "INSERT INTO activity_log (dedup_key, actor_kind, actor_id, action, subject_id,"
                " detail, at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)"
                " ON CONFLICT (dedup_key) DO NOTHING",
                row["dedup_key"],
                row["actor_kind"],
                row["actor_id"],
                row["action"],
                row["subject_id"],
                msgspec.json.encode(row["detail"]).decode(),
                row["at"],
            )
        except STORE_ERRORS as exc:
            log.error("admin.activity_lost", action=action, error=type(exc).__name__)

    async def _resolve(self, user: int | str) -> int | None:
        pool = self.store.pool()
        if isinstance(user, int):
            found = await pool.fetchval("SELECT chat_id FROM users WHERE chat_id = $1", user)
        else:
            found = await pool.fetchval(
                "SELECT chat_id FROM users WHERE lower(username) = lower($1)"
                " ORDER BY last_seen DESC LIMIT 1",
                user.strip().lstrip("@"),
            )
        return int(found) if found is not None else None

    async def _ask(self, name: str, message: Any, timeout: float | None = None) -> Any:
        try:
            return await self.ctx.lookup(name).ask(message, timeout or self.ask_timeout)
        except _ASK_ERRORS as exc:
            log.warning("admin.ask_failed", target=name, error=type(exc).__name__)
            return None

    def _tell(self, name: str, message: Any) -> None:
        with contextlib.suppress(NameNotFound):
            self.ctx.lookup(name).tell_nowait(message)

    def _refresh(self, chat_id: int) -> None:
        """The user's actor reloads from PostgreSQL (lock, subscription)."""
        self._tell(self.directory_name, RefreshUser(chat_id))

    def _notify(self, chat_id: int, text: str) -> None:
        self._tell(
            self.sender_name,
            Outbound(chat_id=chat_id, text=html.escape(text, quote=False), lane=Lane.INTERACTIVE),
        )

    # -- commands ----------------------------------------------------------------------------

    async def _help(self, request: AdminRequest) -> AdminResult:
        lines = ["Admin commands (/admin <command> ... in Telegram, callwatch admin <command>):"]
        lines += [f"  {name}: {spec.summary}" for name, spec in ADMIN_COMMANDS.items()]
        return _ok("\n".join(lines), commands=sorted(ADMIN_COMMANDS))

    async def _lookup(self, request: AdminRequest) -> AdminResult:
        args: UserArgs = request.args
        chat_id = await self._resolve(args.user)
        if chat_id is None:
            return _no(f"No user {args.user}.", 404)
        row = await self.store.pool().fetchrow(
            "SELECT u.chat_id, u.username, u.first_name, u.active, u.locked, u.created_at,"
            " u.last_seen, s.filters, s.version FROM users u"
            " LEFT JOIN settings s ON s.chat_id = u.chat_id WHERE u.chat_id = $1",
            chat_id,
        )
        assert row is not None
        try:
            settings = decode_settings(row["filters"]) if row["filters"] else FilterSettings()
        except FilterError:
            settings = FilterSettings()
        info = await self._ask(self.payments_name, SubscriptionStatus(user_id=chat_id))
        sub = info if isinstance(info, SubscriptionInfo) else None
        standing = "locked" if row["locked"] else "active" if row["active"] else "blocked the bot"
        running = self.ctx.system.registry.get(user_name(chat_id)) is not None
        lines = [
            f"User {chat_id} @{row['username'] or '-'} ({row['first_name'] or '-'})",
            f"Standing: {standing}; actor {'running' if running else 'not running'}",
            f"Joined {_ts(row['created_at'])}, last seen {_ts(row['last_seen'])}",
        ]
        if sub is None:
            lines.append("Subscription: unknown (payments unavailable)")
        elif sub.active:
            until = "for life" if sub.lifetime else f"until {_ts(sub.expires_at)}"
            lines.append(f"Subscription: {sub.plan or 'active'} {until}")
        else:
            lines.append("Subscription: none")
        lines.append("Filters:")
        lines += [f"  {label}: {value}" for label, value in settings.describe()]
        return _ok(
            "\n".join(lines),
            chat_id=chat_id,
            username=row["username"],
            active=bool(row["active"]),
            locked=bool(row["locked"]),
            subscription=msgspec.to_builtins(sub) if sub is not None else None,
            settings=msgspec.to_builtins(settings),
            actor_running=running,
        )

    async def _lock(self, request: AdminRequest) -> AdminResult:
        args: LockArgs | UserArgs = request.args
        locked = request.command == "lock"
        chat_id = await self._resolve(args.user)
        if chat_id is None:
            return _no(f"No user {args.user}.", 404)
        before = await self.store.pool().fetchval(
            "UPDATE users u SET locked = $2 FROM users old"
            " WHERE u.chat_id = $1 AND old.chat_id = u.chat_id RETURNING old.locked",
            chat_id,
            locked,
        )
        self._tell(self.bot_name, LockChanged(chat_id, locked))
        self._refresh(chat_id)
        word = "locked" if locked else "unlocked"
        if before == locked:
            return _ok(f"User {chat_id} was already {word}.", chat_id=chat_id, locked=locked)
        self._notify(chat_id, LOCKED_TEXT if locked else UNLOCKED_TEXT)
        return _ok(f"User {chat_id} is now {word}.", chat_id=chat_id, locked=locked)

    async def _grant(self, request: AdminRequest) -> AdminResult:
        args: GrantArgs | ExtendArgs | RevokeArgs = request.args
        chat_id = await self._resolve(args.user)
        if chat_id is None:
            return _no(f"No user {args.user}.", 404)
        message: Any
        if isinstance(args, GrantArgs):
            plan = None
            if args.plan is not None:
                try:
                    plan = Plan.parse(args.plan)
                except ValueError as exc:
                    return _no(str(exc).capitalize() + ".")
            message = GrantSubscription(user_id=chat_id, by=request.by, plan=plan, days=args.days)
        elif isinstance(args, ExtendArgs):
            message = ExtendSubscription(user_id=chat_id, days=args.days, by=request.by)
        else:
            message = RevokeSubscription(user_id=chat_id, by=request.by, reason=args.reason)
        reply = await self._ask(self.payments_name, message, self.ask_timeout * 2)
        if isinstance(reply, Refused):
            return _no(reply.reason, 409, chat_id=chat_id)
        if not isinstance(reply, SubscriptionInfo):
            return _no("The payments service did not answer; try again.", 503, chat_id=chat_id)
        self._refresh(chat_id)
        if reply.active:
            until = "for life" if reply.lifetime else f"until {_ts(reply.expires_at)}"
            text = f"User {chat_id} is subscribed ({reply.plan or 'custom'}) {until}."
        else:
            text = f"User {chat_id} has no running subscription now."
        return _ok(text, chat_id=chat_id, subscription=msgspec.to_builtins(reply))

    async def _stats(self, request: AdminRequest) -> AdminResult:
        now = self._now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        async with self.store.pool().acquire() as conn:
            users = await conn.fetchrow(
                "SELECT count(*) AS total,"
                " count(*) FILTER (WHERE active AND NOT locked) AS reachable,"
                " count(*) FILTER (WHERE NOT active) AS blocked,"
                " count(*) FILTER (WHERE locked) AS locked FROM users"
            )
            subscribed = await conn.fetchval(
                "SELECT count(DISTINCT chat_id) FROM subscriptions WHERE revoked_at IS NULL"
                " AND starts_at <= $1 AND expires_at > $1",
                now,
            )
            notes = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE kind = 'call') AS calls,"
                " count(*) FILTER (WHERE kind = 'multiplier') AS multipliers"
                " FROM notifications WHERE sent_at >= $1",
                midnight,
            )
            events = await conn.fetchval(
                "SELECT count(DISTINCT event_id) FROM calls_history WHERE recorded_at >= $1",
                midnight,
            )
        tree = self.ctx.system.status("root")
        summary = summarize_tree(tree) if tree is not None else {}
        sender = await self._ask(self.sender_name, SenderStats(), 3.0)
        queued = dict(getattr(sender, "queued", {}) or {})
        data = {
            "users": dict(users) if users is not None else {},
            "active_subscriptions": int(subscribed or 0),
            "events_today": int(events or 0),
            "notifications_today": int(notes["calls"]) if notes else 0,
            "multiplier_alerts_today": int(notes["multipliers"]) if notes else 0,
            "sender_queued": queued,
            "restarts_total": summary.get("restarts_total", 0),
            "busiest_mailboxes": summary.get("busiest", []),
            "actors": summary.get("actors", 0),
        }
        u = data["users"]
        lines = [
            f"Users: {u.get('total', 0)} ({u.get('reachable', 0)} reachable, "
            f"{u.get('blocked', 0)} blocked the bot, {u.get('locked', 0)} locked)",
            f"Active subscriptions: {data['active_subscriptions']}",
            f"Today (UTC): {data['events_today']} token events, "
            f"{data['notifications_today']} notifications, "
            f"{data['multiplier_alerts_today']} multiplier alerts",
            "Sender queues: "
            + (", ".join(f"{k} {v}" for k, v in queued.items()) if queued else "unknown"),
            f"Actors: {data['actors']}, restarts so far: {data['restarts_total']}",
        ]
        busiest = data["busiest_mailboxes"]
        if busiest:
            lines.append(
                "Busiest mailboxes: "
                + ", ".join(f"{b['path']} {b['depth']}/{b['capacity']}" for b in busiest)
            )
        return _ok("\n".join(lines), **data)

    async def _status(self, request: AdminRequest) -> AdminResult:
        tree = self.ctx.system.status("root")
        if tree is None:
            return _no("No tree named root.", 503)
        summary = summarize_tree(tree)
        return _ok(str(summary.pop("text")), **summary)

    async def _presets(self, request: AdminRequest) -> AdminResult:
        presets = await load_presets(self.store.pool())
        stored = {
            str(r["name"]).lower()
            for r in await self.store.pool().fetch("SELECT name FROM presets")
        }
        shipped = {p.name for p in DEFAULT_PRESETS}
        lines = ["Presets:"]
        out = []
        for p in presets:
            origin = "shipped" if p.name in shipped and p.name not in stored else "admin"
            if p.name in shipped and p.name in stored:
                origin = "shipped, edited"
            lines.append(f"  {p.name} ({origin}): {p.description}")
            out.append({"name": p.name, "origin": origin, "settings": msgspec.to_builtins(p)})
        return _ok("\n".join(lines), presets=out)

    async def _preset_save(self, request: AdminRequest) -> AdminResult:
        args: PresetArgs = request.args
        name = args.name.strip().lower()
        creating = request.command == "preset_create"
        existing = {p.name: p for p in await load_presets(self.store.pool())}
        if creating and name in existing:
            return _no(f"A preset called {name} exists; use preset_edit to change it.", 409)
        if not creating and name not in existing:
            return _no(f"There is no preset called {name}.", 404)
        base = existing.get(name)
        settings = base.settings if base is not None else FilterSettings()
        for key, value in args.filters.items():
            settings = settings.with_text(key, value)
        description = args.description
        if description is None:
            description = base.description if base is not None else ""
        preset = Preset(name=name, description=description.strip(), settings=settings)
        await self.store.pool().execute(
            "INSERT INTO presets (name, description, filters, created_by, created_at, updated_at)"
            " VALUES ($1, $2, $3::jsonb, $4, $5, $5)"
            " ON CONFLICT ((lower(name))) DO UPDATE SET description = EXCLUDED.description,"
            " filters = EXCLUDED.filters, updated_at = EXCLUDED.updated_at",
            preset.name,
            preset.description,
            encode_settings(preset.settings).decode(),
            request.by or None,
            self._now(),
        )
        shown = "; ".join(f"{label}: {value}" for label, value in preset.settings.describe()[:-1])
        verb = "created" if creating else "saved"
        return _ok(
            f"Preset {preset.name} {verb}. {shown}",
            name=preset.name,
            settings=msgspec.to_builtins(preset.settings),
        )

    async def _preset_delete(self, request: AdminRequest) -> AdminResult:
        args: PresetNameArgs = request.args
        name = args.name.strip().lower()
        deleted = await self.store.pool().fetchval(
            "DELETE FROM presets WHERE lower(name) = $1 RETURNING name", name
        )
        shipped = {p.name for p in DEFAULT_PRESETS}
        if deleted is None:
            if name in shipped:
                return _no(
                    f"{name} ships with callwatch and cannot be deleted (edit it instead).", 409
                )
            return _no(f"There is no preset called {name}.", 404)
        if name in shipped:
            return _ok(f"Preset {name} is back to its shipped settings.", name=name)
        return _ok(f"Preset {name} deleted.", name=name)

    async def _coupon_create(self, request: AdminRequest) -> AdminResult:
        args: CouponCreateArgs = request.args
        try:
            value = Decimal(args.value.strip())
        except InvalidOperation:
            return _no(f"coupon_create: {args.value[:20]!r} is not a number.")
        if not value.is_finite():
            return _no("coupon_create: the value must be a finite number.")
        plan = None
        if args.plan is not None:
            try:
                plan = Plan.parse(args.plan)
            except ValueError as exc:
                return _no(str(exc).capitalize() + ".")
        expires = (
            self._now() + timedelta(days=args.valid_days) if args.valid_days is not None else None
        )
        reply = await self._ask(
            self.payments_name,
            CreateCoupon(
                code=args.code.strip(),
                kind=args.kind,
                value=value,
                max_uses=args.max_uses,
                expires_at=expires,
                plan=plan,
                by=request.by or None,
            ),
        )
        if isinstance(reply, Refused):
            return _no(reply.reason, 409)
        if not isinstance(reply, CouponInfo):
            return _no("The payments service did not answer; try again.", 503)
        return _ok(f"Coupon created: {_coupon_line(reply)}", coupon=msgspec.to_builtins(reply))

    async def _coupons(self, request: AdminRequest) -> AdminResult:
        reply = await self._ask(self.payments_name, ListCoupons())
        if not isinstance(reply, CouponList):
            return _no("The payments service did not answer; try again.", 503)
        if not reply.coupons:
            return _ok("No coupons yet.", coupons=[])
        lines = ["Coupons (newest first):"] + [f"  {_coupon_line(c)}" for c in reply.coupons[:50]]
        return _ok("\n".join(lines), coupons=msgspec.to_builtins(reply.coupons))

    async def _reconcile(self, request: AdminRequest) -> AdminResult:
        args: ReconcileArgs = request.args
        until = datetime.fromtimestamp(self.ctx.clock.wall(), UTC)
        since = until - timedelta(days=args.days)
        reply = await self._ask(self.payments_name, Reconcile(since=since, until=until))
        if not isinstance(reply, ReconcileReport):
            return _no("The payments service did not answer; try again.", 503)
        lines = [
            f"Payments and grants {_ts(since)} .. {_ts(until)}: {len(reply.rows)} orders, "
            f"{len(reply.mismatches)} mismatches."
        ]
        lines += [
            f"  ! {m.kind} order {m.order_id} user {m.user_id}: {m.detail}"
            for m in reply.mismatches[:50]
        ]
        return _ok(
            "\n".join(lines),
            rows=msgspec.to_builtins(reply.rows),
            mismatches=msgspec.to_builtins(reply.mismatches),
        )

    # -- broadcasts --------------------------------------------------------------------------

    async def _broadcast(self, request: AdminRequest) -> AdminResult:
        args: BroadcastArgs = request.args
        now = self._now()
        pool = self.store.pool()
        if args.audience == "subscribers":
            rows = await pool.fetch(
                "SELECT DISTINCT u.chat_id FROM users u JOIN subscriptions s"
                " ON s.chat_id = u.chat_id WHERE u.active AND NOT u.locked AND u.chat_id > 0"
                " AND s.revoked_at IS NULL AND s.starts_at <= $1 AND s.expires_at > $1"
                " ORDER BY 1",
                now,
            )
        else:
            rows = await pool.fetch(
                "SELECT chat_id FROM users WHERE active AND NOT locked AND chat_id > 0"
                " ORDER BY chat_id"
            )
        targets = [int(r["chat_id"]) for r in rows]
        b = Broadcast(
            id=f"b{next(self._ids)}-{uuid4().hex[:6]}",
            audience=args.audience,
            text=html.escape(args.text.strip(), quote=False),
            by=request.by,
            origin=request.origin,
            reply_chat=request.reply_chat,
            total=len(targets),
            started=self.ctx.clock.monotonic(),
        )
        self.broadcasts[b.id] = b
        while len(self.broadcasts) > KEEP_BROADCASTS:
            oldest = next(iter(self.broadcasts))
            if self.broadcasts[oldest].state == "running":
                break
            self.broadcasts.popitem(last=False)
        assert self._tg is not None
        self._tg.start_soon(self._run_broadcast, b, targets)
        return _ok(
            f"Broadcast {b.id} started to {b.total} users ({b.audience}). "
            + (
                "Progress follows here."
                if request.origin == "telegram"
                else f"Follow it with: broadcast_status {b.id}"
            ),
            **b.view(self.ctx.clock.monotonic()),
        )

    async def _broadcast_status(self, request: AdminRequest) -> AdminResult:
        args: BroadcastStatusArgs = request.args
        now = self.ctx.clock.monotonic()
        if args.id is None:
            if not self.broadcasts:
                return _ok("No broadcasts since the last start.", broadcasts=[])
            items = list(self.broadcasts.values())[-5:]
            return _ok(
                "\n".join(b.line(now) for b in items), broadcasts=[b.view(now) for b in items]
            )
        b = self.broadcasts.get(args.id)
        if b is None:
            return _no(f"No broadcast {args.id} (it may be older than the last restart).", 404)
        return _ok(b.line(now), **b.view(now))

    async def _run_broadcast(self, b: Broadcast, targets: list[int]) -> None:
        try:
            sender = self.ctx.lookup(self.sender_name)
        except NameNotFound:
            b.state = "failed"
            log.error("admin.broadcast_no_sender", id=b.id)
            return
        limiter = anyio.Semaphore(self.window)
        async with anyio.create_task_group() as tg:
            if b.reply_chat is not None:
                tg.start_soon(self._report_progress, b, sender)
            async with anyio.create_task_group() as sends:
                for chat in targets:
                    await limiter.acquire()
                    sends.start_soon(self._deliver, b, sender, chat, limiter)
            b.finished = self.ctx.clock.monotonic()
            b.state = "done"
            b.changed.set()
        log.info("admin.broadcast_done", **b.view(self.ctx.clock.monotonic()))
        origin = AdminRequest(command="broadcast", args=None, origin="cli", by=b.by)
        if b.origin == "telegram":
            origin = msgspec.structs.replace(origin, origin="telegram")
        await self._activity(
            "admin.broadcast_done", origin, detail=b.view(self.ctx.clock.monotonic())
        )

    async def _deliver(
        self, b: Broadcast, sender: Ref, chat: int, limiter: anyio.Semaphore
    ) -> None:
        outcome = "failed"
        try:
            answer = await sender.ask(
                Outbound(
                    chat_id=chat,
                    text=b.text,
                    lane=Lane.BULK,
                    dedup_key=f"broadcast:{b.id}:{chat}",
                    kind="broadcast",
                ),
                self.broadcast_timeout,
            )
        except (AskTimeout, ActorStopped, ActorFailed):
            outcome = "unconfirmed"
        except MailboxFull:
            outcome = "failed"
        else:
            if isinstance(answer, Delivered):
                outcome = "sent"
            elif isinstance(answer, ChatBlocked):
                outcome = "blocked"
            elif isinstance(answer, DeliveryFailed):
                outcome = "failed"
        finally:
            limiter.release()
        setattr(b, outcome, getattr(b, outcome) + 1)
        BROADCAST_MESSAGES.labels(outcome).inc()
        step = b.percent // self.progress_step
        if step > b.reported:
            b.changed.set()

    async def _report_progress(self, b: Broadcast, sender: Ref) -> None:
        """Keep one message in the admin's chat up to date, every ``progress_step`` %."""
        assert b.reply_chat is not None
        while True:
            b.reported = b.percent // self.progress_step
            text = html.escape(b.line(self.ctx.clock.monotonic()), quote=False)
            finished = b.state != "running"
            answer = None
            with contextlib.suppress(*_ASK_ERRORS):
                answer = await sender.ask(
                    Outbound(
                        chat_id=b.reply_chat,
                        text=text,
                        lane=Lane.INTERACTIVE,
                        edit_message_id=b.progress_message,
                    ),
                    30.0,
                )
            if isinstance(answer, Delivered) and b.progress_message is None:
                b.progress_message = answer.message_id
            if finished:
                return
            if b.state == "running" and b.percent // self.progress_step <= b.reported:
                b.changed = anyio.Event()
                await b.changed.wait()


def _coupon_line(c: CouponInfo) -> str:
    uses = f"{c.uses}/{c.max_uses}" if c.max_uses is not None else f"{c.uses}/unlimited"
    value = {"percent": f"{c.value}% off", "fixed": f"${c.value} off", "free_days": ""}[c.kind]
    if c.kind == "free_days":
        value = f"{int(c.value)} free days"
    extra = f", plan {c.plan}" if c.plan else ""
    expiry = f", expires {_ts(c.expires_at)}" if c.expires_at else ""
    state = " (disabled)" if c.disabled else ""
    return f"{c.code}: {value}, used {uses}{extra}{expiry}{state}"


def _safe_args(args: Any) -> dict[str, Any]:
    """The arguments for the activity log (a broadcast's text shortened)."""
    try:
        out = msgspec.to_builtins(args)
    except (TypeError, msgspec.EncodeError):
        return {}
    if not isinstance(out, dict):
        return {}
    if isinstance(out.get("text"), str):
        out["text_chars"] = len(out["text"])
        out["text"] = out["text"][:100]
    return out


_USER_PATH: Final = re.compile(r"(^|/)user:\d+$")


def summarize_tree(tree: ActorStatus) -> dict[str, Any]:
    """The tree in a few lines: top-level parts, what is not running, busiest mailboxes.

    User actors (there may be 100,000) are counted, not listed.
    """
    nodes = tree.walk()
    users = sum(1 for n in nodes if _USER_PATH.search(n.path))
    not_running = [n for n in nodes if n.state != "running"]
    restarts = sum(n.restarts_total for n in nodes)
    busiest = sorted(
        (n for n in nodes if n.mailbox_capacity and n.mailbox_depth),
        key=lambda n: n.mailbox_depth / n.mailbox_capacity,
        reverse=True,
    )[:5]
    lines = [
        f"{tree.name}: {tree.state}, {len(nodes)} actors ({users} users), "
        f"{len(nodes) - len(not_running)} running, restarts so far {restarts}"
    ]

    def describe(node: ActorStatus, depth: int) -> None:
        box = (
            f", mailbox {node.mailbox_depth}/{node.mailbox_capacity}"
            if node.mailbox_capacity
            else ""
        )
        last = f", last error: {node.last_error[:80]}" if node.last_error else ""
        users_here = [c for c in node.children if _USER_PATH.search(c.path)]
        kids = f", {len(users_here)} user actors" if users_here else ""
        lines.append(
            f"{'  ' * depth}{node.name} [{node.kind}] {node.state}, restarts "
            f"{node.restarts_recent}/{node.restarts_total}{box}{kids}{last}"
        )
        if depth < 2:
            for child in node.children:
                if not _USER_PATH.search(child.path):
                    describe(child, depth + 1)

    for child in tree.children:
        describe(child, 1)
    if not_running:
        lines.append("Not running: " + ", ".join(n.path for n in not_running[:10]))
    return {
        "text": "\n".join(lines),
        "state": tree.state,
        "actors": len(nodes),
        "user_actors": users,
        "restarts_total": restarts,
        "not_running": [n.path for n in not_running[:50]],
        "busiest": [
            {"path": n.path, "depth": n.mailbox_depth, "capacity": n.mailbox_capacity}
            for n in busiest
        ],
        "at": time.time(),
    }
