"""The Bot API methods the emulator answers, with Telegram's validation and error texts.

Each handler takes decoded `Params`, returns the `result` of a successful answer and raises
`ApiError` for anything Telegram would refuse. Order inside a delivering handler mirrors what
matters to a client: malformed input (400) first, then a blocked chat (403), then the flood
limits (429), so a refused request never consumes rate budget.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sandbox.telegram.entities import EntityParseError, Parsed, parse_text
from sandbox.telegram.params import ApiError, Params, UploadedFile, bad_request
from sandbox.telegram.state import EmulatorState, SentMessage, StoredFile, StoredMessage

__all__ = ["MAX_CAPTION", "MAX_TEXT", "BotApi", "validate_reply_markup"]

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
MAX_POLL_TIMEOUT = 60
NOT_MODIFIED = (
    "message is not modified: specified new message content and reply markup are exactly the "
    "same as a current content and reply markup of the message"
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
BUTTON_ACTIONS = (
    "callback_data",
    "url",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
_URL = re.compile(r"^(https?|tg)://[^\s]+$", re.IGNORECASE)
_COMMAND = re.compile(r"^[a-z0-9_]{1,32}$")

Handler = Callable[[Params], Awaitable[object]]


def _cant_parse_button(detail: str) -> ApiError:
    return bad_request(f"can't parse inline keyboard button: {detail}")


def validate_reply_markup(value: object, *, inline_only: bool = False) -> dict[str, Any] | None:
    """Check a reply_markup the way Telegram does; return it, or raise ApiError(400)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in value:
        rows = value["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise bad_request(
                'Field "inline_keyboard" of the InlineKeyboardMarkup must be an Array'
            )
        total = 0
        for row in rows:
            for button in row:
                _validate_button(button)
                total += 1
        if total > 100:
            raise bad_request("reply markup is too long")
        return value
    if inline_only:
        raise bad_request("inline keyboard expected")
    if "keyboard" in value:
        rows = value["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise bad_request('Field "keyboard" of the ReplyKeyboardMarkup must be an Array')
        for row in rows:
            for button in row:
                text = button.get("text") if isinstance(button, dict) else button
                if not isinstance(text, str) or not text:
                    raise bad_request('can\'t parse keyboard button: Field "text" must be a String')
        return value
    if value.get("remove_keyboard") is True or value.get("force_reply") is True:
        return value
    raise bad_request("can't parse reply keyboard markup JSON object")


def _validate_button(button: object) -> None:
    if not isinstance(button, dict):
        raise _cant_parse_button("InlineKeyboardButton must be an Object")
    text = button.get("text")
    if not isinstance(text, str):
        raise _cant_parse_button('Field "text" must be of type String')
    if not text.strip():
        raise bad_request("BUTTON_TEXT_INVALID")
    actions = [name for name in BUTTON_ACTIONS if name in button]
    if not actions:
        raise _cant_parse_button("Text buttons are unallowed in the inline keyboard")
    if len(actions) > 1:
        raise _cant_parse_button("InlineKeyboardButton must have exactly one optional field")
    if "callback_data" in button:
        data = button["callback_data"]
        if not isinstance(data, str) or not 1 <= len(data.encode("utf-8")) <= MAX_CALLBACK_DATA:
            raise bad_request("BUTTON_DATA_INVALID")
    if "url" in button:
        url = button["url"]
        if not isinstance(url, str) or not _URL.match(url):
            raise bad_request("BUTTON_URL_INVALID")


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) for the formats Telegram accepts as photos; None if not an image."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data.startswith(b"GIF8") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8\xff") or data.startswith(b"BM"):
        return 0, 0
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return 0, 0
    return None


class BotApi:
    """Dispatches Bot API method names (case-insensitive, as Telegram) to their handlers."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        handlers: dict[str, Handler] = {
            "getMe": self.get_me,
            "logOut": self.log_out,
            "close": self.log_out,
            "deleteWebhook": self.delete_webhook,
            "getWebhookInfo": self.get_webhook_info,
            "getUpdates": self.get_updates,
            "sendMessage": self.send_message,
            "editMessageText": self.edit_message_text,
            "editMessageReplyMarkup": self.edit_message_reply_markup,
            "deleteMessage": self.delete_message,
            "answerCallbackQuery": self.answer_callback_query,
            "sendPhoto": self.send_photo,
            "sendDocument": self.send_document,
            "sendChatAction": self.send_chat_action,
            "setMyCommands": self.set_my_commands,
            "getMyCommands": self.get_my_commands,
            "deleteMyCommands": self.delete_my_commands,
            "getFile": self.get_file,
            "getChat": self.get_chat,
        }
        self._handlers = {name.lower(): handler for name, handler in handlers.items()}
        self._canonical = {name.lower(): name for name in handlers}

    def knows(self, method: str) -> bool:
        return method.lower() in self._handlers

    def canonical(self, method: str) -> str:
        """The documented spelling of a method name Telegram matched case-insensitively."""
        return self._canonical.get(method.lower(), method)

    async def call(self, method: str, params: Params) -> object:
        return await self._handlers[method.lower()](params)

    # --- shared steps ------------------------------------------------------------------------

    def _chat(self, params: Params) -> int:
        chat_id = params.chat_id()
        if isinstance(chat_id, str):
            found = self.state.chat_by_username(chat_id)
            if found is None:
                raise bad_request("chat not found")
            return found
        if chat_id == 0:
            raise bad_request("chat not found")
        return chat_id

    def _gate(self, method: str, chat_id: int) -> None:
        """403 for a blocked chat, then the flood limits for message-delivering methods."""
        state = self.state
        if chat_id in state.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        if method.lower() not in state.limited_methods:
            return
        now = state.clock()
        verdict = state.limits.check(chat_id, now)
        if verdict is not None:
            state.violations[verdict.kind] = state.violations.get(verdict.kind, 0) + 1
            raise ApiError(
                429, f"Too Many Requests: retry after {verdict.retry_after}", verdict.retry_after
            )
        state.limits.record(chat_id, now)

    @staticmethod
    def _parse(text: str, params: Params, entities_name: str) -> Parsed:
        parse_mode = params.get_str("parse_mode")
        if not parse_mode:
            explicit = params.get_json(entities_name)
            if explicit is not None:
                _check_explicit_entities(explicit, entities_name)
        try:
            return parse_text(text, parse_mode)
        except EntityParseError as exc:
            raise bad_request(f"can't parse entities: {exc}") from None
        except ValueError:
            raise bad_request("unsupported parse_mode") from None

    def _parse_text_param(self, params: Params) -> Parsed:
        text = params.get_str("text") or ""
        if not text.strip():
            raise bad_request("message text is empty")
        parsed = self._parse(text, params, "entities")
        if len(parsed.plain) > MAX_TEXT:
            raise bad_request("message is too long")
        if not parsed.plain.strip():
            raise bad_request("message text is empty")
        return parsed

    def _parse_caption(self, params: Params) -> Parsed | None:
        caption = params.get_str("caption")
        if not caption:
            return None
        parsed = self._parse(caption, params, "caption_entities")
        if len(parsed.plain) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        return parsed

    def _deliver(
        self,
        method: str,
        chat_id: int,
        content: dict[str, Any],
        safe_html: str,
        markup: dict[str, Any] | None,
        params: Params,
        *,
        photo_size: int | None = None,
        document_size: int | None = None,
    ) -> dict[str, Any]:
        state = self.state
        message: dict[str, Any] = {
            "message_id": state.next_message_id(chat_id),
            "from": state.bot_user,
            "chat": state.chat_object(chat_id),
            "date": int(time.time()),
            **content,
        }
        if markup is not None and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        state.store_message(StoredMessage(chat_id, message["message_id"], True, message, safe_html))
        text_param = "text" if method == "sendMessage" else "caption"
        state.record_sent(
            SentMessage(
                chat_id=chat_id,
                message_id=message["message_id"],
                method=method,
                text=params.get_str(text_param),
                plain_text=message.get("text", message.get("caption")),
                parse_mode=params.get_str("parse_mode"),
                reply_markup=markup,
                photo_size=photo_size,
                document_size=document_size,
                t=state.clock(),
            )
        )
        return message

    @staticmethod
    def _text_content(parsed: Parsed, key: str) -> dict[str, Any]:
        content: dict[str, Any] = {key: parsed.plain}
        entities = parsed.api_entities()
        if entities:
            content["entities" if key == "text" else "caption_entities"] = entities
        return content

    def _upload(
        self, params: Params, name: str, max_bytes: int
    ) -> tuple[UploadedFile | None, StoredFile | None, str | None]:
        """The file in parameter `name`: a fresh upload, a known file_id, or a URL."""
        upload = params.files.get(name)
        reference = None if upload is not None else params.get_str(name)
        if reference is not None and reference.startswith("attach://"):
            upload = params.files.get(reference[len("attach://") :])
            reference = None
        if upload is not None:
            if not upload.data:
                raise bad_request("file must be non-empty")
            if len(upload.data) > max_bytes:
                raise bad_request("file is too big")
            return upload, None, None
        if not reference:
            raise bad_request(f"there is no {name} in the request")
        known = self.state.files.get(reference)
        if known is not None:
            return None, known, None
        if _URL.match(reference) and reference.lower().startswith("http"):
            return None, None, reference
        raise bad_request("wrong file identifier/HTTP URL specified")

    # --- methods -------------------------------------------------------------------------------

    async def get_me(self, params: Params) -> object:
        return self.state.bot_user

    async def log_out(self, params: Params) -> object:
        return True

    async def delete_webhook(self, params: Params) -> object:
        if params.get_bool("drop_pending_updates"):
            self.state.drop_pending_updates()
        return True

    async def get_webhook_info(self, params: Params) -> object:
        return {
            "url": "",
            "has_custom_certificate": False,
            "pending_update_count": len(self.state.pending_updates()),
        }

    async def get_updates(self, params: Params) -> object:
        state = self.state
        offset = params.get_int("offset", 0) or 0
        limit = min(max(params.get_int("limit", 100) or 100, 1), 100)
        timeout = min(max(params.get_float("timeout", 0.0), 0.0), MAX_POLL_TIMEOUT)
        allowed = params.get_json("allowed_updates")
        if allowed is not None:
            if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
                raise bad_request("can't parse allowed_updates JSON object")
            state.allowed_updates = frozenset(allowed) or None
        state.confirm_updates(offset)
        state.poll_generation += 1
        generation = state.poll_generation
        state.notify(updates=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if generation != state.poll_generation:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
            updates = state.take_updates(limit)
            remaining = deadline - loop.time()
            if updates or remaining <= 0 or state.closing:
                return updates
            try:
                async with asyncio.timeout(remaining):
                    await state.updates_changed.wait()
            except TimeoutError:
                pass

    async def send_message(self, params: Params) -> object:
        chat_id = self._chat(params)
        parsed = self._parse_text_param(params)
        markup = validate_reply_markup(params.get_json("reply_markup"))
        self._gate("sendMessage", chat_id)
        return self._deliver(
            "sendMessage",
            chat_id,
            self._text_content(parsed, "text"),
            parsed.safe_html,
            markup,
            params,
        )

    async def send_photo(self, params: Params) -> object:
        chat_id = self._chat(params)
        upload, known, url = self._upload(params, "photo", MAX_PHOTO_BYTES)
        width = height = 0
        if upload is not None:
            size = _image_size(upload.data)
            if size is None:
                raise bad_request("IMAGE_PROCESS_FAILED")
            width, height = size
        caption = self._parse_caption(params)
        markup = validate_reply_markup(params.get_json("reply_markup"))
        self._gate("sendPhoto", chat_id)
        if upload is not None:
            # Telegram re-encodes photos as JPEG.
            known = self.state.add_file(upload.data, "image/jpeg", "", "photos")
        photo: dict[str, Any] = {"width": width, "height": height}
        if known is not None:
            photo.update(
                file_id=known.file_id,
                file_unique_id=known.file_unique_id,
                file_size=len(known.data),
            )
        else:
            photo.update(file_id=f"EMUURL{abs(hash(url)) % 10**10}", file_unique_id="UURL")
        content: dict[str, Any] = {"photo": [photo]}
        html_view = '<span class="attachment">[photo]</span>'
        if caption is not None:
            content.update(self._text_content(caption, "caption"))
            html_view += "<br>" + caption.safe_html
        return self._deliver(
            "sendPhoto",
            chat_id,
            content,
            html_view,
            markup,
            params,
            photo_size=len(known.data) if known is not None else None,
        )

    async def send_document(self, params: Params) -> object:
        chat_id = self._chat(params)
        upload, known, url = self._upload(params, "document", MAX_DOCUMENT_BYTES)
        caption = self._parse_caption(params)
        markup = validate_reply_markup(params.get_json("reply_markup"))
        self._gate("sendDocument", chat_id)
        if upload is not None:
            known = self.state.add_file(
                upload.data, upload.content_type, upload.filename, "documents"
            )
        document: dict[str, Any]
        if known is not None:
            document = {
                "file_id": known.file_id,
                "file_unique_id": known.file_unique_id,
                "file_name": known.file_name,
                "mime_type": known.mime_type,
                "file_size": len(known.data),
            }
        else:
            document = {
                "file_id": f"EMUURL{abs(hash(url)) % 10**10}",
                "file_unique_id": "UURL",
                "file_name": (url or "file").rsplit("/", 1)[-1],
            }
        content: dict[str, Any] = {"document": document}
        name = html.escape(str(document.get("file_name", "file")))
        html_view = f'<span class="attachment">[document: {name}]</span>'
        if caption is not None:
            content.update(self._text_content(caption, "caption"))
            html_view += "<br>" + caption.safe_html
        return self._deliver(
            "sendDocument",
            chat_id,
            content,
            html_view,
            markup,
            params,
            document_size=len(known.data) if known is not None else None,
        )

    def _editable(self, params: Params) -> StoredMessage:
        if "inline_message_id" in params:
            raise bad_request("inline messages are not supported by the emulator")
        chat_id = self._chat(params)
        message_id = params.require_int("message_id")
        stored = self.state.stored_message(chat_id, message_id)
        if stored is None or stored.deleted:
            raise bad_request("message to edit not found")
        if not stored.from_bot:
            raise bad_request("message can't be edited")
        return stored

    def _apply_edit(
        self,
        method: str,
        stored: StoredMessage,
        content: dict[str, Any] | None,
        markup: dict[str, Any] | None,
        safe_html: str | None,
    ) -> dict[str, Any]:
        """Edit in place; `content` None keeps the text (editMessageReplyMarkup)."""
        old = stored.api
        same_markup = old.get("reply_markup") == markup
        same_text = content is None or (
            old.get("text") == content["text"]
            and old.get("entities", []) == content.get("entities", [])
        )
        if same_markup and same_text:
            raise bad_request(NOT_MODIFIED)
        self._gate(method, stored.chat_id)
        updated = {k: v for k, v in old.items() if k != "reply_markup"}
        if content is not None:
            updated.pop("entities", None)
            updated.update(content)
        if markup is not None:
            updated["reply_markup"] = markup
        updated["edit_date"] = int(time.time())
        stored.api = updated
        if safe_html is not None:
            stored.safe_html = safe_html
        self.state.store_message(stored)
        return updated

    async def edit_message_text(self, params: Params) -> object:
        stored = self._editable(params)
        parsed = self._parse_text_param(params)
        markup = validate_reply_markup(params.get_json("reply_markup"), inline_only=True)
        if "text" not in stored.api:
            raise bad_request("there is no text in the message to edit")
        return self._apply_edit(
            "editMessageText",
            stored,
            self._text_content(parsed, "text"),
            markup,
            parsed.safe_html,
        )

    async def edit_message_reply_markup(self, params: Params) -> object:
        stored = self._editable(params)
        markup = validate_reply_markup(params.get_json("reply_markup"), inline_only=True)
        return self._apply_edit("editMessageReplyMarkup", stored, None, markup, None)

    async def delete_message(self, params: Params) -> object:
        chat_id = self._chat(params)
        message_id = params.require_int("message_id")
        stored = self.state.stored_message(chat_id, message_id)
        if stored is None or stored.deleted:
            raise bad_request("message to delete not found")
        stored.deleted = True
        self.state.store_message(stored)
        return True

    async def send_chat_action(self, params: Params) -> object:
        chat_id = self._chat(params)
        action = params.get_str("action")
        if action not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        self._gate("sendChatAction", chat_id)
        return True

    async def answer_callback_query(self, params: Params) -> object:
        callback_id = params.get_str("callback_query_id")
        if not callback_id:
            raise bad_request("callback_query_id is empty")
        text = params.get_str("text") or ""
        if len(text) > 200:
            raise bad_request("MESSAGE_TOO_LONG")
        callback = self.state.take_callback(callback_id)
        if callback is None:
            raise bad_request(
                "query is too old and response timeout expired or query ID is invalid"
            )
        if text:
            self.state.add_notice(callback.chat_id, text, params.get_bool("show_alert"))
        return True

    def _commands_key(self, params: Params) -> tuple[str, str]:
        scope = params.get_json("scope")
        if scope is None:
            scope = {"type": "default"}
        if not isinstance(scope, dict) or not isinstance(scope.get("type"), str):
            raise bad_request("can't parse BotCommandScope JSON object")
        return json.dumps(scope, sort_keys=True), params.get_str("language_code") or ""

    async def set_my_commands(self, params: Params) -> object:
        commands = params.get_json("commands")
        if not isinstance(commands, list):
            raise bad_request("can't parse commands JSON object")
        if len(commands) > 100:
            raise bad_request("BOT_COMMANDS_TOO_MUCH")
        clean: list[dict[str, str]] = []
        for item in commands:
            if not isinstance(item, dict):
                raise bad_request("can't parse BotCommand JSON object")
            command = item.get("command")
            description = item.get("description")
            if not isinstance(command, str) or not _COMMAND.match(command.lstrip("/").lower()):
                raise bad_request("BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
            clean.append({"command": command.lstrip("/").lower(), "description": description})
        self.state.commands[self._commands_key(params)] = clean
        return True

    async def get_my_commands(self, params: Params) -> object:
        return list(self.state.commands.get(self._commands_key(params), []))

    async def delete_my_commands(self, params: Params) -> object:
        self.state.commands.pop(self._commands_key(params), None)
        return True

    async def get_file(self, params: Params) -> object:
        file_id = params.get_str("file_id") or ""
        stored = self.state.files.get(file_id)
        if stored is None:
            raise bad_request("invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.data),
            "file_path": stored.file_path,
        }

    async def get_chat(self, params: Params) -> object:
        chat_id = self._chat(params)
        if chat_id not in self.state.chats:
            raise bad_request("chat not found")
        chat = dict(self.state.chats[chat_id])
        chat.setdefault("accent_color_id", 0)
        chat.setdefault("max_reaction_count", 11)
        return chat


def _check_explicit_entities(raw: object, name: str) -> None:
    """Entities given directly are checked for shape only; the echo omits them."""
    if not isinstance(raw, list):
        raise bad_request(f"can't parse {name} JSON object")
    for item in raw:
        if not isinstance(item, dict):
            raise bad_request("can't parse MessageEntity JSON object")
        kind, offset, length = item.get("type"), item.get("offset"), item.get("length")
        if not isinstance(kind, str) or not isinstance(offset, int) or not isinstance(length, int):
            raise bad_request("can't parse MessageEntity JSON object")
