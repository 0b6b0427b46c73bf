"""Both embedded servers for one data folder, started and stopped together."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType

import structlog

from runtime.servers.postgres import EmbeddedPostgres
from runtime.servers.redis import EmbeddedRedis

__all__ = ["EmbeddedServers"]

log = structlog.get_logger(__name__)


class EmbeddedServers:
    """Both servers for one data folder, as a context manager.

    A URL given for a server means "use that one": the embedded server is then not started
    and the URL passes through, so callers have one code path. Servers are stopped on exit
    from the ``with`` block, at interpreter exit, and on SIGTERM (when SIGTERM still has its
    default disposition and we are in the main thread: the handler stops the servers and then
    lets SIGTERM terminate the process as it would have).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        durable: bool = True,
        handle_sigterm: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.redis: EmbeddedRedis | None = (
            None if redis_url else EmbeddedRedis(self.data_dir, durable=durable)
        )
        self.postgres: EmbeddedPostgres | None = (
            None if database_url else EmbeddedPostgres(self.data_dir, durable=durable)
        )
        self._redis_url = redis_url
        self._database_url = database_url
        self._handle_sigterm = handle_sigterm
        self._previous_sigterm: signal.Handlers | None = None
        self._started = False

    @property
    def redis_url(self) -> str:
        return self._redis_url or (self.redis.url if self.redis else "")

    @property
    def database_url(self) -> str:
        return self._database_url or (self.postgres.url if self.postgres else "")

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._started:
            atexit.register(self.stop)
            self._install_sigterm()
            self._started = True
        try:
            if self.redis is not None:
                self.redis.start()
            if self.postgres is not None:
                self.postgres.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what we started (PostgreSQL first: it is the slower one to flush)."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        self._restore_sigterm()
        errors: list[BaseException] = []
        for server in (self.postgres, self.redis):
            if server is None:
                continue
            try:
                server.stop()
            except Exception as exc:  # one failing must not keep the other running
                errors.append(exc)
                log.exception("embedded_server_stop_failed", server=type(server).__name__)
        if errors:
            raise errors[0]

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _install_sigterm(self) -> None:
        if not self._handle_sigterm or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous_sigterm = signal.SIG_DFL

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is None:
            return
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError):
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._previous_sigterm = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        try:
            self.stop()
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
