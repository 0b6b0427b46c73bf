"""The start/stop/url plumbing every HTTP sandbox peer shares (aiohttp on loopback)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["LoopbackHttpServer"]


class LoopbackHttpServer:
    """An aiohttp app bound on demand; state lives on the instance, so a `stop()` followed
    by `start(port=old_port)` brings the same peer back, as a restarted service would."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    def _make_app(self) -> web.Application:
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind and serve; port 0 picks a free port. Returns `url`."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already running at {self.url}")
        runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        address = runner.addresses[0]
        self._runner, self._host, self._port = runner, str(address[0]), int(address[1])
        return self.url

    async def stop(self) -> None:
        """Close the listener and open connections; clients then see connection refused."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def running(self) -> bool:
        return self._runner is not None

    @property
    def port(self) -> int:
        """The bound port (kept after `stop()` so a restart can reuse it)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. http://127.0.0.1:40123."""
        return f"http://{self._host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
