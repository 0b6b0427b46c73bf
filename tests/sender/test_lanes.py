"""The sender's pure scheduling: priorities, aging, pacing and the global limit (no I/O)."""

from __future__ import annotations

import heapq
import itertools
import random

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sender_lanes import (
    Dispatch,
    Pending,
    Scheduler,
    SlidingMin,
    plain_length,
    retry_delay,
    wait_event,
)
from messages.delivery import MAX_TEXT, Lane, Outbound
from runtime import ManualClock
from sandbox.telegram.limits import RateLimits
from tests.conftest import BOTH_BACKENDS

_ids = itertools.count(1)


def msg(chat_id: int, lane: Lane = Lane.ALERT, now: float = 0.0, **fields: object) -> Pending:
    text = str(fields.pop("text", f"m{next(_ids)}"))
    o = Outbound(chat_id=chat_id, text=text, lane=lane, **fields)  # type: ignore[arg-type]
    n = next(_ids)
    return Pending(f"id{n}", o, now, n, plain_length(text))


def take(s: Scheduler, now: float) -> Dispatch:
    step = s.next(now)
    assert isinstance(step, Dispatch), step
    return step


def drain(s: Scheduler, now: float) -> list[Dispatch]:
    out = []
    while isinstance(step := s.next(now), Dispatch):
        out.append(step)
    return out


# --- priorities and aging ----------------------------------------------------------------


def test_interactive_then_alert_then_bulk() -> None:
    s = Scheduler(global_rate=100, in_flight=10, aging_s=10)
    s.add(msg(3, Lane.BULK), 0)
    s.add(msg(2, Lane.ALERT), 0)
    s.add(msg(1, Lane.INTERACTIVE), 0)
    assert [d.chat_id for d in drain(s, 0)] == [1, 2, 3]


def test_aged_bulk_competes_with_alerts_as_an_equal() -> None:
    s = Scheduler(global_rate=1_000, in_flight=1, aging_s=10, burst=1_000)
    s.add(msg(100, Lane.BULK, now=0.0), 0.0)
    # Alerts keep arriving; those queued before the bulk message aged go first, later ones after.
    for i in range(20):
        s.add(msg(200 + i, Lane.ALERT, now=i * 1.0), i * 1.0)
    order = []
    now = 20.0
    while s.pending:
        d = take(s, now)
        order.append(d.chat_id)
        s.complete(d, now, 0.001)
    assert order.index(100) == 10  # after the alerts queued at t < 10, before those at t > 10


def test_interactive_flood_leaves_aged_messages_a_share() -> None:
    s = Scheduler(global_rate=1_000, in_flight=1, aging_s=5, aged_share=0.1, burst=1_000)
    s.add(msg(-500, Lane.BULK, now=0.0), 0.0)
    for i in range(100):
        s.add(msg(1 + i, Lane.INTERACTIVE, now=20.0), 20.0)
    order = []
    while s.pending:
        d = take(s, 20.0)
        order.append(d.chat_id)
        s.complete(d, 20.0, 0.0)
    assert order.index(-500) == 9  # one slot in ten


def test_fresh_bulk_never_beats_interactive() -> None:
    s = Scheduler(global_rate=1_000, in_flight=1, aging_s=5, aged_share=0.1, burst=1_000)
    s.add(msg(-500, Lane.BULK, now=0.0), 0.0)
    for i in range(30):
        s.add(msg(1 + i, Lane.INTERACTIVE, now=1.0), 1.0)
    order = []
    while s.pending:
        d = take(s, 1.0)
        order.append(d.chat_id)
        s.complete(d, 1.0, 0.0)
    assert order[-1] == -500


def test_rate_limited_message_goes_first() -> None:
    s = Scheduler(global_rate=100, in_flight=4)
    d = take_after_add(s, msg(7, Lane.BULK))
    s.add(msg(1, Lane.INTERACTIVE), 0)
    s.complete(d, 0.01, 0.01)
    s.pause(2.01)
    s.requeue(d.items, 0.01, first=True)
    assert s.next(1.0) == 2.01  # paused: come back then
    assert s.paused_until == 2.01
    assert [x.chat_id for x in drain(s, 2.5)] == [7, 1]


def take_after_add(s: Scheduler, p: Pending) -> Dispatch:
    s.add(p, 0)
    return take(s, 0)


# --- per-chat pacing ---------------------------------------------------------------------


def test_private_chat_is_paced_from_the_answer_but_others_keep_going() -> None:
    s = Scheduler(global_rate=100, private_interval=1.0, private_margin=0.05, in_flight=8)
    for _ in range(3):
        s.add(msg(1), 0)
    s.add(msg(2), 0)
    first = drain(s, 0)
    assert [d.chat_id for d in first] == [1, 2]  # chat 1's second message waits, chat 2 goes
    s.complete(first[0], 0.2, 0.2)
    assert s.next(0.5) == pytest.approx(1.25)  # one interval (+margin) after the answer
    assert take(s, 1.25).chat_id == 1


def test_one_request_per_chat_in_flight() -> None:
    s = Scheduler(global_rate=100, private_interval=0.0, private_margin=0.0, in_flight=8)
    s.add(msg(1), 0)
    s.add(msg(1), 0)
    assert len(drain(s, 0)) == 1


def test_group_gets_twenty_per_minute() -> None:
    s = Scheduler(global_rate=100, group_per_minute=20, group_margin=0.5, in_flight=1)
    for _ in range(21):
        s.add(msg(-42), 0)
    now = 0.0
    for _ in range(20):
        d = take(s, now)
        s.complete(d, now, 0.0)
        now += 0.05
    assert s.next(now) == pytest.approx(60.5)  # the 21st waits for the first to leave the window
    assert isinstance(s.next(60.5), Dispatch)


def test_drop_chat_returns_its_messages() -> None:
    s = Scheduler(global_rate=100)
    for lane in Lane:
        s.add(msg(5, lane), 0)
    s.add(msg(6), 0)
    dropped = s.drop_chat(5)
    assert len(dropped) == 3
    assert s.pending == 1
    assert [d.chat_id for d in drain(s, 0)] == [6]


def test_idle_chats_are_forgotten_once_their_pacing_expired() -> None:
    s = Scheduler(global_rate=100, in_flight=8)
    for chat in range(1, 6):
        s.add(msg(chat), 0)
    for d in drain(s, 0):
        s.complete(d, 0.1, 0.1)
    assert s.chats == 5
    s.next(5.0)
    assert s.chats == 0


# --- the global limit ----------------------------------------------------------------------


def test_never_more_than_capacity_per_window_nor_in_flight() -> None:
    s = Scheduler(global_rate=30, in_flight=50, global_margin=0.0, burst=100)
    for chat in range(1, 101):
        s.add(msg(chat), 0)
    assert len(drain(s, 0)) == 30  # capacity, although in_flight and the bucket allow more
    s2 = Scheduler(global_rate=1_000, in_flight=4)
    for chat in range(1, 101):
        s2.add(msg(chat), 0)
    assert len(drain(s2, 0)) == 4
    assert s2.next(0) is None  # wait for an answer


def test_token_bucket_spreads_sends() -> None:
    s = Scheduler(global_rate=30, in_flight=50, burst=3)
    for chat in range(1, 101):
        s.add(msg(chat), 0)
    assert len(drain(s, 0)) == 3
    wake = s.next(0)
    assert wake == pytest.approx(1 / 30)


def simulate(
    *,
    rate: float,
    chats: list[int],
    per_chat: int,
    forward: tuple[float, float],
    back: tuple[float, float],
    in_flight: int,
    seed: int,
    one_way_share: float = 0.0,
) -> tuple[int, float, RateLimits, Scheduler]:
    """Drive a scheduler against the emulator's own limit bookkeeping with random legs."""
    rng = random.Random(seed)
    s = Scheduler(global_rate=rate, in_flight=in_flight, aging_s=5, one_way_share=one_way_share)
    server = RateLimits(global_rate=rate, private_interval=1.0, group_per_minute=20)
    for i, chat in enumerate(chats * per_chat):
        s.add(msg(chat, [Lane.INTERACTIVE, Lane.ALERT, Lane.BULK][i % 3]), 0.0)
    total = s.pending
    events: list[tuple[float, int, str, Dispatch]] = []
    order = itertools.count()
    violations = 0
    now = 0.0
    done = 0
    last = 0.0
    while done < total:
        step = s.next(now)
        while isinstance(step, Dispatch):
            at = now + rng.uniform(*forward)
            heapq.heappush(events, (at, next(order), "server", step))
            step = s.next(now)
        wake = step if isinstance(step, float) else None
        if events and (wake is None or events[0][0] <= wake):
            now, _, kind, d = heapq.heappop(events)
            if kind == "server":
                if server.check(d.chat_id, now) is not None:
                    violations += 1
                else:
                    server.record(d.chat_id, now)
                heapq.heappush(events, (now + rng.uniform(*back), next(order), "done", d))
            else:
                s.complete(d, now, now - d.issued)
                done += len(d.items)
                last = now
        else:
            assert wake is not None, "stuck: nothing in flight and nothing to wait for"
            now = max(now, wake)
    return violations, last, server, s


@given(
    seed=st.integers(0, 2**32 - 1),
    forward=st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.3)),
    back=st.tuples(st.floats(0.0, 0.05), st.floats(0.0, 0.3)),
    in_flight=st.integers(1, 40),
    rate=st.sampled_from([5.0, 30.0, 30.5, 100.0]),
)
@settings(max_examples=60, deadline=None)
def test_limits_hold_whatever_the_jitter(
    seed: int,
    forward: tuple[float, float],
    back: tuple[float, float],
    in_flight: int,
    rate: float,
) -> None:
    f = (min(forward), max(forward))
    b = (min(back), max(back))
    chats = [*range(1, 61), -1, -2]
    violations, _, _, _ = simulate(
        rate=rate, chats=chats, per_chat=3, forward=f, back=b, in_flight=in_flight, seed=seed
    )
    assert violations == 0


def test_reaches_the_limit_despite_latency() -> None:
    # 30 ms each way, 600 chats with one message each: the global limit is what binds.
    chats = list(range(1, 601))
    violations, last, _, _ = simulate(
        rate=30,
        chats=chats,
        per_chat=1,
        forward=(0.03, 0.032),
        back=(0.03, 0.032),
        in_flight=8,
        seed=1,
    )
    assert violations == 0
    assert 600 / last >= 0.93 * 30
    # With a symmetric path and a one-way share, the round trip is bought back.
    violations, last, _, _ = simulate(
        rate=30,
        chats=chats,
        per_chat=1,
        forward=(0.03, 0.032),
        back=(0.03, 0.032),
        in_flight=8,
        seed=1,
        one_way_share=0.45,
    )
    assert violations == 0
    assert 600 / last >= 0.97 * 30


# --- digests -------------------------------------------------------------------------------


def test_backed_up_alerts_coalesce_into_one_digest() -> None:
    s = Scheduler(global_rate=100, in_flight=4)
    d = take_after_add(s, msg(9, digest_key="calls"))
    for i in range(5):
        s.add(msg(9, digest_key="calls", text=f"alert {i}"), 0.1)
    s.add(msg(9, digest_key="other", text="other"), 0.1)
    s.add(msg(9, Lane.BULK, text="bulk"), 0.1)
    s.complete(d, 0.1, 0.1)
    digest = take(s, 2.0)
    assert [p.outbound.text for p in digest.items] == [f"alert {i}" for i in range(5)]
    assert digest.text == "\n\n".join(f"alert {i}" for i in range(5))
    assert s.pending == 2


def test_digest_stays_under_the_limit_and_the_rest_waits() -> None:
    s = Scheduler(global_rate=100, in_flight=4)
    body = "x" * 1_500
    for _ in range(5):
        s.add(msg(9, digest_key="calls", text=body), 0)
    d = take(s, 0)
    assert len(d.items) == 2
    assert plain_length(d.text) <= MAX_TEXT
    s.complete(d, 0.01, 0.01)
    d2 = take(s, 2)
    assert len(d2.items) == 2
    s.complete(d2, 2.01, 0.01)
    assert len(take(s, 4).items) == 1


def test_solo_messages_and_photos_never_coalesce() -> None:
    s = Scheduler(global_rate=100, in_flight=4)
    p = msg(9, digest_key="k")
    p.solo = True
    s.add(p, 0)
    s.add(msg(9, digest_key="k", photo=b"png"), 0)
    assert len(take(s, 0).items) == 1


# --- small pieces --------------------------------------------------------------------------


def test_plain_length_counts_what_telegram_counts() -> None:
    assert plain_length("<b>a&amp;b</b>") == 3
    assert plain_length('<a href="https://x.y/">link</a>') == 4
    assert plain_length("😀") == 2  # UTF-16 code units


def test_sliding_min_and_retry_delay() -> None:
    m = SlidingMin(3)
    assert m.value == 0.0
    for v in (5.0, 3.0, 4.0, 6.0, 7.0):
        m.add(v)
    assert m.value == 4.0
    assert [retry_delay(a, 0.5, 3.0) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Scheduler(global_rate=0)
    with pytest.raises(ValueError):
        Scheduler(one_way_share=0.6)


# --- the async side, on both backends, with a manual clock ---------------------------------


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_wait_event_honours_deadline_and_event() -> None:
    clock = ManualClock()
    event = anyio.Event()
    woke: list[float] = []

    async def waiter(deadline: float | None) -> None:
        await wait_event(event, clock, deadline)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, clock.monotonic() + 2.0)
        await clock.advance(1.0)
        assert woke == []
        await clock.advance(1.0)
        assert woke == [clock.monotonic()]
        tg.start_soon(waiter, None)
        tg.start_soon(waiter, clock.monotonic() + 100)
        await clock.advance(0.5)
        assert len(woke) == 1
        event.set()
    assert len(woke) == 3


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_dispatch_loop_paces_chats_on_a_manual_clock() -> None:
    """The actor's loop shape: next() / wait_event, with requests answered after 50 ms."""
    clock = ManualClock(start=0.0)
    s = Scheduler(global_rate=30, private_interval=1.0, private_margin=0.05, in_flight=4)
    sent: list[tuple[float, int]] = []
    wake = anyio.Event()

    def poke() -> None:
        nonlocal wake
        wake.set()

    async def request(d: Dispatch) -> None:
        sent.append((clock.monotonic(), d.chat_id))
        await clock.sleep(0.05)
        s.complete(d, clock.monotonic(), 0.05)
        poke()

    async def loop(tg: anyio.abc.TaskGroup) -> None:
        nonlocal wake
        while True:
            wake = anyio.Event()
            step = s.next(clock.monotonic())
            while isinstance(step, Dispatch):
                tg.start_soon(request, step)
                step = s.next(clock.monotonic())
            await wait_event(wake, clock, step)

    for chat in (1, 2, 3):
        for _ in range(3):
            s.add(msg(chat), 0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop, tg)
        for _ in range(400):
            await clock.advance(0.01)
        tg.cancel_scope.cancel()
    assert len(sent) == 9
    for chat in (1, 2, 3):
        times = [t for t, c in sent if c == chat]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 1.1 - 1e-9  # answer after 50 ms, then one interval and the margin
    assert sent[0][0] == 0.0
