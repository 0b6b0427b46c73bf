"""The emulator's HTTP face: the Bot API, file downloads, the control API and the web chat.

python-telegram-bot points its `base_url` at `/bot` and appends `<token>/<method>`, exactly as
with api.telegram.org. Everything else lives under `/_emulator/` (JSON in, JSON out) so other
processes and the web chat page can push updates and read the logs. The server binds loopback
addresses only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import socket
from collections.abc import Callable
from importlib import resources
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from sandbox.telegram.methods import BotApi
from sandbox.telegram.params import ApiError, Params, UploadedFile, bad_request
from sandbox.telegram.state import CallRecord, EmulatorState

__all__ = ["TelegramEmulator", "serve"]

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

MAX_REQUEST_BYTES = 60 * 1024 * 1024
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class _PushMessage(msgspec.Struct, forbid_unknown_fields=True):
    chat_id: int
    text: str
    user_id: int | None = None
    first_name: str = "Tester"
    username: str | None = None
    chat_type: str | None = None


class _PushCallback(msgspec.Struct, forbid_unknown_fields=True):
    chat_id: int
    message_id: int
    data: str
    user_id: int | None = None


class _Chat(msgspec.Struct, forbid_unknown_fields=True):
    chat_id: int


class _InjectError(msgspec.Struct, forbid_unknown_fields=True):
    method: str
    code: int
    count: int = 1
    description: str | None = None
    retry_after: int | None = None


class _InjectDelay(msgspec.Struct, forbid_unknown_fields=True):
    method: str
    seconds: float
    count: int = 1


class _InjectDisconnect(msgspec.Struct, forbid_unknown_fields=True):
    method: str
    count: int = 1
    after_delivery: bool = False


def _ensure_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the emulator binds loopback only, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"the emulator binds loopback only, not {host!r}")


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        status=status,
        content_type="application/json",
    )


def _error(error: ApiError) -> web.Response:
    return _json(error.body(), error.code)


async def _read_params(request: web.Request) -> Params:
    """Merge the query string with a url-encoded, multipart or JSON body."""
    raw: dict[str, object] = dict(request.query)
    files: dict[str, UploadedFile] = {}
    if not request.body_exists:
        return Params(raw)
    content_type = request.content_type
    try:
        if content_type in _FORM_TYPES:
            form = await request.post()
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    files[name] = UploadedFile(
                        value.filename or name, value.content_type, value.file.read()
                    )
                else:
                    raw[name] = value
        else:
            body = await request.read()
            if body.strip():
                decoded = json.loads(body)
                if not isinstance(decoded, dict):
                    raise bad_request("request body must be a JSON object")
                raw.update(decoded)
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "Request Entity Too Large") from None
    except (ValueError, UnicodeDecodeError):
        raise bad_request("can't parse request body") from None
    return Params(raw, files)


class TelegramEmulator(EmulatorState):
    """A loopback Bot API server; see `EmulatorState` for the options and the Python API.

    The Python API (push_*, block, inject_*, wait_*) must be used from the event loop that
    runs the server; other processes use the HTTP control API under `/_emulator/`.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.api = BotApi(self)
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._page: bytes | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (port 0 picks a free one; read it back from `port`)."""
        _ensure_loopback(host)
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        self.closing = False
        self._page = resources.files("sandbox.telegram").joinpath("webchat.html").read_bytes()
        runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            site = web.SockSite(runner, sock)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = "127.0.0.1" if host == "localhost" else host
        self._port = int(sock.getsockname()[1])
        log.info("telegram emulator listening", url=self.web_url, bot=self.bot_user["username"])

    async def stop(self) -> None:
        """Release long polls and close the server."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.closing = True
        self.notify(updates=True)
        await runner.cleanup()

    async def __aenter__(self) -> TelegramEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def _origin(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """For `telegram.Bot(base_url=...)`: the library appends the token and method."""
        return f"{self._origin}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self._origin}/file/bot"

    @property
    def web_url(self) -> str:
        return f"{self._origin}/"

    # --- routing ---------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_get("/", self._page_handler)
        app.router.add_route("*", "/bot{token}/{method}", self._bot_handler)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file_handler)
        control = {
            "push_message": self._c_push_message,
            "push_callback": self._c_push_callback,
            "block": self._c_block,
            "unblock": self._c_unblock,
            "inject_error": self._c_inject_error,
            "inject_delay": self._c_inject_delay,
            "inject_disconnect": self._c_inject_disconnect,
            "clear_faults": self._c_clear_faults,
        }
        for name, handler in control.items():
            app.router.add_post(f"/_emulator/{name}", handler)
        app.router.add_get("/_emulator/calls", self._c_calls)
        app.router.add_get("/_emulator/sent", self._c_sent)
        app.router.add_get("/_emulator/stats", self._c_stats)
        app.router.add_get("/_emulator/chats", self._c_chats)
        app.router.add_get("/_emulator/chat", self._c_chat)
        return app

    async def _page_handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page or b"", content_type="text/html", charset="utf-8")

    async def _file_handler(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(ApiError(401, "Unauthorized"))
        stored = self.file_by_path(request.match_info["path"])
        if stored is None:
            return _error(ApiError(404, "Not Found"))
        return web.Response(
            body=stored.data, content_type=stored.mime_type or "application/octet-stream"
        )

    # --- the Bot API -----------------------------------------------------------------------

    async def _bot_handler(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        method = request.match_info["method"]
        refusal: ApiError | None = None
        if token != self.token:
            bot_id, _, secret = token.partition(":")
            well_formed = bot_id.isdigit() and bool(secret)
            refusal = ApiError(401, "Unauthorized") if well_formed else ApiError(404, "Not Found")
        elif not self.api.knows(method):
            refusal = ApiError(404, "Not Found")
        if refusal is not None:
            self._log_call(method, Params({}), refusal.code, refusal)
            return _error(refusal)
        try:
            params = await _read_params(request)
        except ApiError as exc:
            self._log_call(method, Params({}), exc.code, exc)
            return _error(exc)
        if self.latency > 0:
            await asyncio.sleep(self.latency / 2)
        fault = self.take_fault(method)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "error":
            error = ApiError(fault.code, fault.description, fault.retry_after)
            self._log_call(method, params, error.code, error, injected=True)
            return _error(error)
        if fault is not None and not fault.after_delivery:
            self._log_call(method, params, 0, ApiError(0, "connection dropped"), injected=True)
            return self._drop(request)
        try:
            result = await self.api.call(method, params)
        except ApiError as exc:
            response = _error(exc)
            self._log_call(method, params, exc.code, exc)
        else:
            response = _json({"ok": True, "result": result})
            self._log_call(method, params, 200, None)
        if fault is not None:
            return self._drop(request)
        if self.latency > 0:
            await asyncio.sleep(self.latency / 2)
        return response

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection with no answer, as a network failure would."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError

    def _log_call(
        self,
        method: str,
        params: Params,
        status: int,
        error: ApiError | None,
        *,
        injected: bool = False,
    ) -> None:
        decoded = params.decoded()
        chat_id = decoded.get("chat_id")
        self.record_call(
            CallRecord(
                method=self.api.canonical(method),
                params=decoded,
                chat_id=chat_id if isinstance(chat_id, int | str) else None,
                t=self.clock(),
                status=status,
                ok=error is None,
                description=None if error is None else error.description,
                retry_after=None if error is None else error.retry_after,
                injected=injected,
            )
        )

    # --- the control API -------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request, kind: type[_T]) -> _T:
        if request.content_type != "application/json":
            raise bad_request("control requests must be application/json")
        try:
            return msgspec.json.decode(await request.read(), type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise bad_request(str(exc)) from None

    async def _control(self, request: web.Request, kind: type[Any], action: Any) -> web.Response:
        try:
            body = await self._body(request, kind)
            result = action(body)
        except ApiError as exc:
            return _error(exc)
        except ValueError as exc:
            return _error(bad_request(str(exc)))
        return _json({"ok": True, "result": result})

    async def _c_push_message(self, request: web.Request) -> web.Response:
        return await self._control(
            request,
            _PushMessage,
            lambda b: self.push_message(
                b.chat_id,
                b.text,
                user_id=b.user_id,
                first_name=b.first_name,
                username=b.username,
                chat_type=b.chat_type,
            ),
        )

    async def _c_push_callback(self, request: web.Request) -> web.Response:
        return await self._control(
            request,
            _PushCallback,
            lambda b: self.push_callback(b.chat_id, b.message_id, b.data, user_id=b.user_id),
        )

    async def _c_block(self, request: web.Request) -> web.Response:
        def action(body: _Chat) -> bool:
            self.block(body.chat_id)
            return True

        return await self._control(request, _Chat, action)

    async def _c_unblock(self, request: web.Request) -> web.Response:
        def action(body: _Chat) -> bool:
            self.unblock(body.chat_id)
            return True

        return await self._control(request, _Chat, action)

    async def _c_inject_error(self, request: web.Request) -> web.Response:
        def action(b: _InjectError) -> bool:
            self.inject_error(b.method, b.code, b.count, b.description, b.retry_after)
            return True

        return await self._control(request, _InjectError, action)

    async def _c_inject_delay(self, request: web.Request) -> web.Response:
        def action(b: _InjectDelay) -> bool:
            self.inject_delay(b.method, b.seconds, b.count)
            return True

        return await self._control(request, _InjectDelay, action)

    async def _c_inject_disconnect(self, request: web.Request) -> web.Response:
        def action(b: _InjectDisconnect) -> bool:
            self.inject_disconnect(b.method, b.count, after_delivery=b.after_delivery)
            return True

        return await self._control(request, _InjectDisconnect, action)

    async def _c_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return _json({"ok": True, "result": True})

    @staticmethod
    def _query_int(request: web.Request, name: str) -> int | None:
        value = request.query.get(name)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise bad_request(f"{name} must be an integer") from None

    @staticmethod
    def _query_float(request: web.Request, name: str) -> float | None:
        value = request.query.get(name)
        if value is None or value == "":
            return None
        try:
            return float(value)
        except ValueError:
            raise bad_request(f"{name} must be a number") from None

    async def _c_calls(self, request: web.Request) -> web.Response:
        try:
            since = self._query_float(request, "since")
            limit = self._query_int(request, "limit")
        except ApiError as exc:
            return _error(exc)
        method = request.query.get("method")
        calls = [
            dataclasses.asdict(c)
            for c in self.calls
            if (method is None or c.method.lower() == method.lower())
            and (since is None or c.t >= since)
        ]
        if limit is not None:
            calls = calls[-limit:] if limit > 0 else []
        return _json({"ok": True, "result": calls})

    async def _c_sent(self, request: web.Request) -> web.Response:
        try:
            chat_id = self._query_int(request, "chat_id")
        except ApiError as exc:
            return _error(exc)
        return _json({"ok": True, "result": [dataclasses.asdict(s) for s in self.sent(chat_id)]})

    async def _c_stats(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "result": self.stats()})

    async def _c_chats(self, request: web.Request) -> web.Response:
        return _json({"ok": True, "result": self.chat_list()})

    async def _c_chat(self, request: web.Request) -> web.Response:
        try:
            chat_id = self._query_int(request, "chat_id")
        except ApiError as exc:
            return _error(exc)
        if chat_id is None:
            return _error(bad_request("chat_id is required"))
        return _json(
            {
                "ok": True,
                "result": {
                    "chat": self.chats.get(chat_id),
                    "blocked": chat_id in self.blocked,
                    "messages": self.transcript(chat_id),
                    "notices": self.notices(chat_id),
                },
            }
        )


async def serve(
    host: str = "127.0.0.1",
    port: int = 8081,
    *,
    on_ready: Callable[[TelegramEmulator], None] | None = None,
    **options: Any,
) -> None:
    """Run an emulator until cancelled (the `callwatch sandbox telegram` entry point).

    `options` are `TelegramEmulator`'s keyword arguments; `on_ready` sees it once it listens.
    """
    emulator = TelegramEmulator(**options)
    await emulator.start(host, port)
    try:
        if on_ready is not None:
            on_ready(emulator)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
