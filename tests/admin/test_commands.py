"""Admin command parsing (Telegram text, HTTP bodies, CLI words) and the tree summary."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.admin import summarize_tree
from callwatch.admin_cli import args_from_words
from messages.admin import (
    ADMIN_COMMANDS,
    AdminInputError,
    AdminRequest,
    BroadcastArgs,
    CouponCreateArgs,
    GrantArgs,
    LockArgs,
    PresetArgs,
    build_request,
    decode_admin_body,
    parse_admin_text,
)
from messages.status import ActorStatus


def telegram(text: str) -> AdminRequest:
    return build_request(*parse_admin_text(text), origin="telegram", by=1, reply_chat=1)


def test_telegram_text_in_all_its_shapes() -> None:
    assert telegram("grant @bob monthly").args == GrantArgs(user="@bob", plan="monthly")
    assert telegram("grant 42 30").args == GrantArgs(user=42, days=30)
    assert telegram("GRANT 42 days=30").args == GrantArgs(user=42, days=30)
    assert telegram("lock 42 spamming, don't ask").args == LockArgs(
        user=42, reason="spamming, don't ask"
    )
    assert telegram("broadcast subscribers It's <b>live</b>").args == BroadcastArgs(
        text="It's <b>live</b>", audience="subscribers"
    )
    assert telegram("broadcast Hello").args == BroadcastArgs(text="Hello")
    preset = telegram('preset-create Whales description="Big ones" fdv_min=10m').args
    assert preset == PresetArgs(name="Whales", description="Big ones", filters={"fdv_min": "10m"})
    coupon = telegram("coupon_create SPRING percent 20 max_uses=5").args
    assert coupon == CouponCreateArgs(code="SPRING", kind="percent", value="20", max_uses=5)
    assert telegram("find @bob").command == "lookup"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "No command"),
        ("sudo rm", "Unknown command"),
        ("grant 42", "either a plan"),
        ("grant 42 monthly days=3", "either a plan"),
        ("extend 42 days=0", "between 1 and 36500"),
        ("extend 42 days=lots", "bad value for days"),
        ("lookup", "missing user"),
        ("lookup bob smith", "Unexpected argument"),
        ("lookup 'bob", "Could not read"),
        ("lookup 0", "not a valid chat id"),
        ("lookup @b!", "chat id or an @username"),
        ("broadcast all", "missing text"),
        ("broadcast " + "x" * 4000, "limited to"),
        ("preset_create Bad/Name", "preset names"),
        ("preset_create x paused=yes", "Unknown filter"),
        ("coupon_create X percent 1 max_uses=0", "max_uses"),
        ("stats now=1", "unknown argument now"),
    ],
)
def test_bad_commands_say_why(text: str, reason: str) -> None:
    with pytest.raises(AdminInputError) as caught:
        telegram(text)
    assert reason in caught.value.reason


def test_http_bodies() -> None:
    assert decode_admin_body({"command": "stats"}) == ("stats", {})
    assert decode_admin_body({"command": "lookup", "args": {"user": 5}}) == (
        "lookup",
        {"user": 5},
    )
    for bad in ([], {"command": 5}, {"args": {}}, {"command": "stats", "x": 1}, {"command": "a b"}):
        with pytest.raises(AdminInputError):
            decode_admin_body(bad)


def test_cli_words() -> None:
    assert args_from_words("grant", ("@bob", "weekly"), ()) == {"user": "@bob", "plan": "weekly"}
    assert args_from_words("broadcast", ("subscribers", "Hi", "all"), ()) == {
        "audience": "subscribers",
        "text": "Hi all",
    }
    assert args_from_words("extend", ("5",), ("days=3",)) == {"user": "5", "days": "3"}
    with pytest.raises(AdminInputError):
        args_from_words("stats", ("extra",), ())
    with pytest.raises(AdminInputError):
        args_from_words("stats", (), ("novalue",))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_request_or_a_reason(text: str) -> None:
    try:
        request = telegram(text)
    except AdminInputError as exc:
        assert exc.reason
    else:
        assert request.command in ADMIN_COMMANDS
        assert isinstance(request.args, ADMIN_COMMANDS[request.command].args)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.text(max_size=8), scalars, max_size=3)
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"command": st.sampled_from(sorted(ADMIN_COMMANDS)) | st.text(max_size=12)},
            optional={
                "args": st.dictionaries(
                    st.sampled_from(["user", "days", "plan", "text", "name", "code"])
                    | st.text(max_size=8),
                    json_values,
                    max_size=4,
                )
            },
        ),
    )
)
def test_any_body_is_a_request_or_a_reason(body: Any) -> None:
    try:
        command, args = decode_admin_body(body)
        request = build_request(command, args, origin="cli", by=0)
    except AdminInputError as exc:
        assert exc.reason
    else:
        assert isinstance(request.args, ADMIN_COMMANDS[request.command].args)


def test_tree_summary_counts_users_and_lists_trouble() -> None:
    users = tuple(
        ActorStatus(
            name=f"user:{i}", path=f"root/svc/users/user:{i}", kind="worker", state="running"
        )
        for i in range(1000)
    )
    tree = ActorStatus(
        name="root",
        path="root",
        kind="supervisor",
        state="running",
        children=(
            ActorStatus(
                name="sender",
                path="root/sender",
                kind="worker",
                state="running",
                mailbox_depth=90,
                mailbox_capacity=100,
                restarts_total=2,
            ),
            ActorStatus(
                name="svc",
                path="root/svc",
                kind="supervisor",
                state="running",
                children=(
                    ActorStatus(
                        name="users",
                        path="root/svc/users",
                        kind="dynamic_supervisor",
                        state="running",
                        children=users,
                    ),
                ),
            ),
            ActorStatus(
                name="feed", path="root/feed", kind="worker", state="crashed", last_error="boom"
            ),
        ),
    )
    summary = summarize_tree(tree)
    assert summary["user_actors"] == 1000 and summary["restarts_total"] == 2
    assert summary["not_running"] == ["root/feed"]
    assert summary["busiest"][0]["path"] == "root/sender"
    assert "user:5" not in summary["text"] and "1000 user actors" in summary["text"]
    assert len(summary["text"].splitlines()) < 20
