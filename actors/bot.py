"""The Telegram front end (``bot``): python-telegram-bot 22 embedded as a supervised actor.

PTB's `Application` is driven by hand (never ``run_polling``, which takes over the loop):
``started`` initializes it (``getMe``: a bad token crashes the start), sets the command
menu, starts it and starts long polling; ``run`` serves the mailbox beside a watchdog;
``stopped`` stops polling, the application and shuts it down. Polling that keeps failing
(``max_poll_errors`` errors within ``poll_error_window_s``, counted through PTB's
``error_callback`` plus the timeouts PTB never reports), a revoked token, or a polling
task that died, crashes the actor, and the supervisor's restart is the reconnect.

Handlers only translate: an update becomes a message to the right actor (users through
`ask_users`, payments, admin) and the reply is rendered (`actors.bot_texts`,
`actors.bot_keyboards`) and sent through the sender's interactive lane; the bot never
sends a message itself (answering a button press is not a message and is done here).
PTB's own rate limiter is not used: pacing lives in the sender, once.

Every raw update is first screened, before PTB parses it (`actors.bot_intake`): a token
bucket per chat (admins exempt) drops what a flooding chat sends past its rate, with one
polite warning per window, counted as ``callwatch_bot_updates_dropped_total{reason=
"throttled"}``; parsing is the costly part, so a flood costs almost nothing. Then the guard
(handler group -1) drops and counts what must not go further: updates PTB could not parse
or that lack a chat or sender (``malformed``), texts over 4096 characters (``oversize``),
chats that are not private (``not_private``; admin groups may send /admin) and locked
users (``locked``, told so).

One chat's updates are handled in order (a lock per chat), different chats concurrently,
so a flooding user only ever waits for themself.

The small per-chat state kept here: which filter a chat is about to type a value for
(and the settings message to edit afterwards), and which chats are locked (loaded at
start, then kept current by the admin actor's `LockChanged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, Final, NoReturn

import anyio
import structlog
from cachetools import TTLCache
from prometheus_client import Counter, Histogram
from telegram import BotCommand, Update
from telegram.constants import ChatMemberStatus, ChatType
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    ChatMemberHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest

from actors import bot_texts as texts
from actors.bot_intake import DROPPED, ChatLocks, IntakeBot, RateLimiter, Verdict, raw_chat
from actors.bot_keyboards import (
    Cancel,
    ChoosePlan,
    Menu,
    PickPreset,
    SetField,
    cancel_keyboard,
    parse_callback,
    plans_keyboard,
    presets_keyboard,
    settings_keyboard,
)
from actors.store.handle import StoreHandle
from actors.user_directory import DIRECTORY, ask_users
from actors.user_store import STORE_ERRORS
from messages.admin import AdminInputError, AdminResult, LockChanged, build_request
from messages.admin import parse_admin_text as parse_admin
from messages.billing import (
    CreateOrder,
    ListPlans,
    OrderCreated,
    PlanList,
    RedeemCoupon,
    RedeemResult,
    Refused,
    SubscriptionInfo,
    SubscriptionStatus,
)
from messages.delivery import MAX_TEXT, ChatBlocked, Delivered, Lane, Outbound
from messages.payments import Plan
from messages.settings import TelegramSettings
from messages.users import (
    ApplyPreset,
    GetSettings,
    GetStatus,
    GetTracked,
    LeaderboardRequest,
    LeaderboardView,
    ListPresets,
    NotRegistered,
    Pause,
    PresetList,
    RefreshUser,
    Register,
    Resume,
    SetFilter,
    SettingsRejected,
    SettingsUpdated,
    SettingsView,
    TrackedList,
    Unavailable,
    UserStatus,
)
from runtime import (
    Actor,
    ActorFailed,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    MailboxSpec,
    NameNotFound,
)

__all__ = [
    "ALLOWED_UPDATES",
    "DROPPED",
    "BotStats",
    "PollingFailed",
    "RateLimiter",
    "TelegramBot",
    "Verdict",
]

log = structlog.get_logger(__name__)

ALLOWED_UPDATES: Final = ("message", "callback_query", "my_chat_member")
_COUPON: Final = re.compile(r"[A-Za-z0-9_-]{3,32}")
_ASK_ERRORS: Final = (AskTimeout, ActorStopped, ActorFailed, MailboxFull, NameNotFound)

UPDATES = Counter("callwatch_bot_updates", "Updates received from Telegram", ["kind"])
COMMANDS = Counter("callwatch_bot_commands", "Commands and button presses handled", ["command"])
REPLY_SECONDS = Histogram(
    "callwatch_bot_reply_seconds",
    "From an update's arrival to Telegram accepting the reply",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30),
)
POLL_ERRORS = Counter("callwatch_bot_poll_errors", "getUpdates calls that failed", ["error"])


class PollingFailed(RuntimeError):
    """Long polling kept failing (or stopped): crash so the supervisor restarts the bot."""


class BotStats:
    """Ask the bot for its counters (a dict); for tests and the status page."""


STATS: Final = BotStats()


Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]


class TelegramBot(Actor):
    """Registered as ``bot``; see the module docs."""

    mailbox = MailboxSpec(capacity=1_000)

    def __init__(
        self,
        telegram: TelegramSettings,
        *,
        base_url: str = "",
        base_file_url: str = "",
        store: StoreHandle | None = None,
        sender: str = "sender",
        payments: str = "payments",
        admin: str = "admin",
        rate_burst: float = 5.0,
        rate_per_s: float = 1.0,
        warn_window_s: float = 60.0,
        concurrency: int = 256,
        ask_timeout: float = 5.0,
        reply_timeout: float = 30.0,
        admin_timeout: float = 30.0,
        input_ttl_s: float = 900.0,
        max_poll_errors: int = 5,
        poll_error_window_s: float = 60.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.telegram = telegram
        self.base_url = base_url or telegram.api_base_url
        self.base_file_url = base_file_url or _file_url(self.base_url)
        self.store = store
        self.sender_name = sender
        self.payments_name = payments
        self.admin_name = admin
        self.admins = frozenset(telegram.admin_chat_ids)
        self.rate = (rate_burst, rate_per_s, warn_window_s)
        self.concurrency = concurrency
        self.ask_timeout = ask_timeout
        self.reply_timeout = reply_timeout
        self.admin_timeout = admin_timeout
        self.input_ttl_s = input_ttl_s
        self.max_poll_errors = max_poll_errors
        self.poll_error_window_s = poll_error_window_s
        self.request_timeout = request_timeout
        self.app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self.locked: set[int] = set()
        self.counts: Tally[str] = Tally()
        self.limiter: RateLimiter | None = None
        self._awaiting: TTLCache[int, tuple[str, int]] | None = None
        self._locks = ChatLocks()
        self._poll_errors: deque[float] = deque()
        self._trip: anyio.Event | None = None
        self._bot: IntakeBot | None = None
        self._failure = ""
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def started(self) -> None:
        token = self.telegram.bot_token
        if token is None or not token.reveal():
            raise RuntimeError("no Telegram bot token configured (telegram.bot_token)")
        clock = self.ctx.clock
        burst, per_s, window = self.rate
        self.limiter = RateLimiter(burst, per_s, window, clock.monotonic)
        self._awaiting = TTLCache(100_000, ttl=self.input_ttl_s, timer=clock.monotonic)
        self._trip = anyio.Event()
        self._stopping = False
        await self._load_locked()
        timeout = self.request_timeout
        options: dict[str, Any] = {
            "request": HTTPXRequest(
                connection_pool_size=16,
                read_timeout=timeout,
                write_timeout=timeout,
                connect_timeout=min(timeout, 5.0),
                pool_timeout=timeout,
            ),
            "get_updates_request": HTTPXRequest(
                connection_pool_size=2,
                read_timeout=timeout,
                write_timeout=timeout,
                connect_timeout=min(timeout, 5.0),
                pool_timeout=timeout,
            ),
        }
        if self.base_url:
            options["base_url"] = self.base_url
        if self.base_file_url:
            options["base_file_url"] = self.base_file_url
        bot = IntakeBot(token.reveal(), on_poll=self._on_poll, screen=self._screen, **options)
        self._bot = bot
        app = (
            Application.builder()
            .bot(bot)
            .concurrent_updates(self.concurrency)
            .job_queue(None)
            .build()
        )
        self._register(app)
        self.app = app
        await app.initialize()
        try:
            await bot.set_my_commands([BotCommand(n, d) for n, d in texts.COMMANDS])
        except TelegramError as exc:
            log.warning("bot.set_commands_failed", error=type(exc).__name__)
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(
            timeout=timedelta(seconds=self.telegram.poll_timeout),
            allowed_updates=list(ALLOWED_UPDATES),
            drop_pending_updates=False,
            error_callback=self._poll_error,
        )
        task = getattr(app.updater, "_Updater__polling_task", None)
        if isinstance(task, asyncio.Task):
            task.add_done_callback(self._polling_done)
        log.info("bot.polling", me=bot.username, admins=len(self.admins))

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watchdog)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def stopped(self) -> None:
        self._stopping = True
        app, self.app = self.app, None
        if app is None:
            return
        with anyio.move_on_after(4.0):
            for step in ("updater", "app", "shutdown"):
                try:
                    if step == "updater" and app.updater is not None and app.updater.running:
                        await app.updater.stop()
                    elif step == "app" and app.running:
                        await app.stop()
                    elif step == "shutdown":
                        await app.shutdown()
                except Exception as exc:
                    log.warning("bot.stop_step_failed", step=step, error=repr(exc)[:200])

    async def _watchdog(self) -> None:
        assert self._trip is not None
        await self._trip.wait()
        raise PollingFailed(self._failure)

    def _fail(self, reason: str) -> None:
        if self._stopping or self._trip is None or self._trip.is_set():
            return
        self._failure = reason
        log.error("bot.polling_failed", reason=reason)
        self._trip.set()

    def _poll_error(self, exc: TelegramError) -> None:
        """PTB's error_callback: count; past the threshold, crash."""
        POLL_ERRORS.labels(type(exc).__name__).inc()
        if isinstance(exc, InvalidToken):
            self._fail("the bot token was refused")
            return
        now = self.ctx.clock.monotonic()
        errors = self._poll_errors
        errors.append(now)
        while errors and errors[0] < now - self.poll_error_window_s:
            errors.popleft()
        log.warning("bot.poll_error", error=type(exc).__name__, recent=len(errors))
        if len(errors) >= self.max_poll_errors:
            self._fail(f"{len(errors)} polling errors within {self.poll_error_window_s:g} s")

    def _on_poll(self, exc: TelegramError | None) -> None:
        if exc is None:
            self._poll_errors.clear()
        else:
            self._poll_error(exc)

    def _polling_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._fail(f"polling stopped: {type(exc).__name__}")

    async def _load_locked(self) -> None:
        if self.store is None:
            return
        try:
            rows = await self.store.pool().fetch("SELECT chat_id FROM users WHERE locked")
        except STORE_ERRORS as exc:
            log.warning("bot.locked_unavailable", error=type(exc).__name__)
            return
        self.locked = {int(r["chat_id"]) for r in rows}

    # -- mailbox -----------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if isinstance(message, LockChanged):
            if message.locked:
                self.locked.add(message.chat_id)
            else:
                self.locked.discard(message.chat_id)
            return None
        if isinstance(message, BotStats):
            return {
                **self.counts,
                "locked": len(self.locked),
                "awaiting": len(self._awaiting or ()),
                "chat_locks": len(self._locks),
            }
        log.warning("bot.unexpected_message", type=type(message).__name__)
        return None

    # -- wiring ------------------------------------------------------------------------------

    def _register(self, app: Application[Any, Any, Any, Any, Any, Any]) -> None:
        app.add_handler(TypeHandler(Update, self._guard), group=-1)
        commands: dict[str, Handler] = {
            "start": self._start,
            "help": self._help,
            "settings": self._settings,
            "presets": self._presets,
            "pause": self._pause,
            "resume": self._resume,
            "status": self._status,
            "leaderboard": self._leaderboard,
            "tracked": self._tracked,
            "subscribe": self._subscribe,
            "redeem": self._redeem,
        }
        for name, callback in commands.items():
            app.add_handler(CommandHandler(name, self._serial(callback, name)))
        app.add_handler(CommandHandler(["admin", "a"], self._serial(self._admin, "admin")))
        app.add_handler(MessageHandler(filters.COMMAND, self._serial(self._unknown, "unknown")))
        app.add_handler(
            MessageHandler(filters.TEXT & ~filters.COMMAND, self._serial(self._text, "text"))
        )
        app.add_handler(CallbackQueryHandler(self._serial(self._callback, "button")))
        app.add_handler(ChatMemberHandler(self._member, ChatMemberHandler.MY_CHAT_MEMBER))
        app.add_handler(MessageHandler(filters.ALL, self._serial(self._other, "other")))
        app.add_error_handler(self._on_error)

    def _serial(self, handler: Handler, name: str) -> Handler:
        """Run ``handler`` holding its chat's lock (one chat's updates stay in order)."""

        async def wrapped(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            chat = update.effective_chat
            assert chat is not None  # the guard dropped updates without one
            COMMANDS.labels(name).inc()
            self.counts[f"handled.{name}"] += 1
            started = self.ctx.clock.monotonic()
            async with self._locks.hold(chat.id):
                await handler(update, context)
            REPLY_SECONDS.observe(self.ctx.clock.monotonic() - started)

        return wrapped

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        self.counts["handler_errors"] += 1
        error = context.error
        log.error(
            "bot.handler_error",
            error=type(error).__name__,
            detail=str(error)[:200],
            update_id=getattr(update, "update_id", None),
        )

    # -- the guard ---------------------------------------------------------------------------

    def _drop(self, reason: str) -> NoReturn:
        DROPPED.labels(reason).inc()
        self.counts[f"dropped.{reason}"] += 1
        raise ApplicationHandlerStop

    def _screen(self, raw: Any) -> bool:
        """Before parsing: the per-chat rate limit (admins exempt, membership changes free).

        Runs on every raw update in arrival order; False drops it (counted; the first drop
        of a window sends the chat one polite warning).
        """
        chat_id = raw_chat(raw)
        if chat_id is None or chat_id in self.admins:
            return True
        assert self.limiter is not None
        verdict = self.limiter.check(chat_id)
        if verdict == Verdict.OK:
            return True
        if verdict == Verdict.WARN:
            self.counts["throttle_warnings"] += 1
            self._tell(chat_id, texts.THROTTLED)
            log.info("bot.throttled", chat_id=chat_id)
        DROPPED.labels("throttled").inc()
        self.counts["dropped.throttled"] += 1
        return False

    async def _guard(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        bot = self._bot
        if bot is not None and update.update_id in bot._cw_placeholders:
            bot._cw_placeholders.discard(update.update_id)
            raise ApplicationHandlerStop
        if update.message is not None:
            kind = "message"
        elif update.callback_query is not None:
            kind = "callback_query"
        elif update.my_chat_member is not None:
            kind = "my_chat_member"
        else:
            UPDATES.labels("other").inc()
            self._drop("malformed")
        UPDATES.labels(kind).inc()
        chat, user = update.effective_chat, update.effective_user
        if chat is None or user is None or user.is_bot:
            self._drop("malformed")
        assert chat is not None and user is not None
        admin = chat.id in self.admins
        if kind == "my_chat_member":
            if chat.type != ChatType.PRIVATE:
                self._drop("not_private")
            return
        if kind == "message":
            message = update.message
            assert message is not None
            text = message.text or message.caption or ""
            if len(text) > MAX_TEXT:
                self._drop("oversize")
            if chat.type != ChatType.PRIVATE and not (admin and _is_admin_command(text)):
                self._drop("not_private")
        else:
            query = update.callback_query
            assert query is not None
            data = query.data
            if data is None or len(data.encode()) > 64:
                self._drop("malformed")
            if chat.type != ChatType.PRIVATE or user.id != chat.id:
                self._drop("not_private")
        if not admin and chat.id in self.locked:
            self._tell(chat.id, texts.LOCKED)
            self._drop("locked")

    # -- sending -----------------------------------------------------------------------------

    def _tell(self, chat_id: int, text: str) -> None:
        try:
            sender = self.ctx.lookup(self.sender_name)
        except NameNotFound:
            log.warning("bot.no_sender")
            return
        sender.tell_nowait(Outbound(chat_id=chat_id, text=text, lane=Lane.INTERACTIVE))

    async def _send(
        self,
        chat_id: int,
        text: str,
        markup: dict[str, object] | None = None,
        *,
        edit: int | None = None,
    ) -> int | None:
        """Reply through the sender's interactive lane; the message id once delivered."""
        outbound = Outbound(
            chat_id=chat_id,
            text=texts.clip(text),
            lane=Lane.INTERACTIVE,
            reply_markup=markup,
            edit_message_id=edit,
        )
        try:
            answer = await self.ctx.lookup(self.sender_name).ask(outbound, self.reply_timeout)
        except _ASK_ERRORS as exc:
            self.counts["reply_failed"] += 1
            log.warning("bot.reply_failed", chat_id=chat_id, error=type(exc).__name__)
            return None
        if isinstance(answer, Delivered):
            return answer.message_id
        self.counts["reply_undelivered"] += 1
        log.info("bot.reply_undelivered", chat_id=chat_id, answer=type(answer).__name__)
        return None

    async def _users(self, command: Any) -> Any:
        return await ask_users(self.ctx.lookup, command, self.ask_timeout)

    async def _payments(self, request: Any) -> Any:
        try:
            return await self.ctx.lookup(self.payments_name).ask(request, self.ask_timeout * 2)
        except _ASK_ERRORS as exc:
            log.warning("bot.payments_unavailable", error=type(exc).__name__)
            return Refused("Payments are briefly unavailable. Please try again in a minute.")

    def _refresh_user(self, chat_id: int) -> None:
        """Make the user's actor reload its standing (after a coupon granted time)."""
        with contextlib.suppress(NameNotFound):
            self.ctx.lookup(DIRECTORY).tell_nowait(RefreshUser(chat_id))

    def _awaiting_pop(self, chat_id: int) -> tuple[str, int] | None:
        assert self._awaiting is not None
        return self._awaiting.pop(chat_id, None)

    # -- commands ----------------------------------------------------------------------------

    async def _start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        self._awaiting_pop(chat)
        sender_user = update.effective_user
        reply = await self._users(
            Register(
                chat_id=chat,
                username=sender_user.username if sender_user else None,
                first_name=sender_user.first_name if sender_user else None,
            )
        )
        if isinstance(reply, UserStatus):
            (self.locked.add if reply.locked else self.locked.discard)(chat)
            await self._send(chat, texts.start_text(reply))
        else:
            await self._send(chat, _problem(reply))

    async def _help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        await self._send(chat, texts.help_text())

    async def _settings(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        self._awaiting_pop(chat)
        await self._show_settings(chat)

    async def _show_settings(
        self, chat: int, *, edit: int | None = None, note: str | None = None
    ) -> None:
        reply = await self._users(GetSettings(chat))
        if isinstance(reply, SettingsView):
            await self._send(
                chat,
                texts.settings_text(reply.rows, note),
                settings_keyboard(reply.rows),
                edit=edit,
            )
        else:
            await self._send(chat, _problem(reply))

    async def _presets(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        await self._show_presets(chat)

    async def _show_presets(self, chat: int) -> None:
        reply = await self._users(ListPresets(chat))
        if isinstance(reply, PresetList):
            names = [p.name for p in reply.presets]
            await self._send(chat, texts.presets_text(reply), presets_keyboard(names))
        else:
            await self._send(chat, _problem(reply))

    async def _pause(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        await self._settings_change(chat, Pause(chat))

    async def _resume(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        await self._settings_change(chat, Resume(chat))

    async def _settings_change(self, chat: int, command: Any) -> None:
        reply = await self._users(command)
        if isinstance(reply, SettingsUpdated | SettingsRejected):
            await self._send(chat, texts.esc(reply.message))
        else:
            await self._send(chat, _problem(reply))

    async def _status(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        status, tracked, info = await asyncio.gather(
            self._users(GetStatus(chat)),
            self._users(GetTracked(chat_id=chat, limit=1_000)),
            self._payments(SubscriptionStatus(user_id=chat)),
        )
        if not isinstance(status, UserStatus):
            await self._send(chat, _problem(status))
            return
        (self.locked.add if status.locked else self.locked.discard)(chat)
        count = len(tracked.tokens) if isinstance(tracked, TrackedList) else None
        sub = info if isinstance(info, SubscriptionInfo) else None
        await self._send(chat, texts.status_text(status, sub, count))

    async def _leaderboard(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        reply = await self._users(LeaderboardRequest(10))
        if isinstance(reply, LeaderboardView):
            await self._send(chat, texts.leaderboard_text(reply))
        else:
            await self._send(chat, _problem(reply))

    async def _tracked(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        reply = await self._users(GetTracked(chat_id=chat, limit=20))
        if isinstance(reply, TrackedList):
            await self._send(chat, texts.tracked_text(reply, self.ctx.clock.wall()))
        else:
            await self._send(chat, _problem(reply))

    async def _subscribe(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        await self._show_plans(chat)

    async def _show_plans(self, chat: int) -> None:
        reply = await self._payments(ListPlans())
        if isinstance(reply, PlanList):
            markup = (
                plans_keyboard([q.plan.value for q in reply.plans], reply.methods)
                if reply.methods
                else None
            )
            await self._send(chat, texts.plans_text(reply), markup)
        else:
            await self._send(chat, _problem(reply))

    async def _redeem(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        args = context.args or []
        if len(args) != 1 or not _COUPON.fullmatch(args[0]):
            await self._send(chat, texts.REDEEM_USAGE)
            return
        reply = await self._payments(RedeemCoupon(user_id=chat, code=args[0]))
        await self._send(chat, self._billing_text(chat, reply))

    def _billing_text(self, chat: int, reply: Any) -> str:
        if isinstance(reply, RedeemResult):
            if reply.ok and reply.subscription is not None:
                self._refresh_user(chat)
            return texts.esc(reply.text)
        if isinstance(reply, OrderCreated):
            return texts.order_text(reply)
        return _problem(reply)

    async def _admin(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, user = _ids(update)
        if chat not in self.admins:
            self.counts["admin_refused"] += 1
            log.warning("admin.refused", chat_id=chat, user_id=user, origin="telegram")
            await self._send(chat, texts.ADMIN_ONLY)
            return
        message = update.message
        text = message.text if message is not None and message.text else ""
        _, _, rest = text.strip().partition(" ")
        try:
            request = build_request(
                *parse_admin(rest or "help"), origin="telegram", by=chat, reply_chat=chat
            )
        except AdminInputError as exc:
            await self._send(chat, texts.admin_text(exc.reason))
            return
        try:
            result = await self.ctx.lookup(self.admin_name).ask(request, self.admin_timeout)
        except _ASK_ERRORS as exc:
            log.warning("bot.admin_unavailable", error=type(exc).__name__)
            await self._send(chat, "The admin service is not answering right now.")
            return
        if isinstance(result, AdminResult):
            await self._send(chat, texts.admin_text(result.text))

    async def _unknown(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        message = update.message
        word = (message.text or "").split(None, 1)[0] if message is not None else ""
        name = word.lstrip("/").split("@", 1)[0].lower()
        await self._send(chat, texts.unknown_command(name))

    async def _other(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        await self._send(chat, texts.NOT_UNDERSTOOD)

    async def _text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        message = update.message
        assert message is not None and message.text is not None
        assert self._awaiting is not None
        waiting = self._awaiting.get(chat)
        if waiting is None:
            await self._send(chat, texts.NOT_UNDERSTOOD)
            return
        field, settings_message = waiting
        reply = await self._users(SetFilter(chat_id=chat, field=field, text=message.text))
        if isinstance(reply, SettingsUpdated):
            self._awaiting_pop(chat)
            await self._send(
                chat,
                texts.settings_text(reply.rows, reply.message),
                settings_keyboard(reply.rows),
                edit=settings_message,
            )
        elif isinstance(reply, SettingsRejected):
            await self._send(chat, texts.prompt_text(field, None, reply.message), cancel_keyboard())
        else:
            if isinstance(reply, NotRegistered):
                self._awaiting_pop(chat)
            await self._send(chat, _problem(reply))

    # -- buttons -----------------------------------------------------------------------------

    async def _callback(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        chat, _ = _ids(update)
        query = update.callback_query
        assert query is not None
        pressed = parse_callback(query.data)
        message = query.message
        if pressed is None or message is None or query.data not in _offered(message):
            self.counts["bad_callback"] += 1
            await _answer(query, texts.EXPIRED_BUTTON, alert=True)
            return
        message_id = message.message_id
        if isinstance(pressed, SetField):
            await self._press_field(chat, pressed.field, message_id, query)
        elif isinstance(pressed, Cancel):
            waiting = self._awaiting_pop(chat)
            if waiting is None:
                await _answer(query, texts.NOTHING_TO_CANCEL)
                return
            await _answer(query, "Cancelled.")
            await self._show_settings(chat, edit=waiting[1])
            if waiting[1] != message_id:
                await self._send(chat, "Cancelled.", None, edit=message_id)
        elif isinstance(pressed, PickPreset):
            await _answer(query)
            reply = await self._users(ApplyPreset(chat_id=chat, name=pressed.name))
            if isinstance(reply, SettingsUpdated):
                await self._send(
                    chat,
                    texts.settings_text(reply.rows, reply.message),
                    settings_keyboard(reply.rows),
                )
            elif isinstance(reply, SettingsRejected):
                await self._send(chat, texts.esc(reply.message))
            else:
                await self._send(chat, _problem(reply))
        elif isinstance(pressed, ChoosePlan):
            await _answer(query)
            await self._order(chat, pressed)
        elif isinstance(pressed, Menu):
            await _answer(query)
            if pressed.name == "settings":
                self._awaiting_pop(chat)
                await self._show_settings(chat)
            elif pressed.name == "presets":
                await self._show_presets(chat)
            else:
                await self._show_plans(chat)

    async def _press_field(self, chat: int, field: str, message_id: int, query: Any) -> None:
        assert self._awaiting is not None
        reply = await self._users(GetSettings(chat))
        if not isinstance(reply, SettingsView):
            await _answer(query, _plain_problem(reply), alert=True)
            return
        if field == "paused":
            await _answer(query)
            command = Resume(chat) if reply.settings.paused else Pause(chat)
            changed = await self._users(command)
            if isinstance(changed, SettingsUpdated):
                self._awaiting_pop(chat)
                await self._send(
                    chat,
                    texts.settings_text(changed.rows, changed.message),
                    settings_keyboard(changed.rows),
                    edit=message_id,
                )
            else:
                await self._send(chat, _problem(changed))
            return
        current = next((r.value for r in reply.rows if r.field == field), None)
        self._awaiting[chat] = (field, message_id)
        await _answer(query)
        await self._send(
            chat, texts.prompt_text(field, current), cancel_keyboard(), edit=message_id
        )

    async def _order(self, chat: int, pressed: ChoosePlan) -> None:
        plans = await self._payments(ListPlans())
        if not isinstance(plans, PlanList) or pressed.method not in plans.methods:
            await self._send(chat, "That payment method is not available right now. /subscribe")
            return
        reply = await self._payments(
            CreateOrder(user_id=chat, plan=Plan(pressed.plan), method=pressed.method)
        )
        markup: dict[str, object] | None = None
        if isinstance(reply, OrderCreated) and reply.pay_url.startswith(("https://", "http://")):
            markup = {"inline_keyboard": [[{"text": "Pay now", "url": reply.pay_url}]]}
        await self._send(chat, self._billing_text(chat, reply), markup)

    # -- membership --------------------------------------------------------------------------

    async def _member(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        change = update.my_chat_member
        if change is None:
            return
        chat = change.chat.id
        status = change.new_chat_member.status
        self.counts[f"member.{status}"] += 1
        if status in (ChatMemberStatus.BANNED, ChatMemberStatus.LEFT):
            self._awaiting_pop(chat)
            log.info("bot.blocked_by_user", chat_id=chat)
            try:
                self.ctx.lookup(DIRECTORY).tell_nowait(ChatBlocked(chat))
            except NameNotFound:
                log.warning("bot.no_directory")


# -- helpers -----------------------------------------------------------------------------------


def _file_url(base_url: str) -> str:
    """The file URL that goes with a Bot API base URL ("…/bot" -> "…/file/bot")."""
    if base_url.endswith("/bot"):
        return base_url[: -len("/bot")] + "/file/bot"
    return ""


def _offered(message: Any) -> set[str]:
    """The callback data of the buttons on ``message`` as Telegram shows it now: a press
    whose data is not among them did not come from a button we sent."""
    markup = getattr(message, "reply_markup", None)
    rows = getattr(markup, "inline_keyboard", None) or ()
    return {b.callback_data for row in rows for b in row if isinstance(b.callback_data, str)}


def _is_admin_command(text: str) -> bool:
    word = text.split(None, 1)[0] if text.strip() else ""
    return word.split("@", 1)[0].lower() in ("/admin", "/a")


def _ids(update: Update) -> tuple[int, int]:
    chat, user = update.effective_chat, update.effective_user
    assert chat is not None and user is not None
    return chat.id, user.id


def _problem(reply: Any) -> str:
    """A reply that is not the expected one, as a sentence for the user (HTML)."""
    return texts.esc(_plain_problem(reply))


def _plain_problem(reply: Any) -> str:
    if isinstance(reply, NotRegistered | Unavailable):
        return reply.message
    if isinstance(reply, Refused):
        return reply.reason
    return Unavailable().message


async def _answer(query: Any, text: str | None = None, *, alert: bool = False) -> None:
    """answerCallbackQuery (not a message, so not through the sender); failures are benign."""
    try:
        await query.answer(text, show_alert=alert)
    except TelegramError as exc:
        log.debug("bot.answer_failed", error=type(exc).__name__)
