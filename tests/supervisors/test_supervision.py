"""OTP semantics: strategies, restart types, intensity, backoff, ordered start/stop."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from messages.system import ChildCounts, CountChildren, WhichChildren
from runtime import ActorSystem, ManualClock
from supervisors import (
    NO_BACKOFF,
    Backoff,
    ChildError,
    Restart,
    Strategy,
    Tree,
    TreeFailed,
    dynamic_supervisor,
    start_child,
    supervisor,
    terminate_child,
    worker,
)
from tests.conftest import BOTH_BACKENDS
from tests.helpers import eventually
from tests.runtime.probe import Probe

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


def three(log: list[str], strategy: Strategy, **kw: object) -> Tree:
    children = [worker(n, Probe, log=log, name=n) for n in ("a", "b", "c")]
    return Tree(supervisor("root", children, strategy=strategy, backoff=NO_BACKOFF, **kw))


async def crash_and_settle(tree: Tree, name: str, expected_log_len: int, log: list[str]) -> None:
    tree.lookup(name).tell_nowait("boom")
    await eventually(lambda: len(log) == expected_log_len)
    await eventually(lambda: all(c.state == "running" for c in tree.status().children))


async def test_ordered_start_and_reverse_stop() -> None:
    log: list[str] = []
    async with three(log, Strategy.ONE_FOR_ONE).running():
        assert log == ["start:a", "start:b", "start:c"]
    assert log[3:] == ["stop:c", "stop:b", "stop:a"]


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    log: list[str] = []
    async with three(log, Strategy.ONE_FOR_ONE).running() as tree:
        await crash_and_settle(tree, "b", 5, log)
        assert log[3:] == ["stop:b", "start:b"]
        restarts = {c.name: c.restarts_total for c in tree.status().children}
        assert restarts == {"a": 0, "b": 1, "c": 0}


async def test_one_for_all_restarts_every_child_in_order() -> None:
    log: list[str] = []
    async with three(log, Strategy.ONE_FOR_ALL).running() as tree:
        await crash_and_settle(tree, "b", 9, log)
        assert log[3:] == ["stop:b", "stop:c", "stop:a", "start:a", "start:b", "start:c"]


async def test_rest_for_one_restarts_the_crashed_child_and_later_ones() -> None:
    log: list[str] = []
    async with three(log, Strategy.REST_FOR_ONE).running() as tree:
        await crash_and_settle(tree, "b", 7, log)
        assert log[3:] == ["stop:b", "stop:c", "start:b", "start:c"]
        await crash_and_settle(tree, "c", 9, log)
        assert log[7:] == ["stop:c", "start:c"]


@pytest.mark.parametrize(
    ("restart", "after_crash", "after_exit"),
    [
        (Restart.PERMANENT, "running", "running"),
        (Restart.TRANSIENT, "running", "stopped"),
        (Restart.TEMPORARY, None, None),
    ],
)
async def test_restart_types(
    restart: Restart, after_crash: str | None, after_exit: str | None
) -> None:
    log: list[str] = []
    spec = supervisor(
        "root", [worker("p", Probe, restart=restart, log=log, name="p")], backoff=NO_BACKOFF
    )
    async with Tree(spec).running() as tree:

        def state() -> str | None:
            node = tree.status().find("root/p")
            return None if node is None else node.state

        tree.lookup("p").tell_nowait("boom")
        await eventually(lambda: "stop:p" in log)
        await eventually(lambda: state() in ("running", None))
        assert state() == after_crash
        if after_crash is None:
            return
        before = len(log)
        tree.lookup("p").tell_nowait("exit")
        await eventually(lambda: len(log) >= before + 1)
        await eventually(lambda: state() == after_exit)


async def test_intensity_exceeded_escalates_to_parent() -> None:
    log: list[str] = []
    inner = supervisor(
        "inner",
        [worker("w", Probe, log=log, name="w")],
        max_restarts=2,
        period=60,
        backoff=NO_BACKOFF,
    )
    sibling = worker("s", Probe, log=log, name="s")
    spec = supervisor("root", [inner, sibling], max_restarts=5, period=60, backoff=NO_BACKOFF)
    with capture_logs() as logs:
        async with Tree(spec).running() as tree:
            for i in range(3):
                await eventually(lambda: tree.lookup("w").state == "running")
                tree.lookup("w").tell_nowait("boom")
                await eventually(lambda n=i: log.count("stop:w") == n + 1)
            await eventually(
                lambda: (tree.status().find("root/inner") or tree.status()).restarts_total == 1
            )
            await eventually(lambda: tree.lookup("w").state == "running")
            assert tree.status().find("root/s").restarts_total == 0  # type: ignore[union-attr]
    events = [e["event"] for e in logs]
    assert "supervisor.give_up" in events
    give_up = next(e for e in logs if e["event"] == "supervisor.give_up")
    assert give_up["path"] == "root/inner"


async def test_root_giving_up_reports_failure() -> None:
    log: list[str] = []
    spec = supervisor(
        "root",
        [worker("w", Probe, log=log, name="w")],
        max_restarts=1,
        period=60,
        backoff=NO_BACKOFF,
    )
    tree = Tree(spec)
    async with tree.running():
        tree.lookup("w").tell_nowait("boom")
        await eventually(lambda: tree.lookup("w").state == "running")
        tree.lookup("w").tell_nowait("boom")
        exit = await tree.wait()
    assert exit.abnormal
    assert tree.failed
    assert "gave up" in str(exit.error)


async def test_a_child_that_never_starts_brings_the_root_down() -> None:
    spec = supervisor(
        "root",
        [worker("w", Probe, log=[], name="w", fail_start=[True] * 10)],
        max_restarts=2,
        period=60,
        backoff=NO_BACKOFF,
    )
    tree = Tree(spec)
    async with tree.running():
        exit = await tree.wait()
    assert exit.abnormal and "gave up" in str(exit.error)


async def test_a_root_that_cannot_start_raises_tree_failed() -> None:
    class Broken(Probe):
        async def started(self) -> None:
            raise RuntimeError("no")

    with pytest.raises(TreeFailed, match="no"):
        async with Tree(worker("root", Broken, log=[])).running():
            pass


async def test_backoff_grows_with_failures_and_resets_after_a_stable_period() -> None:
    clock = ManualClock()
    log: list[str] = []
    backoff = Backoff(initial=1.0, multiplier=2.0, maximum=5.0, jitter=0.0, reset_after=30.0)
    spec = supervisor(
        "root",
        [worker("w", Probe, log=log, name="w", fail_start=[False, True, True, True, False])],
        max_restarts=100,
        period=1.0,
        backoff=backoff,
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        ref = tree.lookup("w")
        ref.tell_nowait("boom")
        for expected in (1.0, 2.0, 4.0, 5.0):
            await eventually(lambda: clock.sleepers == 1)
            assert clock.sleeps[-1] == expected
            await clock.advance(expected)
        await eventually(lambda: ref.state == "running")
        assert log.count("fail:w") == 3
        await clock.advance(31.0)
        ref.tell_nowait("boom")
        await eventually(lambda: clock.sleepers == 1)
        assert clock.sleeps[-1] == 1.0


async def test_backoff_jitter_stays_within_bounds() -> None:
    import random

    backoff = Backoff(initial=1.0, multiplier=2.0, maximum=8.0, jitter=0.25)
    rng = random.Random(7)
    for attempt in range(10):
        base = min(8.0, 2.0**attempt)
        delay = backoff.delay(attempt, rng)
        assert base * 0.75 <= delay <= base * 1.25


async def test_shutdown_timeout_cancels_a_stuck_child() -> None:
    log: list[str] = []
    spec = supervisor("root", [worker("w", Probe, shutdown=0.05, log=log, name="w")])
    with capture_logs() as logs:
        async with Tree(spec).running() as tree:
            tree.lookup("w").tell_nowait("hang")
            await eventually(lambda: len(tree.lookup("w")._cell.mailbox) == 0)
    assert "actor.kill" in [e["event"] for e in logs]
    assert log == ["start:w", "stop:w"]


async def test_dynamic_supervisor_starts_stops_and_bounds_children() -> None:
    log: list[str] = []
    spec = supervisor("root", [dynamic_supervisor("users", max_children=2, backoff=NO_BACKOFF)])
    async with Tree(spec).running() as tree:
        users = tree.lookup("users")
        u1 = await start_child(users, worker("user:1", Probe, log=log, name="u1"))
        await start_child(users, worker("user:2", Probe, log=log, name="u2"))
        assert await u1.ask("hi") == ("u1", "hi")
        with pytest.raises(ChildError, match="limit"):
            await start_child(users, worker("user:3", Probe, log=log, name="u3"))
        counts = await users.ask(CountChildren())
        assert counts == ChildCounts(specs=2, active=2, supervisors=0, workers=2)
        u1.tell_nowait("boom")
        await eventually(lambda: u1.state == "running" and log.count("start:u1") == 2)
        await terminate_child(users, "user:1")
        assert not u1.alive
        names = [c.name for c in await users.ask(WhichChildren())]
        assert names == ["user:2"]
        await start_child(users, worker("user:3", Probe, log=log, name="u3"))
        with pytest.raises(ChildError):
            await terminate_child(users, "user:9")


async def test_status_snapshot_is_plain_data() -> None:
    log: list[str] = []
    spec = supervisor(
        "root",
        [
            supervisor("store", [worker("redis", Probe, log=log, name="r")]),
            worker("x", Probe, log=log),
        ],
        max_restarts=7,
    )
    async with Tree(spec).running() as tree:
        await tree.lookup("redis").ask("hello")
        snap = tree.status()
        assert [n.path for n in snap.walk()] == ["root", "root/store", "root/store/redis", "root/x"]
        redis = snap.find("root/store/redis")
        assert redis is not None
        assert redis.kind == "worker" and redis.state == "running"
        assert redis.processed == 1 and redis.mailbox_capacity == 1000
        assert snap.kind == "supervisor" and snap.restart_limit == 7
        from messages.status import decode_status, encode_status

        assert decode_status(encode_status(snap)) == snap


async def test_lifecycle_events_are_logged_with_paths() -> None:
    log: list[str] = []
    with capture_logs() as logs:
        async with three(log, Strategy.ONE_FOR_ONE).running() as tree:
            await crash_and_settle(tree, "a", 5, log)
    seen = {(e["event"], e.get("path")) for e in logs}
    for event in ("actor.start", "actor.crash", "actor.restart", "actor.stop"):
        assert (event, "root/a") in seen, event
