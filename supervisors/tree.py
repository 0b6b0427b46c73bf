"""Running a whole supervision tree: the root has no parent but the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog

from messages.status import ActorStatus
from runtime.cell import Cell, Exit
from runtime.ref import Ref
from runtime.system import ActorSystem
from supervisors.spec import ChildSpec

log = structlog.get_logger("callwatch.supervision")


class TreeFailed(Exception):
    """The root supervisor gave up (or could not start): the application is down."""


class Tree:
    """One application tree: start it, look actors up, snapshot it, stop it.

    ``async with Tree(spec).running() as tree:`` starts the root and every child in
    order, and on leaving stops them in reverse order.
    """

    def __init__(self, root: ChildSpec, system: ActorSystem | None = None) -> None:
        self.root_spec = root
        self.system = system if system is not None else ActorSystem()
        self.exit: Exit | None = None
        self._done = anyio.Event()
        self._cell: Cell | None = None

    @property
    def root(self) -> Ref:
        assert self._cell is not None, "the tree is not running"
        return self._cell.ref

    def lookup(self, name: str) -> Ref:
        return self.system.registry.lookup(name)

    def status(self) -> ActorStatus:
        assert self._cell is not None, "the tree is not running"
        return self._cell.status()

    @property
    def failed(self) -> bool:
        return self.exit is not None and self.exit.abnormal

    async def wait(self) -> Exit:
        """Until the root ends; its exit says whether it stopped or gave up."""
        await self._done.wait()
        assert self.exit is not None
        return self.exit

    async def _run_root(self, cell: Cell) -> None:
        try:
            self.exit = await cell.run(self.root_spec.build)
            if self.exit.abnormal:
                log.error("tree.failed", path=cell.path, error=cell.last_error)
            else:
                log.info("tree.stopped", path=cell.path)
        finally:
            for path in self.system.registry.paths():
                other = self.system.registry.cell(path)
                if other is not None:
                    other.terminate()
            self._done.set()

    async def stop(self) -> Exit:
        """Stop every actor in reverse start order and wait for the root to end."""
        if self._cell is not None and self._cell.running:
            self._cell.request_stop()
        return await self.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Tree]:
        spec = self.root_spec
        cell = self.system.cell(spec.name, spec.name, spec.kind, spec.mailbox_spec)
        self._cell = cell
        started = False
        async with anyio.create_task_group() as tg:
            cell.prepare()
            tg.start_soon(self._run_root, cell)
            started = await cell.wait_ready(spec.start_timeout)
            if started:
                log.info("tree.started", path=cell.path, actors=len(self.system.registry))
                try:
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.stop()
            else:
                await self.wait()
        if not started:
            raise TreeFailed(f"the tree failed to start: {cell.last_error}")
