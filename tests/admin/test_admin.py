"""The admin actor end to end: through Telegram (the emulator) and through HTTP / the CLI.

A non-admin is refused (and logged) on every path; each command works from an admin chat
and from ``POST /admin``; every admin action lands in ``activity_log``; a lock stops a
user's alerts and tells them so.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from click.testing import CliRunner
from structlog.testing import capture_logs

from actors.admin import LOCKED_TEXT, UNLOCKED_TEXT
from actors.bot_texts import ADMIN_ONLY, LOCKED
from callwatch.admin_cli import admin_command
from messages.admin import AdminRequest, NoArgs
from tests.bot.support import (
    ADMIN,
    CONTROL_TOKEN,
    GOOD_CHANNEL,
    World,
    token_event,
    until,
    world,
)

pytestmark = pytest.mark.anyio

USER = 424_242
STRANGER = 555_555


async def activity(w: World, action: str) -> list[Any]:
    return await w.sql("SELECT * FROM activity_log WHERE action = $1", action)


async def logged(w: World, action: str, count: int = 1) -> None:
    async def there() -> bool:
        return len(await activity(w, action)) >= count

    await until(there, 10)


async def admin_says(w: World, text: str) -> str:
    reply = await w.say(ADMIN, f"/admin {text}", timeout=20)
    return str(reply.text)


async def cli(w: World, command: str, **args: Any) -> dict[str, Any]:
    return await w.admin(command, **args)


async def test_non_admins_are_refused_on_every_path(redis_url: str, database_url: str) -> None:
    async with world(redis_url, database_url) as w:
        await w.say(STRANGER, "/start")
        with capture_logs() as logs:
            refused = await w.say(STRANGER, "/admin stats")
            also = await w.say(STRANGER, "/a lock 1")
        assert refused.text == ADMIN_ONLY and also.text == ADMIN_ONLY
        events = [e for e in logs if e["event"] == "admin.refused"]
        assert len(events) == 2 and all(e["chat_id"] == STRANGER for e in events)

        # the actor checks too, whoever hands it a Telegram request
        forged = AdminRequest(command="stats", args=NoArgs(), origin="telegram", by=STRANGER)
        result = await w.lookup("admin").ask(forged)
        assert not result.ok and result.status == 403
        await logged(w, "admin.refused")
        row = (await activity(w, "admin.refused"))[0]
        assert row["actor_id"] == STRANGER and row["actor_kind"] == "user"

        # HTTP: the control token is the gate; bad bodies are 4xx
        async with httpx.AsyncClient(base_url=w.control_url) as http:
            body = {"command": "stats"}
            assert (await http.post("/admin", json=body)).status_code == 401
            wrong = {"Authorization": "Bearer nope"}
            assert (await http.post("/admin", json=body, headers=wrong)).status_code == 401
            good = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
            for bad in (
                {"command": "rm -rf"},
                {"command": "lock"},
                {"command": "stats", "args": []},
                {"command": "stats", "extra": 1},
                {"command": "extend", "args": {"user": 1, "days": "many"}},
            ):
                answer = await http.post("/admin", json=bad, headers=good)
                assert answer.status_code == 400, bad
                assert answer.json()["ok"] is False
            ok = await http.post("/admin", json=body, headers=good)
            assert ok.status_code == 200 and ok.json()["ok"] is True


async def test_admin_commands_through_telegram(redis_url: str, database_url: str) -> None:
    async with world(redis_url, database_url, bot_options={"rate_burst": 100}) as w:
        emu = w.emu
        await w.say(USER, "/start", username="alice")

        assert "preset_create" in await admin_says(w, "help")
        found = await admin_says(w, "lookup @alice")
        assert f"User {USER} @alice" in found and "Subscription: none" in found

        granted = await admin_says(w, "grant @alice monthly")
        assert f"User {USER} is subscribed (monthly)" in granted
        await emu.wait_until(lambda: any("An admin gave you" in m.text for m in w.sent(USER)))
        assert "is subscribed" in await admin_says(w, f"extend {USER} 7")
        assert "no running subscription" in await admin_says(w, f"revoke {USER} testing")
        assert "is subscribed" in await admin_says(w, f"grant {USER} 30")

        # a locked user gets nothing and is told so
        assert "is now locked" in await admin_says(w, f"lock {USER} spam")
        await emu.wait_until(lambda: any(m.text == LOCKED_TEXT for m in w.sent(USER)))
        assert (await w.say(USER, "/settings")).text == LOCKED
        count = len(w.sent(USER))
        await w.lookup("filters").tell(token_event("Lock1111", [GOOD_CHANNEL], symbol="LOCKD"))
        await w.settle([USER])
        assert len(w.sent(USER)) == count
        assert "is now unlocked" in await admin_says(w, f"unlock {USER}")
        await emu.wait_until(lambda: any(m.text == UNLOCKED_TEXT for m in w.sent(USER)))
        count = len(w.sent(USER))
        await w.lookup("filters").tell(token_event("Free2222", [GOOD_CHANNEL], symbol="FREE"))
        await emu.wait_sent(USER, count + 1)
        assert "FREE" in w.sent(USER)[count].text

        stats = await admin_says(w, "stats")
        assert "Users: 1 (1 reachable" in stats and "Active subscriptions: 1" in stats
        status = await admin_says(w, "status")
        assert "root: running" in status and "sender [worker] running" in status

        made = await admin_says(w, 'preset_create whales description="Big caps" fdv_min=10m')
        assert "Preset whales created" in made
        presets = await w.say(USER, "/presets")
        assert "whales" in presets.text and "Big caps" in presets.text
        assert "Preset whales saved" in await admin_says(w, "preset_edit whales min_win_rate=65")
        assert "whales (admin)" in await admin_says(w, "presets")
        assert "deleted" in await admin_says(w, "preset_delete whales")
        assert "cannot be deleted" in await admin_says(w, "preset_delete degen")
        assert "whales" not in (await w.say(USER, "/presets")).text
        assert "Unknown filter" in await admin_says(w, "preset_create x colour=red")

        assert "Coupon created: SPRING20" in await admin_says(
            w, "coupon_create SPRING20 percent 20 max_uses=10"
        )
        assert "SPRING20: 20.00% off" in await admin_says(w, "coupons")

        # a broadcast: the user gets it, the admin's progress message ends "done"
        before = len(w.sent(ADMIN))
        emu.push_message(ADMIN, "/admin broadcast all Hello <everyone> & welcome")
        both = (await emu.wait_sent(ADMIN, before + 2))[before:]
        assert any("started to 1 users" in m.text for m in both)
        progress = next(m for m in both if m.text.startswith("Broadcast b"))
        await emu.wait_until(
            lambda: any(m.text == "Hello &lt;everyone&gt; &amp; welcome" for m in w.sent(USER))
        )
        await w.wait_text(ADMIN, progress.message_id, "done")
        assert "sent 1" in (emu.message(ADMIN, progress.message_id) or {})["text"]
        assert "done" in await admin_says(w, "broadcast_status")

        assert "Unknown command" in await admin_says(w, "frobnicate")
        assert "missing days" in await admin_says(w, f"extend {USER}")

        for action in ("lookup", "grant", "extend", "revoke", "lock", "unlock", "stats"):
            await logged(w, f"admin.{action}")
        row = (await activity(w, "admin.lock"))[0]
        assert row["actor_id"] == ADMIN and row["subject_id"] == USER
        assert emu.violations == {"global": 0, "private": 0, "group": 0}


async def test_admin_commands_through_http_and_the_cli(redis_url: str, database_url: str) -> None:
    async with world(redis_url, database_url) as w:
        await w.say(USER, "/start", username="bob")
        steps: list[tuple[str, dict[str, Any], str]] = [
            ("help", {}, "broadcast_status"),
            ("lookup", {"user": "@bob"}, "@bob"),
            ("grant", {"user": USER, "plan": "weekly"}, "subscribed (weekly)"),
            ("extend", {"user": str(USER), "days": 3}, "subscribed"),
            ("revoke", {"user": USER}, "no running subscription"),
            ("lock", {"user": USER}, "now locked"),
            ("unlock", {"user": USER}, "now unlocked"),
            ("stats", {}, "Users: 1"),
            ("status", {}, "root: running"),
            ("preset_create", {"name": "night", "filters": {"lookback": "8h"}}, "created"),
            ("preset_edit", {"name": "night", "description": "Owls"}, "saved"),
            ("presets", {}, "night (admin): Owls"),
            ("preset_delete", {"name": "night"}, "deleted"),
            ("coupon_create", {"code": "FREE3", "kind": "free_days", "value": 3}, "FREE3"),
            ("coupons", {}, "FREE3: 3 free days"),
            ("reconcile", {"days": 2}, "0 mismatches"),
            ("broadcast", {"text": "Maintenance at 10", "audience": "all"}, "started to 1"),
        ]
        for command, args, expected in steps:
            reply = await cli(w, command, **args)
            assert reply["ok"] is True, (command, reply)
            assert reply["http_status"] == 200
            assert expected in reply["text"], (command, reply["text"])
        broadcast = reply["data"]["id"]

        async def done() -> bool:
            status = await cli(w, "broadcast_status", id=broadcast)
            return bool(status["data"]["state"] == "done")

        await until(done, 20, every=0.2)
        assert any(m.text == "Maintenance at 10" for m in w.sent(USER))
        missing = await cli(w, "lookup", user="@nobody")
        assert missing["ok"] is False and missing["http_status"] == 404
        for command in ("lookup", "grant", "lock", "preset_create", "broadcast", "coupon_create"):
            await logged(w, f"admin.{command}")
        row = (await activity(w, "admin.grant"))[0]
        assert row["actor_id"] == 0 and '"cli"' in row["detail"]

        # the click command, as `callwatch admin ...` runs it
        runner = CliRunner()
        env = {"CALLWATCH_CONTROL_TOKEN": CONTROL_TOKEN}

        def run(*argv: str) -> Any:
            return runner.invoke(admin_command, [*argv, "--url", w.control_url], env=env)

        result = await anyio.to_thread.run_sync(run, "lookup", "@bob")
        assert result.exit_code == 0 and f"User {USER} @bob" in result.output
        result = await anyio.to_thread.run_sync(run, "extend", str(USER), "--arg", "days=2")
        assert result.exit_code == 0 and "is subscribed" in result.output
        result = await anyio.to_thread.run_sync(
            run, "broadcast", "subscribers", "Only", "for", "subscribers", "--wait"
        )
        assert result.exit_code == 0 and "done" in result.output
        result = await anyio.to_thread.run_sync(run, "nonsense")
        assert result.exit_code == 2
        nothing = await anyio.to_thread.run_sync(
            lambda: runner.invoke(admin_command, ["stats", "--url", "http://127.0.0.1:9"], env=env)
        )
        assert nothing.exit_code == 1 and "no callwatch instance" in nothing.output
