"""The dynamic supervisor: children started and stopped at run time (one per user)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import anyio.lowlevel

from messages.system import StartChild, StartChildren, TerminateChild
from runtime._backend import gc_paused
from runtime.ref import Ref
from supervisors.spec import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec
from supervisors.supervisor import ChildError, Supervisor, _Child, log

BULK_START = 100
"""From this many children in one request, the garbage collector pauses while they start."""


class DynamicSupervisor(Supervisor):
    """``one_for_one`` over children added by ``StartChild``, at most ``max_children``.

    Children that end for good are removed, so the bound counts live children only.
    """

    dynamic = True

    def __init__(self, spec: SupervisorSpec, max_children: int) -> None:
        super().__init__(spec)
        self.max_children = max_children

    async def _start_dynamic(self, spec: object) -> Ref | ChildError:
        (result,) = await self._start_many((spec,))
        return result

    def _admit(self, spec: object) -> ChildError | None:
        if not isinstance(spec, ChildSpec):
            return ChildError("StartChild needs a ChildSpec")
        existing = self._find(spec.name)
        if existing is not None:
            if existing.cell.running or existing.state == "restarting":
                return ChildError(f"a child named {spec.name!r} already exists")
            self._remove(existing)
        if len(self._children) >= self.max_children:
            return ChildError(f"{self.ctx.path} is at its limit of {self.max_children} children")
        return None

    async def _start_many(self, specs: tuple[object, ...]) -> list[Ref | ChildError]:
        """Launch every admitted child first, then wait for each: one loop pass starts
        thousands of children instead of one pass each.

        For a bulk start the cyclic garbage collector is paused while the children are
        launched and their tasks (if any) take their first step (``gc_paused``: its
        collections would otherwise dominate). It is back on before waiting on any child
        that is slower to start.
        """
        launched: list[tuple[_Child, int] | ChildError] = []
        bulk = len(specs) >= BULK_START
        with gc_paused() if bulk else nullcontext():
            pending = False
            for spec in specs:
                refused = self._admit(spec)
                if refused is not None:
                    launched.append(refused)
                    continue
                assert isinstance(spec, ChildSpec)
                child = self._make_child(spec)
                self._add(child)
                launched.append((child, self._launch(child)))
                pending = pending or not child.cell.ready
            if bulk and pending:
                await anyio.lowlevel.checkpoint()
        logger = log.bind()  # one logger for the batch, not one per child
        results: list[Ref | ChildError] = []
        for item in launched:
            if isinstance(item, ChildError):
                results.append(item)
                continue
            child, incarnation = item
            if await self._await_start(child, incarnation, logger):
                results.append(child.cell.ref)
            else:
                results.append(
                    ChildError(f"{child.spec.name!r} failed to start: {child.cell.last_error}")
                )
        return results


def dynamic_supervisor(
    name: str,
    *,
    max_children: int = 100_000,
    max_restarts: int = 50,
    period: float = 10.0,
    backoff: Backoff | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown: float = 60.0,
    seed: int | None = None,
) -> ChildSpec:
    """A child spec for a dynamic supervisor."""
    spec = SupervisorSpec(
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=max_restarts,
        period=period,
        backoff=backoff if backoff is not None else Backoff(),
        seed=seed,
    )
    return ChildSpec(
        name=name,
        actor=DynamicSupervisor,
        args={"spec": spec, "max_children": max_children},
        restart=restart,
        shutdown=shutdown,
        kind="dynamic_supervisor",
    )


async def start_child(supervisor: Ref, spec: ChildSpec, timeout: float = 30.0) -> Ref:
    """Start a child under a dynamic supervisor; raises ChildError when refused."""
    reply: Any = await supervisor.ask(StartChild(spec), timeout=timeout)
    if isinstance(reply, ChildError):
        raise reply
    assert isinstance(reply, Ref)
    return reply


async def start_children(
    supervisor: Ref, specs: list[ChildSpec], timeout: float = 60.0
) -> list[Ref | ChildError]:
    """Start many children under a dynamic supervisor in one request."""
    reply: Any = await supervisor.ask(StartChildren(tuple(specs)), timeout=timeout)
    if isinstance(reply, ChildError):
        raise reply
    assert isinstance(reply, list)
    return reply


async def terminate_child(supervisor: Ref, name: str, timeout: float = 30.0) -> None:
    """Stop (and, under a dynamic supervisor, remove) a child; raises ChildError if unknown."""
    reply: Any = await supervisor.ask(TerminateChild(name), timeout=timeout)
    if isinstance(reply, ChildError):
        raise reply
