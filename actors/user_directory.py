"""The user directory (``user-directory``) and the wiring of the users branch.

The directory is the entry point for users as people: at start it loads every reachable
user from PostgreSQL in two queries and starts their actors in bulk under the ``users``
dynamic supervisor (each actor then pushes its row to its shard); on ``/start`` it
creates the user (or marks them reachable again) and starts or refreshes their actor;
it finds the actor of a user who has none yet (`Locate`), lists presets and takes
`ChatBlocked` for users without an actor.

The front end needs only `ask_users`: it sends any `UserCommand` to the right place
(directory, ``user:<id>``, ``channel-stats``) and always returns a reply to render.

`users_branch` is the subtree as data (``rest_for_one``: shards, then the ``users``
supervisor, then the directory that fills it, the router that feeds the shards and the
notify gate). A crashed shard restarts everything after it, so the user actors push
their rows into the new shard; a crashed directory reloads and finds its users running.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec
import structlog

from actors.filter_router import FilterRouter
from actors.filter_shard import FilterShard, shard_name
from actors.notify_gate import NotifyGate
from actors.store.handle import StoreHandle
from actors.store.outbox import DEFAULT_STREAM
from actors.user import UserActor, user_name
from actors.user_store import (
    STORE_ERRORS,
    UserRecord,
    load_presets,
    load_user,
    load_users,
    register_user,
    set_reachable,
)
from messages.delivery import ChatBlocked
from messages.filters import DEFAULT_PRESETS
from messages.settings import FilterSettingsSection
from messages.users import (
    GetStatus,
    LeaderboardRequest,
    ListPresets,
    Locate,
    Located,
    NotRegistered,
    PresetInfo,
    PresetList,
    RefreshUser,
    Register,
    Unavailable,
    UserCommand,
    UserStatus,
    setting_rows,
)
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
from supervisors import (
    ChildError,
    ChildSpec,
    Restart,
    Strategy,
    dynamic_supervisor,
    start_child,
    start_children,
    supervisor,
    worker,
)

__all__ = [
    "DIRECTORY",
    "USERS_SUPERVISOR",
    "UserDirectory",
    "ask_users",
    "user_spec",
    "users_branch",
]

log = structlog.get_logger(__name__)

DIRECTORY: Final = "user-directory"
USERS_SUPERVISOR: Final = "users"
STATS: Final = "channel-stats"
START_BATCH: Final = 1_000

WELCOME: Final = (
    "Welcome to callwatch! You will be told when tokens pass your filters. "
    "Use /settings to set them or /presets to pick a ready-made set."
)


def user_spec(
    record: UserRecord,
    store: StoreHandle,
    config: FilterSettingsSection,
) -> ChildSpec:
    """The child spec of one user's actor (restarted only when it crashes)."""
    return worker(
        user_name(record.chat_id),
        UserActor,
        restart=Restart.TRANSIENT,
        user_id=record.chat_id,
        store=store,
        config=config,
        initial=record,
    )


class UserDirectory(Actor):
    """Registered as ``user-directory``; see the module docs."""

    mailbox = MailboxSpec(capacity=10_000)

    def __init__(
        self,
        store: StoreHandle,
        config: FilterSettingsSection | None = None,
        *,
        supervisor: str = USERS_SUPERVISOR,
        ask_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.config = config or FilterSettingsSection()
        self.supervisor_name = supervisor
        self.ask_timeout = ask_timeout
        self.loaded = 0

    async def started(self) -> None:
        now = self.ctx.clock.wall()
        records = await load_users(self.store.pool(), now)
        supervisor_ref = self.ctx.lookup(self.supervisor_name)
        started = existing = 0
        for begin in range(0, len(records), START_BATCH):
            chunk = records[begin : begin + START_BATCH]
            specs = [user_spec(r, self.store, self.config) for r in chunk]
            results = await start_children(supervisor_ref, specs, timeout=120.0)
            for result in results:
                if isinstance(result, ChildError):
                    if "already exists" in str(result):
                        existing += 1
                    else:
                        log.error("user_start_failed", error=str(result)[:300])
                else:
                    started += 1
        self.loaded = len(records)
        log.info("users_loaded", users=len(records), started=started, already_running=existing)

    def _running(self, chat_id: int) -> Ref | None:
        try:
            ref = self.ctx.lookup(user_name(chat_id))
        except NameNotFound:
            return None
        return ref if ref.alive else None

    async def _start(self, record: UserRecord) -> Ref:
        return await start_child(
            self.ctx.lookup(self.supervisor_name),
            user_spec(record, self.store, self.config),
        )

    async def receive(self, message: Any) -> Any:
        try:
            return await self._handle(message)
        except STORE_ERRORS as exc:
            log.warning("directory_store_error", error=repr(exc)[:200])
            return Unavailable()
        except (AskTimeout, ActorFailed, ActorStopped, MailboxFull, ChildError) as exc:
            log.warning("directory_user_unavailable", error=repr(exc)[:200])
            return Unavailable()

    async def _handle(self, message: Any) -> Any:
        if isinstance(message, Register):
            return await self._register(message)
        if isinstance(message, Locate):
            return await self._locate(message.chat_id)
        if isinstance(message, ListPresets):
            try:
                presets = await load_presets(self.store.pool())
            except STORE_ERRORS:
                presets = DEFAULT_PRESETS
            return PresetList(
                tuple(
                    PresetInfo(
                        name=p.name, description=p.description, rows=setting_rows(p.settings)
                    )
                    for p in presets
                )
            )
        if isinstance(message, ChatBlocked):
            ref = self._running(message.chat_id)
            if ref is not None:
                ref.tell_nowait(message)
            else:
                await set_reachable(self.store.pool(), message.chat_id, False)
            return None
        if isinstance(message, RefreshUser):
            # Payments and admin tell this; a user without an actor gets one (it loads
            # itself). `ask_users` sends RefreshUser to the actor for a `UserStatus`.
            ref = self._running(message.chat_id)
            if ref is not None:
                ref.tell_nowait(message)
            else:
                await self._locate(message.chat_id)
            return None
        log.warning("directory_unexpected", message=type(message).__name__)
        return None

    async def _register(self, message: Register) -> UserStatus:
        now = self.ctx.clock.wall()
        record, created = await register_user(
            self.store.pool(), message.chat_id, message.username, message.first_name, now
        )
        if record.locked:
            return UserStatus(
                chat_id=record.chat_id,
                created=created,
                locked=True,
                settings=record.settings,
                rows=setting_rows(record.settings),
                message="Your account is locked. Please contact support.",
            )
        ref = self._running(message.chat_id)
        if ref is None:
            ref = await self._start(record)
            status: UserStatus = await ref.ask(GetStatus(message.chat_id), self.ask_timeout)
        else:
            status = await ref.ask(message, self.ask_timeout)
        if created:
            text = (
                WELCOME if status.subscribed else WELCOME + " Subscribe to start receiving alerts."
            )
            status = msgspec.structs.replace(status, created=True, message=text)
        return status

    async def _locate(self, chat_id: int) -> Located | NotRegistered:
        ref = self._running(chat_id)
        if ref is not None:
            return Located(chat_id, ref)
        record = await load_user(self.store.pool(), chat_id, self.ctx.clock.wall())
        if record is None:
            return NotRegistered(chat_id)
        if record.locked:
            return NotRegistered(chat_id, "Your account is locked. Please contact support.")
        return Located(chat_id, await self._start(record))


async def ask_users(
    lookup: Callable[[str], Ref], command: UserCommand, timeout: float = 5.0
) -> Any:
    """Send a bot command where it belongs and return the reply (a `UserReply`).

    ``lookup`` is ``ctx.lookup`` (or ``tree.lookup``). Never raises for an unavailable
    actor or a timeout: the user gets `Unavailable` to read instead.
    """
    try:
        if isinstance(command, LeaderboardRequest):
            return await lookup(STATS).ask(command, timeout)
        if isinstance(command, Register | ListPresets):
            return await lookup(DIRECTORY).ask(command, timeout)
        try:
            ref = lookup(user_name(command.chat_id))
        except NameNotFound:
            located = await lookup(DIRECTORY).ask(Locate(command.chat_id), timeout)
            if not isinstance(located, Located):
                return located
            assert isinstance(located.ref, Ref)
            ref = located.ref
        return await ref.ask(command, timeout)
    except (NameNotFound, AskTimeout, ActorFailed, ActorStopped, MailboxFull) as exc:
        log.warning("ask_users_failed", command=type(command).__name__, error=repr(exc)[:200])
        return Unavailable()


def users_branch(
    store: StoreHandle,
    config: FilterSettingsSection | None = None,
    *,
    name: str = "user-service",
    max_users: int = 100_000,
    record_calls: bool = True,
    history_stream: str = DEFAULT_STREAM,
) -> ChildSpec:
    """The users subtree; place it after ``channel-stats``, ``multipliers`` and ``sender``."""
    config = config or FilterSettingsSection()
    shards = [
        worker(shard_name(i), FilterShard, index=i, shards=config.shards)
        for i in range(config.shards)
    ]
    return supervisor(
        name,
        [
            *shards,
            dynamic_supervisor(USERS_SUPERVISOR, max_children=max_users),
            worker(DIRECTORY, UserDirectory, store=store, config=config),
            worker("filters", FilterRouter, store=store, config=config, record_calls=record_calls),
            worker(
                "notify-gate",
                NotifyGate,
                store=store,
                config=config,
                history_stream=history_stream,
            ),
        ],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=10,
        period=60.0,
    )
