"""The Telegram Bot API emulator, driven by the real python-telegram-bot 22 client."""

from __future__ import annotations

import asyncio
import datetime as dtm
import html
import json
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import telegram
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes

from sandbox.telegram import RateLimits, TelegramEmulator
from sandbox.telegram.entities import EntityParseError, parse_text
from sandbox.telegram.params import ApiError, Params

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

TOKEN = "123456:TEST-TOKEN"


class FakeClock:
    """Limit timing under test control: the emulator reads `now` instead of the real clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[TelegramEmulator, telegram.Bot]]:
    """An emulator and a bot; flood limits only where a test asks for them."""
    options.setdefault("enforce_limits", False)
    emulator = TelegramEmulator(**options)
    await emulator.start()
    bot = telegram.Bot(TOKEN, base_url=emulator.base_url, base_file_url=emulator.base_file_url)
    try:
        async with bot:
            yield emulator, bot
    finally:
        await emulator.stop()


def seconds(value: int | dtm.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\xff\x00\x00" * 3 + b"\x00" + b"\x00\xff\x00" * 3)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# --- the Bot API through python-telegram-bot ------------------------------------------------


@pytest.mark.anyio
async def test_get_me_and_tokens() -> None:
    async with running() as (emulator, bot):
        me = await bot.get_me()
        assert me.is_bot and me.id == 123456 and me.username == emulator.bot_user["username"]
        with pytest.raises(telegram.error.InvalidToken, match="Unauthorized"):
            await telegram.Bot("123456:WRONG", base_url=emulator.base_url).get_me()
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{emulator.base_url}{TOKEN}/noSuchMethod") as response:
                assert response.status == 404
                assert await response.json() == {
                    "ok": False,
                    "error_code": 404,
                    "description": "Not Found",
                }
            async with http.post(f"{emulator.base_url}{TOKEN}/GETME") as response:
                assert (await response.json())["result"]["id"] == 123456


@pytest.mark.anyio
async def test_html_message_with_keyboard_and_callback_through_application() -> None:
    emulator = TelegramEmulator()
    await emulator.start()
    pressed: list[str] = []
    commands: list[str] = []

    async def on_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None and update.message is not None
        commands.append(update.message.text or "")
        keyboard = InlineKeyboardMarkup(
            [[InlineKeyboardButton("Min FDV", callback_data="set:min_fdv")]]
        )
        await context.bot.send_message(
            update.effective_chat.id,
            "<b>Settings</b> &amp; filters",
            parse_mode="HTML",
            reply_markup=keyboard,
        )

    async def on_press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        assert query is not None
        pressed.append(query.data or "")
        await query.answer("saved")

    app = (
        Application.builder()
        .token(TOKEN)
        .base_url(emulator.base_url)
        .base_file_url(emulator.base_file_url)
        .build()
    )
    app.add_handler(CommandHandler("start", on_start))
    app.add_handler(CallbackQueryHandler(on_press))
    try:
        async with app:
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(poll_interval=0.0, timeout=5)
            emulator.push_message(501, "/start", first_name="Ann", username="ann")
            (menu,) = await emulator.wait_sent(501, 1)
            assert menu.plain_text == "Settings & filters"
            assert menu.parse_mode == "HTML"
            assert menu.reply_markup is not None
            assert menu.reply_markup["inline_keyboard"][0][0]["callback_data"] == "set:min_fdv"
            assert commands == ["/start"]
            api_message = emulator.message(501, menu.message_id)
            assert api_message is not None
            assert api_message["entities"] == [{"type": "bold", "offset": 0, "length": 8}]

            emulator.push_callback(501, menu.message_id, "set:min_fdv")
            await emulator.wait_until(
                lambda: any(c.method == "answerCallbackQuery" and c.ok for c in emulator.calls)
            )
            assert pressed == ["set:min_fdv"]
            assert emulator.notices(501)[0]["text"] == "saved"
            await app.updater.stop()
            await app.stop()
    finally:
        await emulator.stop()
    assert {c.method for c in emulator.calls} >= {"getMe", "deleteWebhook", "getUpdates"}


@pytest.mark.anyio
async def test_edit_message_text_and_not_modified() -> None:
    async with running() as (emulator, bot):
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("x", callback_data="x")]])
        sent = await bot.send_message(9, "<i>v1</i>", parse_mode="HTML", reply_markup=keyboard)
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)message is not modified"):
            await bot.edit_message_text(
                "<i>v1</i>",
                chat_id=9,
                message_id=sent.message_id,
                parse_mode="HTML",
                reply_markup=keyboard,
            )
        edited = await bot.edit_message_text("v2", chat_id=9, message_id=sent.message_id)
        assert isinstance(edited, telegram.Message)
        assert edited.text == "v2" and edited.edit_date is not None
        assert edited.reply_markup is None
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)message to edit not found"):
            await bot.edit_message_text("v3", chat_id=9, message_id=999)
        assert len(emulator.sent(9)) == 1


@pytest.mark.anyio
async def test_private_and_group_limits_answer_429_with_retry_after() -> None:
    clock = FakeClock()
    async with running(clock=clock, enforce_limits=True) as (emulator, bot):
        await bot.send_message(1, "first")
        clock.now += 0.5
        with pytest.raises(telegram.error.RetryAfter) as caught:
            await bot.send_message(1, "too soon")
        assert seconds(caught.value.retry_after) == 1
        await bot.send_message(2, "another chat is fine")
        clock.now += 0.5
        await bot.send_message(1, "a second later")

        for i in range(20):
            await bot.send_message(-100, f"group {i}")
            clock.now += 1.0
        clock.now += 10.0
        with pytest.raises(telegram.error.RetryAfter) as caught:
            await bot.send_message(-100, "21st within a minute")
        assert seconds(caught.value.retry_after) == 30
        assert emulator.violations == {"global": 0, "private": 1, "group": 1}
        refused = [c for c in emulator.calls if c.status == 429]
        assert [c.retry_after for c in refused] == [1, 30]
        assert len(emulator.sent(1)) == 2 and len(emulator.sent(-100)) == 20


@pytest.mark.anyio
async def test_global_limit_and_disabled_limits() -> None:
    clock = FakeClock()
    async with running(clock=clock, global_rate=30, enforce_limits=True) as (emulator, bot):
        await asyncio.gather(*(bot.send_message(100 + i, "burst") for i in range(30)))
        with pytest.raises(telegram.error.RetryAfter) as caught:
            await bot.send_message(200, "31st in the same second")
        assert seconds(caught.value.retry_after) == 1
        assert emulator.violations["global"] == 1
        clock.now += 1.0
        await bot.send_message(200, "next second")
        assert len(emulator.sent()) == 31

    async with running(clock=clock) as (emulator, bot):
        for _ in range(3):
            await bot.send_message(1, "no limits")
        assert len(emulator.sent(1)) == 3 and sum(emulator.violations.values()) == 0


@pytest.mark.anyio
async def test_blocked_chat_is_forbidden_until_the_user_returns() -> None:
    async with running() as (emulator, bot):
        emulator.push_message(77, "/start")
        emulator.block(77)
        with pytest.raises(telegram.error.Forbidden, match=r"(?i)blocked by the user"):
            await bot.send_message(77, "alert")
        assert emulator.sent(77) == []
        updates = await bot.get_updates(timeout=0)
        member = updates[-1].my_chat_member
        assert member is not None and member.new_chat_member.status == "kicked"

        emulator.push_message(77, "/start")
        assert 77 not in emulator.blocked
        updates = await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0)
        assert updates[0].my_chat_member is not None
        assert updates[0].my_chat_member.new_chat_member.status == "member"
        assert updates[1].message is not None and updates[1].message.text == "/start"
        await bot.send_message(77, "welcome back")
        assert len(emulator.sent(77)) == 1


@pytest.mark.anyio
async def test_injected_errors_and_disconnects() -> None:
    async with running() as (emulator, bot):
        emulator.inject_error("sendMessage", 429, count=2, retry_after=7)
        for _ in range(2):
            with pytest.raises(telegram.error.RetryAfter) as caught:
                await bot.send_message(5, "x")
            assert seconds(caught.value.retry_after) == 7
        await bot.send_message(5, "through")
        assert sum(emulator.violations.values()) == 0

        emulator.inject_error("*", 500)
        with pytest.raises(telegram.error.NetworkError, match="Internal Server Error"):
            await bot.get_me()
        emulator.inject_error("sendMessage", 400, description="Bad Request: chat not found")
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)chat not found"):
            await bot.send_message(5, "x")

        emulator.inject_disconnect("sendMessage")
        with pytest.raises(telegram.error.NetworkError):
            await bot.send_message(6, "lost before delivery")
        emulator.inject_disconnect("sendMessage", after_delivery=True)
        with pytest.raises(telegram.error.NetworkError):
            await bot.send_message(7, "lost answer")
        assert [s.text for s in emulator.sent()] == ["through", "lost answer"]
        injected = [c for c in emulator.calls if c.injected]
        assert [c.status for c in injected] == [429, 429, 500, 400, 0]

        with pytest.raises(ValueError, match="HTTP error status"):
            emulator.inject_error("sendMessage", 200)


@pytest.mark.anyio
async def test_send_photo_multipart_and_document() -> None:
    image = tiny_png()
    async with running() as (emulator, bot):
        message = await bot.send_photo(3, image, caption="<b>chart</b>", parse_mode="HTML")
        assert message.caption == "chart"
        assert (message.photo[-1].width, message.photo[-1].height) == (3, 2)
        (sent,) = emulator.sent(3)
        assert sent.method == "sendPhoto" and sent.photo_size == len(image)
        photo_call = emulator.calls[-1]
        assert photo_call.params["photo"]["size"] == len(image)
        downloaded = await (await bot.get_file(message.photo[-1].file_id)).download_as_bytearray()
        assert bytes(downloaded) == image

        with pytest.raises(telegram.error.BadRequest, match=r"(?i)image_process_failed"):
            await bot.send_photo(3, b"not an image at all")

        document = await bot.send_document(
            3, b"token,fdv\nABC,1000\n", filename="calls.csv", caption="export"
        )
        assert document.document is not None and document.document.file_name == "calls.csv"
        assert emulator.sent(3)[-1].document_size == 19


@pytest.mark.anyio
async def test_text_limits_markup_and_keyboard_validation() -> None:
    async with running() as (emulator, bot):
        await bot.send_message(4, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(4, "a" * 4097)
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(4, "<b>unclosed <i>tags</b>", parse_mode="HTML")
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(4, "1 < 2", parse_mode="HTML")
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)reserved"):
            await bot.send_message(4, "2x!", parse_mode="MarkdownV2")
        await bot.send_message(4, r"*2x\!* reached", parse_mode="MarkdownV2")
        long_data = InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data="x" * 65)]])
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)button_data_invalid"):
            await bot.send_message(4, "buttons", reply_markup=long_data)
        ok_data = InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data="x" * 64)]])
        await bot.send_message(4, "buttons", reply_markup=ok_data)
        assert [s.plain_text for s in emulator.sent(4)][1:] == ["2x! reached", "buttons"]


@pytest.mark.anyio
async def test_long_poll_returns_as_soon_as_an_update_is_pushed() -> None:
    async with running() as (emulator, bot):
        poll = asyncio.create_task(bot.get_updates(timeout=20))
        await emulator.wait_until(lambda: emulator.poll_generation == 1)
        started = time.monotonic()
        emulator.push_message(12, "hello")
        updates = await asyncio.wait_for(poll, 5)
        assert time.monotonic() - started < 2.0
        assert [u.message.text for u in updates if u.message] == ["hello"]

        # A second poller (another bot instance) terminates the first with 409 Conflict.
        url = f"{emulator.base_url}{TOKEN}/getUpdates"
        async with aiohttp.ClientSession() as http:
            offset = str(updates[-1].update_id + 1)
            stale = asyncio.create_task(http.post(url, data={"offset": offset, "timeout": "20"}))
            await emulator.wait_until(lambda: emulator.poll_generation == 2)
            assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == ()
            async with await asyncio.wait_for(stale, 5) as response:
                assert response.status == 409
                assert (await response.json())["description"].startswith("Conflict:")


@pytest.mark.anyio
async def test_wait_sent_times_out_with_a_clear_message() -> None:
    async with running() as (emulator, _bot):
        with pytest.raises(TimeoutError, match="0 of 1 messages"):
            await emulator.wait_sent(1, 1, timeout=0.05)


@pytest.mark.anyio
async def test_commands_chat_action_delete_and_bodies() -> None:
    async with running() as (emulator, bot):
        await bot.set_my_commands([("start", "Register"), ("settings", "Filters")])
        assert [c.command for c in await bot.get_my_commands()] == ["start", "settings"]
        assert await bot.send_chat_action(8, "typing")
        sent = await bot.send_message(8, "temp")
        assert await bot.delete_message(8, sent.message_id)
        with pytest.raises(telegram.error.BadRequest, match=r"(?i)not found"):
            await bot.delete_message(8, sent.message_id)

        markup = {"inline_keyboard": [[{"text": "go", "callback_data": "go"}]]}
        async with aiohttp.ClientSession() as http:
            url = f"{emulator.base_url}{TOKEN}/sendMessage"
            async with http.post(
                url, json={"chat_id": 8, "text": "json body", "reply_markup": markup}
            ) as response:
                body = await response.json()
                assert body["ok"] and body["result"]["reply_markup"] == markup
            form = {"chat_id": "-5", "text": "form body", "reply_markup": json.dumps(markup)}
            async with http.post(url, data=form) as response:
                assert (await response.json())["result"]["chat"]["type"] == "group"
            async with http.post(url, data={"chat_id": "abc", "text": "x"}) as response:
                assert response.status == 400
                assert (await response.json())["description"] == "Bad Request: chat not found"
            async with http.post(
                url, data=b"{not json", headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 400


@pytest.mark.anyio
async def test_control_http_api_and_web_page() -> None:
    async with running() as (emulator, bot):
        base = emulator.web_url + "_emulator/"
        async with aiohttp.ClientSession() as http:
            async with http.get(emulator.web_url) as response:
                page = await response.text()
                assert response.status == 200 and "<script>" in page and "/_emulator/" in page

            async with http.post(
                base + "push_message", json={"chat_id": 31, "text": "/help", "first_name": "Bo"}
            ) as response:
                update = (await response.json())["result"]
                assert update["message"]["entities"][0]["type"] == "bot_command"
            sent = await bot.send_message(
                31,
                "pick",
                reply_markup=InlineKeyboardMarkup([[InlineKeyboardButton("a", callback_data="a")]]),
            )
            async with http.post(
                base + "push_callback",
                json={"chat_id": 31, "message_id": sent.message_id, "data": "a"},
            ) as response:
                assert (await response.json())["result"]["callback_query"]["data"] == "a"
            async with http.post(
                base + "inject_error", json={"method": "sendMessage", "code": 429, "retry_after": 2}
            ) as response:
                assert response.status == 200
            with pytest.raises(telegram.error.RetryAfter):
                await bot.send_message(31, "x")
            async with http.post(base + "block", json={"chat_id": 31}) as response:
                assert response.status == 200
            assert 31 in emulator.blocked

            async with http.get(base + "calls", params={"method": "sendMessage"}) as response:
                calls = (await response.json())["result"]
                assert [c["status"] for c in calls] == [200, 429]
            async with http.get(base + "sent", params={"chat_id": "31"}) as response:
                assert [s["text"] for s in (await response.json())["result"]] == ["pick"]
            async with http.get(base + "stats") as response:
                stats = (await response.json())["result"]
                assert stats["sent"] == 1 and stats["blocked"] == [31] and stats["injected"] == 1
            async with http.get(base + "chat", params={"chat_id": "31"}) as response:
                chat = (await response.json())["result"]
                assert chat["blocked"] is True
                assert [m["from"] for m in chat["messages"]] == ["user", "bot"]

            async with http.post(base + "push_message", json={"chat_id": 31}) as response:
                assert response.status == 400
                assert "text" in (await response.json())["description"]
            async with http.post(base + "push_message", data="chat_id=31&text=x") as response:
                assert response.status == 400
            async with http.post(
                base + "push_callback", json={"chat_id": 31, "message_id": 999, "data": "a"}
            ) as response:
                assert response.status == 400
            async with http.get(base + "sent", params={"chat_id": "x"}) as response:
                assert response.status == 400


# --- pure parts ---------------------------------------------------------------------------


def test_rate_limits_are_sliding_windows() -> None:
    limits = RateLimits(global_rate=2, private_interval=1.0, group_per_minute=2)
    assert limits.check(1, 0.0) is None
    limits.record(1, 0.0)
    verdict = limits.check(1, 0.999)
    assert verdict is not None and verdict.kind == "private" and verdict.retry_after == 1
    limits.record(2, 0.5)
    verdict = limits.check(3, 0.6)
    assert verdict is not None and verdict.kind == "global"
    assert limits.check(3, 1.0) is None

    tolerant = RateLimits(private_interval=1.0, private_tolerance=0.05)
    tolerant.record(1, 0.0)
    assert tolerant.check(1, 0.96) is None
    assert tolerant.check(1, 0.94) is not None


def test_html_parsing_matches_telegram() -> None:
    parsed = parse_text('<b>bold <i>both</i></b> <a href="https://x.io">link</a> &lt;3', "HTML")
    assert parsed.plain == "bold both link <3"
    assert [(e.type, e.offset, e.length) for e in parsed.entities] == [
        ("bold", 0, 9),
        ("italic", 5, 4),
        ("text_link", 10, 4),
    ]
    assert parsed.entities[2].url == "https://x.io"
    assert '<a href="https://x.io"' in parsed.safe_html
    emoji = parse_text("😀<b>x</b>", "HTML")
    assert emoji.api_entities() == [{"type": "bold", "offset": 2, "length": 1}]
    for bad in ("<b>x", "x</b>", "<b><i>x</b></i>", "<script>x</script>", "<span>x</span>"):
        with pytest.raises(EntityParseError):
            parse_text(bad, "HTML")
    with pytest.raises(ValueError, match="parse_mode"):
        parse_text("x", "BBCode")
    assert parse_text("*b* _i_ `c`", "Markdown").plain == "b i c"
    assert parse_text("__u__ ||s|| [t](https://a.b/\\))", "MarkdownV2").plain == "u s t"


_MDV2_SPECIAL = "_*[]()~`>#+-=|{}.!\\"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_escaped_text_round_trips(text: str) -> None:
    assert parse_text(html.escape(text, quote=False), "HTML").plain == text
    escaped = "".join("\\" + c if c in _MDV2_SPECIAL else c for c in text)
    assert parse_text(escaped, "MarkdownV2").plain == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>/&;#bi aspn=\"'*_`[]()~|\\.!x\n"))))
def test_parsers_reject_cleanly(text: str) -> None:
    for mode in ("HTML", "MarkdownV2", "Markdown"):
        try:
            parsed = parse_text(text, mode)
        except EntityParseError:
            continue
        assert all(
            0 <= e.offset <= e.offset + e.length <= len(parsed.plain) for e in parsed.entities
        )


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["chat_id", "text", "reply_markup", "offset", "show_alert", "timeout", "other"]
        ),
        st.one_of(st.text(), st.integers(), st.booleans(), st.none()),
    )
)
def test_params_decode_or_refuse_cleanly(raw: dict[str, object]) -> None:
    params = Params(raw)
    params.decoded()
    getters: list[Callable[[], object]] = [
        params.chat_id,
        lambda: params.get_int("offset"),
        lambda: params.get_bool("show_alert"),
        lambda: params.get_json("reply_markup"),
        lambda: params.get_str("text"),
        lambda: params.get_float("timeout", 0.0),
    ]
    for getter in getters:
        try:
            getter()
        except ApiError as exc:
            assert exc.code == 400 and exc.description.startswith("Bad Request: ")
