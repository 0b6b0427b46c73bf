"""The sender actor against the real Bot API emulator (enforcing Telegram's limits) and Redis."""

from __future__ import annotations

import struct
import zlib
from collections import Counter

import anyio
import pytest
import structlog
from prometheus_client import REGISTRY

from messages.delivery import (
    ChatBlocked,
    Delivered,
    DeliveryFailed,
    Lane,
    Outbound,
    Outbounds,
)
from runtime import ActorSystem
from sandbox.telegram import TelegramEmulator
from supervisors import Restart, worker
from tests.helpers import eventually
from tests.sender.support import (
    Recorder,
    emulator,
    max_in_window,
    min_gap_per_chat,
    sender_tree,
    stats,
    stats_when,
    store,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning"),
]

SEND_METHODS = {"sendMessage", "sendPhoto", "editMessageText"}


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """Production's loop (uvloop): python-telegram-bot exists only on asyncio."""
    return ("asyncio", {"use_uvloop": True})


def alert(chat_id: int, text: str, **fields: object) -> Outbound:
    return Outbound(chat_id=chat_id, text=text, lane=Lane.ALERT, kind="notification", **fields)  # type: ignore[arg-type]


def reply(chat_id: int, text: str, **fields: object) -> Outbound:
    return Outbound(chat_id=chat_id, text=text, lane=Lane.INTERACTIVE, **fields)  # type: ignore[arg-type]


def sends(emu: TelegramEmulator) -> list[object]:
    return [c for c in emu.calls if c.method in SEND_METHODS]


def rate_limited(emu: TelegramEmulator) -> list[object]:
    return [c for c in emu.calls if c.status == 429]


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\xff\x00\x00" * 2)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


# --- limits ------------------------------------------------------------------------------


async def test_real_limits_reached_and_never_broken(redis_url: str) -> None:
    """Telegram's own numbers: 30 messages/s overall, 1/s per private chat, 20/min per group."""
    async with emulator(latency=0.01) as emu, store(redis_url) as handle:
        async with sender_tree(handle, emu) as (_, sender):
            for i in range(90):
                sender.tell_nowait(alert(1_000 + i % 30, f"alert <b>{i}</b>"))
            for i in range(25):
                sender.tell_nowait(alert(-4242, f"group alert {i}"))
            await anyio.sleep(1.0)
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(sender.ask, reply(50 + i, f"reply {i}"), 10)
            await emu.wait_sent(None, 115, timeout=20)
            status = await stats_when(sender, lambda s: s.in_flight == 0)
        sent = emu.sent()
    assert emu.violations == {"global": 0, "private": 0, "group": 0}
    assert not rate_limited(emu)
    assert min_gap_per_chat(s for s in sent if s.chat_id > 0) >= 1.0
    assert max_in_window([s.t for s in sent]) <= 30
    group = [s.t for s in sent if s.chat_id == -4242]
    assert len(group) == 20 and max_in_window(group, 60.0) == 20  # the 21st waits a minute
    busy = sorted(s.t for s in sent if s.chat_id != -4242)[:-1]
    assert (len(busy) - 1) / (busy[-1] - busy[0]) >= 0.8 * 30  # 0.95+ in bench/sender.py
    assert status.sent["interactive"] == 5


@pytest.mark.slow
async def test_2000_alerts_to_500_users_with_replies(redis_url: str) -> None:
    """Volume: zero 429s and no chat gets two messages within a second (limit raised to 300/s
    so the test stays short; the 30/s run is the test above and the benchmark)."""
    async with (
        emulator(global_rate=300, private_interval=1.0) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu, global_rate=300, in_flight=8) as (_, sender),
    ):
        for i in range(2_000):
            sender.tell_nowait(alert(10_000 + i % 500, f"token <code>{i}</code> passed"))
        answers: list[object] = []

        async def ask(i: int) -> None:
            answers.append(await sender.ask(reply(10_000 + i * 7, f"/status {i}"), timeout=30))

        async with anyio.create_task_group() as tg:
            for i in range(40):
                tg.start_soon(ask, i)
                await anyio.sleep(0.05)
        await emu.wait_sent(None, 2_040, timeout=90)
        status = await stats_when(sender, lambda s: s.in_flight == 0)
    assert all(isinstance(a, Delivered) for a in answers)
    assert not rate_limited(emu)
    assert emu.violations == {"global": 0, "private": 0, "group": 0}
    assert min_gap_per_chat(emu.sent()) >= 1.0
    assert status.delivered == 2_040 and status.failed == 0


async def test_injected_429_pauses_every_lane_and_retries_that_message_first(
    redis_url: str,
) -> None:
    before = metric("callwatch_sender_rate_limited_total")
    async with (
        emulator(global_rate=200, private_interval=0.2) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu, global_rate=200, private_interval=0.2, in_flight=1) as (
            _,
            sender,
        ),
    ):
        for i in range(5):
            await sender.ask(alert(1 + i, f"warm-up {i}"), timeout=5)
        emu.inject_error("sendMessage", 429, retry_after=2)
        sender.tell_nowait(alert(77, "refused once"))
        status = await stats_when(sender, lambda s: s.rate_limited == 1)
        for i in range(5):
            sender.tell_nowait(Outbound(chat_id=100 + i, text=f"bulk {i}", lane=Lane.BULK))
        answer = await sender.ask(reply(200, "an interactive reply waits too"), timeout=10)
        await emu.wait_sent(None, 12, timeout=10)
    assert isinstance(answer, Delivered)
    (refused,) = rate_limited(emu)
    after = [c for c in emu.calls if c.t > refused.t]
    assert after and all(c.t >= refused.t + 2.0 for c in after)
    assert after[0].chat_id == 77 and after[0].params["text"] == "refused once"
    assert status.paused_until is not None and status.rate_limited == 1
    assert metric("callwatch_sender_rate_limited_total") == before + 1


async def test_interactive_replies_overtake_a_bulk_backlog(redis_url: str) -> None:
    async with (
        emulator(latency=0.01) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu) as (_, sender),
    ):
        for i in range(300):
            sender.tell_nowait(Outbound(chat_id=5_000 + i, text=f"news {i}", lane=Lane.BULK))
        await emu.wait_sent(None, 20, timeout=10)
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(sender.ask, reply(9_000 + i, f"reply {i}"), 10)
        took = anyio.current_time() - start
        status = await stats(sender)
    order = [s.chat_id for s in emu.sent()]
    replies = [order.index(9_000 + i) for i in range(5)]
    assert took < 1.0
    assert max(replies) < 60  # 240+ bulk messages queued ahead of them are still waiting
    assert status.queued["bulk"] > 150


# --- Telegram's refusals -----------------------------------------------------------------


async def test_403_tells_the_user_actor_and_drops_the_chat(redis_url: str) -> None:
    told: list[object] = []
    directory: list[object] = []
    user = worker("user:77", Recorder, box=told)
    fallback = worker("user-directory", Recorder, box=directory)
    async with (
        emulator(global_rate=200, private_interval=0.3) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu, extra=[user, fallback], global_rate=200, private_interval=0.3) as (
            _,
            sender,
        ),
    ):
        emu.block(77)
        emu.block(79)  # no user actor: the directory hears of it
        sender.tell_nowait(alert(79, "to nobody"))
        for i in range(5):
            sender.tell_nowait(alert(77, f"alert {i}"))
            sender.tell_nowait(alert(78, f"alert {i}"))
        await eventually(lambda: told == [ChatBlocked(77)], timeout=5)
        await eventually(lambda: directory == [ChatBlocked(79)], timeout=5)
        await emu.wait_sent(78, 5, timeout=10)
        sender.tell_nowait(alert(77, "later"))
        status = await stats_when(sender, lambda s: s.dropped == 5)
        assert await sender.ask(reply(77, "still blocked?"), timeout=5) == ChatBlocked(77)
        emu.unblock(77)
        assert isinstance(await sender.ask(reply(77, "welcome back"), timeout=5), Delivered)
        assert isinstance(await sender.ask(alert(77, "alerts again"), timeout=5), Delivered)
        final = await stats(sender)
    to_77 = [c for c in sends(emu) if c.chat_id == 77]
    assert [c.status for c in to_77] == [403, 403, 200, 200]
    assert status.blocked == 2 and status.dropped == 5  # 4 queued + 1 told after the 403
    assert final.blocked == 3 and len(told) == 2
    assert directory == [ChatBlocked(79)]


async def test_bad_request_is_not_retried_and_edits_and_photos_work(redis_url: str) -> None:
    async with (
        emulator(global_rate=200, private_interval=0.0) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu, global_rate=200, private_interval=0.0) as (_, sender),
    ):
        emu.inject_error("sendMessage", 400, description="Bad Request: MESSAGE IS TOO LONG")
        failed = await sender.ask(reply(1, "x"), timeout=5)
        broken = await sender.ask(reply(2, "<b>unclosed"), timeout=5)
        first = await sender.ask(reply(3, "<i>v1</i>"), timeout=5)
        assert isinstance(first, Delivered)
        same = await sender.ask(reply(3, "<i>v1</i>", edit_message_id=first.message_id), 5)
        edited = await sender.ask(reply(3, "<i>v2</i>", edit_message_id=first.message_id), 5)
        photo = await sender.ask(reply(4, "<b>chart</b>", photo=tiny_png()), timeout=5)
        too_long = await sender.ask(reply(5, "y" * 4_097), timeout=5)
        nonsense = [
            await sender.ask(Outbound(chat_id="6", text="x"), timeout=5),  # type: ignore[arg-type]
            await sender.ask(Outbound(chat_id=6, text="x", lane=7), timeout=5),  # type: ignore[arg-type]
            await sender.ask(Outbound(chat_id=6, text=None), timeout=5),  # type: ignore[arg-type]
            await sender.ask(reply(6, "   "), timeout=5),
        ]
        plain_int_lane = await sender.ask(Outbound(chat_id=6, text="ok", lane=0), timeout=5)  # type: ignore[arg-type]
        status = await stats(sender)
    assert isinstance(failed, DeliveryFailed) and "too long" in failed.reason.lower()
    assert isinstance(broken, DeliveryFailed) and "parse entities" in broken.reason
    assert [c.chat_id for c in emu.calls if c.status == 400 and c.method == "sendMessage"] == [
        1,
        2,
    ]
    assert same == edited == Delivered(3, first.message_id)
    message = emu.message(3, first.message_id)
    assert message is not None and message["text"] == "v2"
    assert isinstance(photo, Delivered) and emu.sent(4)[0].method == "sendPhoto"
    assert isinstance(too_long, DeliveryFailed) and "too long" in too_long.reason
    assert not [c for c in emu.calls if c.chat_id == 5]  # refused before it reached Telegram
    assert all(isinstance(n, DeliveryFailed) for n in nonsense)
    assert isinstance(plain_int_lane, Delivered)
    assert status.failed == 2 and status.dropped == 5


async def test_network_errors_retry_with_backoff_then_fail(redis_url: str) -> None:
    async with (
        emulator(global_rate=200, private_interval=0.0) as emu,
        store(redis_url) as handle,
        sender_tree(
            handle, emu, global_rate=200, private_interval=0.0, max_attempts=3, retry_initial_s=0.05
        ) as (_, sender),
    ):
        emu.inject_disconnect("sendMessage", count=2)
        recovered = await sender.ask(reply(1, "third time lucky"), timeout=10)
        emu.inject_disconnect("sendMessage", count=3)
        lost = await sender.ask(reply(2, "never"), timeout=10)
        status = await stats(sender)
    assert isinstance(recovered, Delivered)
    assert isinstance(lost, DeliveryFailed) and "after 3 tries" in lost.reason
    assert len([c for c in emu.calls if c.chat_id == 2]) == 3
    assert status.retried == 4 and status.failed == 1
    assert status.recent_failures == (lost,)


# --- digests, dedup and durability ---------------------------------------------------------


async def test_backed_up_alerts_coalesce_into_a_digest(redis_url: str) -> None:
    async with (
        emulator(global_rate=200) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu, global_rate=200) as (_, sender),
    ):
        await sender.ask(alert(5, "first", digest_key="calls"), timeout=5)
        batch = [alert(5, f"<b>token {i}</b>", digest_key="calls") for i in range(6)]
        sender.tell_nowait(Outbounds(tuple(batch)))  # as the notify gate sends them
        sender.tell_nowait(alert(5, "x" * 4_050, digest_key="calls"))
        await emu.wait_sent(5, 3, timeout=10)
        status = await stats_when(sender, lambda s: s.in_flight == 0)
    texts = [s.text for s in emu.sent(5)]
    assert texts[1] == "\n\n".join(f"<b>token {i}</b>" for i in range(6))
    assert texts[2] == "x" * 4_050  # would not fit: sent on its own
    assert status.coalesced == 5 and status.delivered == 8


async def test_dedup_key_is_sent_once_even_across_restarts(redis_url: str) -> None:
    async with emulator(global_rate=200) as emu, store(redis_url) as handle:
        async with sender_tree(handle, emu, global_rate=200) as (_, sender):
            first = await sender.ask(alert(9, "token X at 2x", dedup_key="mult:9:X:2"), 5)
            again = await sender.ask(alert(9, "token X at 2x", dedup_key="mult:9:X:2"), 5)
        async with sender_tree(handle, emu, global_rate=200) as (_, sender):
            later = await sender.ask(alert(9, "token X at 2x", dedup_key="mult:9:X:2"), 5)
            status = await stats(sender)
    assert isinstance(first, Delivered)
    assert again == later == DeliveryFailed(9, "notification", "duplicate")
    assert len(emu.sent(9)) == 1 and status.duplicates == 1


async def test_process_kill_mid_burst_sends_every_pending_message_once(redis_url: str) -> None:
    total = 150
    texts = [f"burst {i}" for i in range(total)]
    async with (
        emulator(global_rate=60, private_interval=1.0, latency=0.1) as emu,
        store(redis_url) as handle,
    ):
        async with sender_tree(
            handle, emu, restart=Restart.TEMPORARY, global_rate=60, in_flight=8, start_quiet_s=None
        ) as (_, sender):
            for i, text in enumerate(texts):
                sender.tell_nowait(alert(20_000 + i, text))
            await stats_when(sender, lambda s: s.accepted == total)
            await emu.wait_sent(None, 30, timeout=10)
            actor = sender._cell.actor
            assert actor is not None
            await eventually(lambda: actor.scheduler.in_flight >= 2, timeout=5)
            sender._cell.kill()  # as abrupt as it gets in-process: requests cut mid-flight
            await eventually(lambda: not sender.alive, timeout=5)
        await anyio.sleep(0.3)  # requests cut mid-flight may still land (latency is 0.1 s)
        first_life = len(emu.sent())
        with structlog.testing.capture_logs() as logs:
            async with sender_tree(
                handle, emu, system=ActorSystem(), global_rate=60, start_quiet_s=None
            ) as (
                _,
                sender,
            ):
                await emu.wait_until(lambda: {s.text for s in emu.sent()} >= set(texts), timeout=20)
                status = await stats_when(sender, lambda s: s.in_flight == 0)
    counts = Counter(s.text for s in emu.sent())
    duplicates = sum(n - 1 for n in counts.values())
    assert set(counts) == set(texts)
    # In flight at the kill (8 at most), plus any answered but not yet deleted from the outbox.
    assert 1 <= status.unknown_fate <= 16
    assert duplicates <= status.unknown_fate
    assert status.delivered == total - first_life + duplicates
    reported = next(e for e in logs if e["event"] == "sender.unknown_fate")
    assert reported["count"] == status.unknown_fate
    assert not rate_limited(emu)  # the new sender waited out the old one's pacing


async def test_sender_restart_reloads_the_outbox(redis_url: str) -> None:
    wanted = {f"again {i}" for i in range(60)}
    async with (
        emulator(global_rate=200, private_interval=1.0, latency=0.02) as emu,
        store(redis_url) as handle,
        sender_tree(handle, emu, global_rate=200, in_flight=4, start_quiet_s=None) as (
            tree,
            sender,
        ),
    ):
        for i in range(60):
            sender.tell_nowait(alert(30_000 + i % 30, f"again {i}"))
        await stats_when(sender, lambda s: s.accepted == 60)
        await emu.wait_sent(None, 10, timeout=10)
        sender._cell.kill()
        await eventually(lambda: sender._cell.incarnation == 2 and sender.state == "running")
        await emu.wait_until(lambda: {s.text for s in emu.sent()} >= wanted, 20)
        status = await stats_when(sender, lambda s: s.in_flight == 0)
        assert tree.status().children[0].restarts_total == 1
    assert status.unknown_fate <= 8  # in flight (4 at most) or answered but not yet deleted
    assert len(emu.sent()) <= 60 + status.unknown_fate
    assert not rate_limited(emu)
    assert min_gap_per_chat(emu.sent()) >= 1.0


async def test_graceful_stop_keeps_the_queue_and_leaves_no_unknown_fate(redis_url: str) -> None:
    texts = [f"queued {i}" for i in range(60)]
    async with emulator(global_rate=60, latency=0.02) as emu, store(redis_url) as handle:
        async with sender_tree(handle, emu, global_rate=60) as (_, sender):
            for i, text in enumerate(texts):
                sender.tell_nowait(alert(40_000 + i, text))
            await emu.wait_sent(None, 10, timeout=10)
        stopped_with = len(emu.sent())
        assert stopped_with < len(texts)
        async with sender_tree(handle, emu, global_rate=60, start_quiet_s=None) as (_, sender):
            await emu.wait_sent(None, len(texts), timeout=10)
            status = await stats_when(sender, lambda s: s.in_flight == 0)
    assert Counter(s.text for s in emu.sent()) == Counter(texts)
    assert status.unknown_fate == 0 and status.delivered == len(texts) - stopped_with
