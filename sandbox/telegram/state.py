"""The emulated Telegram side: chats, messages, pending updates, logs and injected faults.

Everything here runs on the event loop thread that serves HTTP, so plain attributes are
enough: there is no lock, and every change wakes the waiters (long polls, `wait_until`)
through a fresh `asyncio.Event`, so tests and long polls react to a push at once instead of
polling with sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.telegram.entities import command_entities, parse_text
from sandbox.telegram.limits import RateLimits

__all__ = [
    "DEFAULT_LIMITED_METHODS",
    "CallRecord",
    "EmulatorState",
    "Fault",
    "SentMessage",
    "StoredFile",
    "StoredMessage",
]

DEFAULT_LIMITED_METHODS = frozenset(
    {
        "sendmessage",
        "sendphoto",
        "senddocument",
        "editmessagetext",
        "editmessagereplymarkup",
    }
)
"""Methods that deliver or change a visible message and so count against the flood limits."""

MESSAGES_KEPT_PER_CHAT = 2_000
DEFAULT_UPDATE_TYPES_EXCLUDED = frozenset(
    {"chat_member", "message_reaction", "message_reaction_count"}
)

_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: injected error",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One Bot API call as the emulator answered it; `t` is read from the emulator's clock."""

    method: str
    params: dict[str, Any]
    chat_id: int | str | None
    t: float
    status: int
    ok: bool
    description: str | None = None
    retry_after: int | None = None
    injected: bool = False


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message the bot delivered (sendMessage / sendPhoto / sendDocument) and Telegram kept."""

    chat_id: int
    message_id: int
    method: str
    text: str | None
    plain_text: str | None
    parse_mode: str | None
    reply_markup: dict[str, Any] | None
    photo_size: int | None
    document_size: int | None
    t: float


@dataclass
class StoredMessage:
    """The current state of a message in a chat, as edits and deletions leave it."""

    chat_id: int
    message_id: int
    from_bot: bool
    api: dict[str, Any]
    safe_html: str
    deleted: bool = False


_NO_MESSAGES: OrderedDict[int, StoredMessage] = OrderedDict()


@dataclass(frozen=True, slots=True)
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    mime_type: str
    file_name: str


@dataclass
class Fault:
    """An injected failure for the next `remaining` calls of a method ("*" = any method)."""

    kind: str
    remaining: int
    code: int = 0
    description: str = ""
    retry_after: int | None = None
    seconds: float = 0.0
    after_delivery: bool = False


@dataclass
class _Callback:
    chat_id: int
    message_id: int
    answered: bool = False


@dataclass
class _Notice:
    chat_id: int
    text: str
    show_alert: bool
    t: float


@dataclass
class _Counters:
    by_method: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    injected: int = 0


class EmulatorState:
    """The Telegram side of the conversation, shared by the Bot API and the control API."""

    def __init__(
        self,
        *,
        token: str = "123456:TEST-TOKEN",  # noqa: S107 - the emulator's fake token
        global_rate: float = 30.0,
        private_interval: float = 1.0,
        group_per_minute: int = 20,
        private_tolerance: float = 0.0,
        enforce_limits: bool = True,
        limited_methods: frozenset[str] = DEFAULT_LIMITED_METHODS,
        latency: float = 0.0,
        max_history: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
        bot_username: str = "callwatch_emulator_bot",
        bot_name: str = "Callwatch (emulator)",
    ) -> None:
        bot_id_text = token.split(":", 1)[0]
        if ":" not in token or not bot_id_text.isdigit():
            raise ValueError("token must look like '<digits>:<secret>'")
        self.token = token
        self.clock = clock
        self.latency = latency
        self.max_history = max_history
        self.limited_methods = frozenset(m.lower() for m in limited_methods)
        self.limits = RateLimits(
            global_rate=global_rate,
            private_interval=private_interval,
            group_per_minute=group_per_minute,
            private_tolerance=private_tolerance,
            enabled=enforce_limits,
        )
        self.bot_user: dict[str, Any] = {
            "id": int(bot_id_text),
            "is_bot": True,
            "first_name": bot_name,
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.calls: list[CallRecord] = []
        self.violations: dict[str, int] = {"global": 0, "private": 0, "group": 0}
        self.blocked: set[int] = set()
        self.chats: dict[int, dict[str, Any]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.files: dict[str, StoredFile] = {}
        self.allowed_updates: frozenset[str] | None = None
        self.counters = _Counters()
        self._sent: list[SentMessage] = []
        self._sent_by_chat: dict[int, list[SentMessage]] = {}
        self._messages: dict[int, OrderedDict[int, StoredMessage]] = {}
        self._next_message_id: dict[int, int] = {}
        self._updates: deque[dict[str, Any]] = deque()
        self._update_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._callbacks: OrderedDict[str, _Callback] = OrderedDict()
        self._notices: deque[_Notice] = deque(maxlen=500)
        self._faults: dict[str, deque[Fault]] = {}
        self._changed = asyncio.Event()
        self._updates_changed = asyncio.Event()
        self.poll_generation = 0
        self.closing = False

    # --- change notification ------------------------------------------------------------

    def notify(self, *, updates: bool = False) -> None:
        """Wake everything waiting for a change (and long polls when `updates`)."""
        self._changed.set()
        self._changed = asyncio.Event()
        if updates:
            self._updates_changed.set()
            self._updates_changed = asyncio.Event()

    @property
    def updates_changed(self) -> asyncio.Event:
        return self._updates_changed

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
    ) -> None:
        """Return once `predicate()` holds, re-checking on every change; TimeoutError otherwise."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"condition not met within {timeout} s") from None

    async def wait_sent(
        self,
        chat_id: int | None,
        count: int,
        timeout: float = 5.0,
    ) -> list[SentMessage]:
        """Wait until at least `count` messages were delivered (to `chat_id`, or overall)."""
        try:
            await self.wait_until(lambda: len(self._sent_list(chat_id)) >= count, timeout)
        except TimeoutError:
            have = len(self._sent_list(chat_id))
            raise TimeoutError(
                f"{have} of {count} messages sent to chat {chat_id} within {timeout} s"
            ) from None
        return list(self._sent_list(chat_id))

    # --- reading ---------------------------------------------------------------------------

    def _sent_list(self, chat_id: int | None) -> list[SentMessage]:
        if chat_id is None:
            return self._sent
        return self._sent_by_chat.get(chat_id, [])

    def sent(self, chat_id: int | None = None) -> list[SentMessage]:
        """Messages the bot delivered, oldest first (to one chat, or overall)."""
        return list(self._sent_list(chat_id))

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """The current Bot API form of a message (after edits), or None if unknown/deleted."""
        stored = self._messages.get(chat_id, _NO_MESSAGES).get(message_id)
        if stored is None or stored.deleted:
            return None
        return stored.api

    def stored_message(self, chat_id: int, message_id: int) -> StoredMessage | None:
        return self._messages.get(chat_id, _NO_MESSAGES).get(message_id)

    def pending_updates(self) -> list[dict[str, Any]]:
        return list(self._updates)

    def transcript(self, chat_id: int, *, limit: int = 200) -> list[dict[str, Any]]:
        """The conversation as the web chat shows it: both sides, edits applied."""
        out: list[dict[str, Any]] = []
        for stored in list(self._messages.get(chat_id, _NO_MESSAGES).values())[-limit:]:
            api = stored.api
            markup = api.get("reply_markup")
            photo = api.get("photo")
            document = api.get("document")
            out.append(
                {
                    "message_id": stored.message_id,
                    "from": "bot" if stored.from_bot else "user",
                    "html": stored.safe_html,
                    "date": api.get("date"),
                    "edited": "edit_date" in api,
                    "deleted": stored.deleted,
                    "reply_markup": markup,
                    "photo": photo[-1] if photo else None,
                    "document": document,
                }
            )
        return out

    def notices(self, chat_id: int) -> list[dict[str, Any]]:
        """Callback answers (toasts and alerts) shown to the user of `chat_id`."""
        return [
            {"text": n.text, "show_alert": n.show_alert, "t": n.t}
            for n in self._notices
            if n.chat_id == chat_id
        ]

    def stats(self) -> dict[str, Any]:
        return {
            "calls": len(self.calls),
            "sent": len(self._sent),
            "violations": dict(self.violations),
            "pending_updates": len(self._updates),
            "blocked": sorted(self.blocked),
            "by_method": dict(self.counters.by_method),
            "by_status": {str(k): v for k, v in self.counters.by_status.items()},
            "injected": self.counters.injected,
            "limits": {
                "enabled": self.limits.enabled,
                "global_rate": self.limits.global_rate,
                "private_interval": self.limits.private_interval,
                "group_per_minute": self.limits.group_per_minute,
            },
        }

    def chat_list(self) -> list[dict[str, Any]]:
        return [
            {**chat, "blocked": chat_id in self.blocked} for chat_id, chat in self.chats.items()
        ]

    # --- chats and users -------------------------------------------------------------------

    def chat_object(self, chat_id: int) -> dict[str, Any]:
        """The chat as Telegram describes it, created on first sight (groups: negative ids)."""
        chat = self.chats.get(chat_id)
        if chat is None:
            if chat_id > 0:
                chat = {"id": chat_id, "type": "private", "first_name": f"User {chat_id}"}
            else:
                kind = "supergroup" if chat_id <= -1_000_000_000_000 else "group"
                chat = {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}
            self.chats[chat_id] = chat
        return chat

    def chat_by_username(self, username: str) -> int | None:
        wanted = username.lstrip("@").lower()
        for chat_id, chat in self.chats.items():
            if str(chat.get("username", "")).lower() == wanted:
                return chat_id
        return None

    def _user(self, user_id: int, first_name: str, username: str | None) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": "en",
        }
        if username:
            user["username"] = username
        self.users[user_id] = user
        return user

    # --- messages --------------------------------------------------------------------------

    def next_message_id(self, chat_id: int) -> int:
        value = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = value + 1
        return value

    def store_message(self, stored: StoredMessage) -> None:
        chat_messages = self._messages.setdefault(stored.chat_id, OrderedDict())
        chat_messages[stored.message_id] = stored
        while len(chat_messages) > MESSAGES_KEPT_PER_CHAT:
            chat_messages.popitem(last=False)
        self.notify()

    def record_sent(self, sent: SentMessage) -> None:
        self._sent.append(sent)
        self._sent_by_chat.setdefault(sent.chat_id, []).append(sent)
        if len(self._sent) > self.max_history:
            del self._sent[: self.max_history // 2]
            for chat_id, items in list(self._sent_by_chat.items()):
                kept = [s for s in items if s.t >= self._sent[0].t]
                if kept:
                    self._sent_by_chat[chat_id] = kept
                else:
                    del self._sent_by_chat[chat_id]
        self.notify()

    def record_call(self, record: CallRecord) -> None:
        self.calls.append(record)
        if len(self.calls) > self.max_history:
            del self.calls[: self.max_history // 2]
        counters = self.counters
        counters.by_method[record.method] = counters.by_method.get(record.method, 0) + 1
        counters.by_status[record.status] = counters.by_status.get(record.status, 0) + 1
        if record.injected:
            counters.injected += 1
        self.notify()

    def add_notice(self, chat_id: int, text: str, show_alert: bool) -> None:
        self._notices.append(_Notice(chat_id, text, show_alert, self.clock()))
        self.notify()

    def add_file(self, data: bytes, mime_type: str, file_name: str, folder: str) -> StoredFile:
        number = next(self._file_ids)
        file_id = f"EMU{folder[:3].upper()}{number:08d}"
        stored = StoredFile(
            file_id=file_id,
            file_unique_id=f"U{number:08d}",
            file_path=f"{folder}/file_{number}{_extension(mime_type, file_name)}",
            data=data,
            mime_type=mime_type,
            file_name=file_name,
        )
        self.files[file_id] = stored
        return stored

    def file_by_path(self, path: str) -> StoredFile | None:
        return next((f for f in self.files.values() if f.file_path == path), None)

    # --- callbacks ---------------------------------------------------------------------------

    def take_callback(self, callback_id: str) -> _Callback | None:
        """The unanswered callback query with this id (answering twice is an error)."""
        callback = self._callbacks.get(callback_id)
        if callback is None or callback.answered:
            return None
        callback.answered = True
        return callback

    # --- updates -----------------------------------------------------------------------------

    def _enqueue(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), kind: payload}
        allowed = self.allowed_updates
        delivered = kind not in DEFAULT_UPDATE_TYPES_EXCLUDED if not allowed else kind in allowed
        if delivered:
            self._updates.append(update)
            if len(self._updates) > self.max_history:
                self._updates.popleft()
        self.notify(updates=True)
        return update

    def confirm_updates(self, offset: int) -> None:
        """getUpdates' offset: forget updates below it (negative: keep only the last -offset)."""
        if offset < 0:
            while len(self._updates) > -offset:
                self._updates.popleft()
        else:
            while self._updates and self._updates[0]["update_id"] < offset:
                self._updates.popleft()

    def take_updates(self, limit: int) -> list[dict[str, Any]]:
        return list(itertools.islice(self._updates, limit))

    def drop_pending_updates(self) -> None:
        self._updates.clear()

    def push_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        first_name: str = "Tester",
        username: str | None = None,
        chat_type: str | None = None,
    ) -> dict[str, Any]:
        """A user writes `text` in `chat_id`; returns the update the bot will receive.

        A user who blocked the bot and writes again has restarted it, as in Telegram: the
        chat is unblocked first (with its my_chat_member update).
        """
        kind = chat_type or ("private" if chat_id > 0 else "group")
        if kind not in ("private", "group", "supergroup"):
            raise ValueError(f"unsupported chat_type {kind!r}")
        if (kind == "private") != (chat_id > 0):
            raise ValueError("private chats have positive ids, groups negative ones")
        if not text:
            raise ValueError("text must not be empty")
        if user_id is None:
            if kind != "private":
                raise ValueError("user_id is required for group messages")
            user_id = chat_id
        if user_id <= 0:
            raise ValueError("user_id must be positive")
        user = self._user(user_id, first_name, username)
        chat: dict[str, Any]
        if kind == "private":
            chat = {"id": chat_id, "type": "private", "first_name": first_name}
            if username:
                chat["username"] = username
        else:
            chat = {"id": chat_id, "type": kind, "title": f"Group {chat_id}"}
        self.chats[chat_id] = chat
        if chat_id in self.blocked:
            self.unblock(chat_id)
        message: dict[str, Any] = {
            "message_id": self.next_message_id(chat_id),
            "from": user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        entities = command_entities(text)
        if entities:
            message["entities"] = entities
        self.store_message(
            StoredMessage(
                chat_id, message["message_id"], False, message, parse_text(text, None).safe_html
            )
        )
        return self._enqueue("message", message)

    def push_callback(
        self, chat_id: int, message_id: int, data: str, *, user_id: int | None = None
    ) -> dict[str, Any]:
        """A user presses an inline button carrying `data` under the bot's message."""
        stored = self._messages.get(chat_id, _NO_MESSAGES).get(message_id)
        if stored is None or stored.deleted or not stored.from_bot:
            raise ValueError(f"chat {chat_id} has no bot message {message_id}")
        if user_id is None:
            if chat_id <= 0:
                raise ValueError("user_id is required for group callbacks")
            user_id = chat_id
        user = self.users.get(user_id) or self._user(user_id, "Tester", None)
        callback_id = str(next(self._callback_ids) * 1_000_003 + user_id % 1_000_003)
        self._callbacks[callback_id] = _Callback(chat_id, message_id)
        while len(self._callbacks) > 10_000:
            self._callbacks.popitem(last=False)
        query = {
            "id": callback_id,
            "from": user,
            "message": stored.api,
            "chat_instance": str(abs(chat_id) * 7 + 3),
            "data": data,
        }
        return self._enqueue("callback_query", query)

    def _member_update(self, chat_id: int, old: str, new: str) -> dict[str, Any]:
        chat = self.chat_object(chat_id)
        user = self.users.get(chat_id) or self._user(
            chat_id, chat.get("first_name", "Tester"), None
        )

        def member(status: str) -> dict[str, Any]:
            out: dict[str, Any] = {"status": status, "user": self.bot_user}
            if status == "kicked":
                out["until_date"] = 0
            return out

        return self._enqueue(
            "my_chat_member",
            {
                "chat": chat,
                "from": user,
                "date": int(time.time()),
                "old_chat_member": member(old),
                "new_chat_member": member(new),
            },
        )

    def block(self, chat_id: int) -> None:
        """The user of a private chat blocks the bot: sends now fail with 403."""
        if chat_id <= 0:
            raise ValueError("only private chats (positive ids) can block the bot")
        if chat_id in self.blocked:
            return
        self.blocked.add(chat_id)
        self._member_update(chat_id, "member", "kicked")

    def unblock(self, chat_id: int) -> None:
        """The user restarts the bot."""
        if chat_id not in self.blocked:
            return
        self.blocked.discard(chat_id)
        self._member_update(chat_id, "kicked", "member")

    # --- fault injection ---------------------------------------------------------------------

    def inject_error(
        self,
        method: str,
        code: int,
        count: int = 1,
        description: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        """The next `count` calls of `method` ("*" = any) fail with HTTP `code`."""
        if not 400 <= code <= 599:
            raise ValueError("code must be an HTTP error status (400-599)")
        if code == 429 and retry_after is None:
            retry_after = 1
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if description is None:
            if code == 429:
                description = f"Too Many Requests: retry after {retry_after}"
            else:
                description = _DEFAULT_DESCRIPTIONS.get(code, "Error")
        self._add_fault(
            method,
            Fault("error", count, code=code, description=description, retry_after=retry_after),
        )

    def inject_delay(self, method: str, seconds: float, count: int = 1) -> None:
        """The next `count` calls of `method` are answered `seconds` late (a slow network)."""
        if not 0 <= seconds <= 600:
            raise ValueError("seconds must be within 0..600")
        self._add_fault(method, Fault("delay", count, seconds=seconds))

    def inject_disconnect(
        self, method: str, count: int = 1, *, after_delivery: bool = False
    ) -> None:
        """The next `count` calls of `method` lose their connection without an answer.

        With `after_delivery` the call takes effect first (the message is delivered) and only
        the answer is lost: the client cannot know the message's fate.
        """
        self._add_fault(method, Fault("disconnect", count, after_delivery=after_delivery))

    def _add_fault(self, method: str, fault: Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        if not method:
            raise ValueError("method must not be empty")
        self._faults.setdefault(method.lower(), deque()).append(fault)

    def take_fault(self, method: str) -> Fault | None:
        """Consume one injected fault for this call, the method's own before wildcards."""
        for key in (method.lower(), "*"):
            queue = self._faults.get(key)
            if queue:
                fault = queue[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    queue.popleft()
                return fault
        return None

    def clear_faults(self) -> None:
        self._faults.clear()


def _extension(mime_type: str, file_name: str) -> str:
    suffix = file_name.rsplit(".", 1)[1] if "." in file_name else ""
    if suffix.isascii() and suffix.isalnum() and len(suffix) <= 5:
        return "." + suffix.lower()
    return {"image/png": ".png", "image/jpeg": ".jpg", "text/csv": ".csv"}.get(mime_type, "")
