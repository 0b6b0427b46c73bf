"""Running the tree: embedded servers when no URLs are set, the runfile, signals."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import anyio.abc
import structlog

from actors.control import ControlConfigError, check_exposure
from actors.store.handle import StoreHandle
from messages.settings import Settings
from runtime.servers import EmbeddedServers, ServerUnavailable

log = structlog.get_logger("callwatch.service")

RUNFILE = "callwatch.run.json"


def runfile(settings: Settings) -> Path:
    return Path(settings.data_dir) / RUNFILE


def write_runfile(settings: Settings, control_url: str) -> None:
    """Where a running instance can be reached (read by ``callwatch status``)."""
    path = runfile(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "control_url": control_url}))


def remove_runfile(settings: Settings) -> None:
    path = runfile(settings)
    try:
        data = json.loads(path.read_text())
        if data.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


@asynccontextmanager
async def storage(settings: Settings) -> AsyncIterator[StoreHandle]:
    """A store handle on the configured servers, or on embedded ones we start and stop."""
    redis_url = settings.redis_url.reveal() if settings.redis_url else None
    database_url = settings.database_url.reveal() if settings.database_url else None
    servers = EmbeddedServers(
        Path(settings.data_dir), redis_url=redis_url, database_url=database_url
    )
    await anyio.to_thread.run_sync(servers.start)
    try:
        log.info(
            "storage.ready",
            redis="embedded" if servers.redis is not None else "configured",
            postgres="embedded" if servers.postgres is not None else "configured",
        )
        yield StoreHandle(servers.redis_url, servers.database_url, settings.store.call_timeout)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(servers.stop)


class StopSignal:
    """SIGINT or SIGTERM as a request to stop: heard from the moment `watch` runs (the
    start-up included: the runfile that tells scripts "up" is written while the tree
    starts), acted on by the scope `cancels` holds, at once or as soon as it is entered.
    """

    def __init__(self) -> None:
        self.received = False
        self._scope: anyio.CancelScope | None = None

    async def watch(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("service.signal", signal=signal.Signals(signum).name)
                self.received = True
                if self._scope is not None:
                    self._scope.cancel()

    @contextmanager
    def cancels(self) -> Iterator[anyio.CancelScope]:
        """A scope the signal cancels (at once if it already came)."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self.received:
                scope.cancel()
            try:
                yield scope
            finally:
                self._scope = None


async def run_service(settings: Settings) -> int:
    """``callwatch run``: the production tree until SIGINT/SIGTERM; 1 if the root gave up."""
    from callwatch.app import Environment, build_tree
    from supervisors import Tree

    try:
        check_exposure(settings.control.host, settings.control.token)
    except ControlConfigError as exc:
        log.error("service.refused", reason=str(exc))
        return 2
    missing = [
        name
        for name, value in (
            ("CALLWATCH_TELEGRAM_BOT_TOKEN", settings.telegram.bot_token),
            ("CALLWATCH_FEED_URL", settings.feed.url),
        )
        if not value
    ]
    if missing:
        log.error(
            "service.refused",
            reason=f"callwatch run needs {', '.join(missing)} (`callwatch demo` needs neither)",
        )
        return 2
    stop = StopSignal()
    try:
        async with anyio.create_task_group() as watcher:
            await watcher.start(stop.watch)
            async with storage(settings) as store:
                env = Environment(
                    store=store,
                    telegram_base_url=settings.telegram.api_base_url,
                    feed_url=settings.feed.url,
                    on_control_bound=lambda url: write_runfile(settings, url),
                )
                tree = Tree(build_tree(settings, env))
                try:
                    async with tree.running():
                        with stop.cancels():
                            await tree.wait()
                finally:
                    remove_runfile(settings)
            watcher.cancel_scope.cancel()
        return 1 if tree.failed else 0
    except ServerUnavailable as exc:
        log.error("service.storage_unavailable", reason=str(exc))
        return 1
