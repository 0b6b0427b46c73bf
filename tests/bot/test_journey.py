"""End to end: a user's life with the bot, through python-telegram-bot and the emulator,
with token events and prices coming from the sandbox feed through the ingest actor.

/start, a coupon, filters through the inline keyboard (with a refused value), a matching
token notified and a non-matching one not, a multiplier alert, the read-only commands, a
block (marked inactive, nothing more sent) and the return (/start reactivates).
"""

from __future__ import annotations

import pytest

from actors.bot_texts import COMMANDS
from messages.tracking import TrackedBy
from messages.users import GetStatus
from tests.bot.support import (
    ADMIN,
    GOOD_CHANNEL,
    POOR_CHANNEL,
    until,
    world,
)

pytestmark = pytest.mark.anyio

USER = 424_242


def buttons(message: object) -> list[str]:
    markup = getattr(message, "reply_markup", None) or {}
    return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


async def test_user_journey(redis_url: str, database_url: str) -> None:
    async with world(redis_url, database_url, bot_options={"rate_burst": 100}, feed=True) as w:
        emu = w.emu

        # /start registers and explains; the command menu was set
        reply = await w.say(USER, "/start", username="alice", first_name="Alice")
        assert "Welcome" in reply.text and "/settings" in reply.text and "/subscribe" in reply.text
        assert (await w.sql("SELECT active FROM users WHERE chat_id = $1", USER))[0]["active"]
        assert any(
            {c["command"] for c in cmds} >= {name for name, _ in COMMANDS}
            for cmds in emu.commands.values()
        )
        help_reply = await w.say(USER, "/help")
        assert all(f"/{name}" in help_reply.text for name, _ in COMMANDS)

        # an admin makes a coupon in Telegram; the user redeems it and is subscribed
        made = await w.say(ADMIN, "/admin coupon_create WELCOME7 free_days 7")
        assert "Coupon created" in made.text
        redeemed = await w.say(USER, "/redeem WELCOME7")
        assert "applied" in redeemed.text
        user_ref = w.lookup(f"user:{USER}")

        async def subscribed() -> bool:
            return bool((await user_ref.ask(GetStatus(USER))).subscribed)

        await until(subscribed)

        # filters through the inline keyboard: press, refused value, accepted value
        settings = await w.say(USER, "/settings")
        assert "set:min_win_rate" in buttons(settings)
        await w.press(USER, settings.message_id, "set:min_win_rate")
        prompt = await w.wait_text(USER, settings.message_id, "Send the new value")
        assert prompt["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "cancel"
        refused = await w.say(USER, "lots")
        assert "Win rate must be a number" in refused.text and "cancel" in buttons(refused)
        emu.push_message(USER, "55%")
        edited = await w.wait_text(USER, settings.message_id, "Minimum win rate is now")
        assert "Minimum win rate: 55 %" in edited["text"]
        assert "set:fdv_min" in [
            b["callback_data"] for row in edited["reply_markup"]["inline_keyboard"] for b in row
        ]
        assert (await user_ref.ask(GetStatus(USER))).settings.min_win_rate == 55.0

        # a token called by a 70 % channel is notified; one by a 30 % channel is not
        before = len(w.sent(USER))
        await w.publish("Good1111", [GOOD_CHANNEL], "GOOD")
        await emu.wait_sent(USER, before + 1)
        alert = w.sent(USER)[before]
        assert "GOOD" in alert.text and "chan11" in alert.text
        await w.publish("Poor2222", [POOR_CHANNEL], "POOR")
        await w.settle([USER])
        assert len(w.sent(USER)) == before + 1

        # the notified token reaches 2x: a multiplier alert
        multipliers = w.lookup("multipliers")

        async def tracked_by_user() -> bool:
            return bool(await multipliers.ask(TrackedBy(USER)))

        await until(tracked_by_user)
        await w.price("Good1111", 1_300_000.0)
        await emu.wait_sent(USER, before + 2)
        assert "hit <b>2x</b>" in w.sent(USER)[before + 1].text

        # read-only commands
        tracked = await w.say(USER, "/tracked")
        assert "GOOD" in tracked.text
        status_reply = await w.say(USER, "/status")
        assert "Subscription: active" in status_reply.text
        assert "Tracked tokens: 1" in status_reply.text
        assert "Minimum win rate: 55 %" in status_reply.text
        board = await w.say(USER, "/leaderboard")
        assert board.text.index("chan11") < board.text.index("chan12")
        unknown = await w.say(USER, "/frobnicate")
        assert "/frobnicate" in unknown.text and "/help" in unknown.text

        # presets: apply one with a button
        presets = await w.say(USER, "/presets")
        assert "preset:degen" in buttons(presets)
        count = len(w.sent(USER))
        await w.press(USER, presets.message_id, "preset:degen")
        applied = (await emu.wait_sent(USER, count + 1))[count]
        assert "Preset degen applied" in applied.text
        paused = await w.say(USER, "/pause")
        assert "paused" in paused.text.lower()
        resumed = await w.say(USER, "/resume")
        assert "resumed" in resumed.text.lower()
        reset = await w.say(USER, "/settings")
        await w.press(USER, reset.message_id, "set:paused")
        await w.wait_text(USER, reset.message_id, "Alerts paused")
        await w.press(USER, reset.message_id, "set:paused")
        await w.wait_text(USER, reset.message_id, "Alerts resumed")
        await w.press(USER, reset.message_id, "set:lookback")
        await w.wait_text(USER, reset.message_id, "Send the new value for Lookback")
        await w.press(USER, reset.message_id, "cancel")
        await w.wait_text(USER, reset.message_id, "Press a button to change a filter")
        assert any(n["text"] == "Cancelled." for n in emu.notices(USER))
        await w.press(USER, reset.message_id, "set:min_win_rate")
        emu.push_message(USER, "50")
        await w.wait_text(USER, reset.message_id, "is now")

        # the settings screen's Presets button opens the presets
        count = len(w.sent(USER))
        await w.press(USER, reset.message_id, "menu:presets")
        assert "preset:degen" in buttons((await emu.wait_sent(USER, count + 1))[count])

        # /subscribe: plans, a SOL order with its Solana Pay link
        plans = await w.say(USER, "/subscribe")
        assert "plan:monthly:sol" in buttons(plans)
        count = len(w.sent(USER))
        await w.press(USER, plans.message_id, "plan:monthly:sol")
        order = (await emu.wait_sent(USER, count + 1))[count]
        assert "solana:" in order.text and "SOL" in order.text

        # forged presses (unknown data, or valid data that is not a button of that
        # message) are refused politely and nothing else happens
        count = len(w.sent(USER))
        await w.press(USER, plans.message_id, "plan:monthly:paypal")
        await w.press(USER, plans.message_id, "preset:degen")
        assert sum("no longer valid" in n["text"] for n in emu.notices(USER)) == 2
        assert len(w.sent(USER)) == count

        # the user blocks the bot: marked inactive, nothing more is sent
        emu.block(USER)

        async def inactive() -> bool:
            rows = await w.sql("SELECT active FROM users WHERE chat_id = $1", USER)
            return not rows[0]["active"]

        await until(inactive)
        assert not (await user_ref.ask(GetStatus(USER))).reachable
        count = len(w.sent(USER))
        await w.publish("Good3333", [GOOD_CHANNEL], "THIRD")
        await w.settle([USER])
        assert len(w.sent(USER)) == count

        # ... and comes back: /start reactivates
        back = await w.say(USER, "/start")
        assert "Welcome back" in back.text
        assert (await w.sql("SELECT active FROM users WHERE chat_id = $1", USER))[0]["active"]
        count = len(w.sent(USER))
        await w.publish("Good4444", [GOOD_CHANNEL], "FOURTH")
        await emu.wait_sent(USER, count + 1)
        assert "FOURTH" in w.sent(USER)[count].text
        assert emu.violations == {"global": 0, "private": 0, "group": 0}
        assert (await w.bot_stats()).get("handler_errors", 0) == 0
