"""The rule engine: durations, repeats, one recovery, no storm from a flapping problem."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from actors.health_rules import (
    Alert,
    Phase,
    Recovery,
    Rule,
    RuleEngine,
    Unknown,
    gather_samples,
)
from tests.conftest import BOTH_BACKENDS


def run(engine: RuleEngine, name: str, timeline: Sequence[tuple[float, bool]]) -> list[object]:
    events: list[object] = []
    for t, failing in timeline:
        events.extend(engine.observe(t, name, failing, "down" if failing else "up"))
    return events


def test_fires_once_after_the_duration_and_recovers_once() -> None:
    engine = RuleEngine([Rule("feed", duration=60, repeat_s=3600)])
    timeline = [(t, 100 <= t < 400) for t in range(0, 500, 5)]
    events = run(engine, "feed", timeline)
    assert events == [Alert("feed", "down", 100, 0), Recovery("feed", 300, "down")]
    # "more than 60 s": at 160 it has held exactly 60 s, so the alert comes at 165
    engine2 = RuleEngine([Rule("feed", duration=60)])
    assert run(engine2, "feed", [(t, True) for t in range(100, 165, 5)]) == []
    assert run(engine2, "feed", [(165, True)]) == [Alert("feed", "down", 100, 0)]


def test_flapping_never_fires() -> None:
    """Down 20 s, up 20 s, for an hour, against a 60 s threshold: nothing at all."""
    engine = RuleEngine([Rule("feed", duration=60)])
    timeline = [(t, (t // 20) % 2 == 0) for t in range(0, 3600, 5)]
    assert run(engine, "feed", timeline) == []
    assert engine.state("feed").fired_total == 0


def test_repeats_at_most_every_repeat_s_while_it_lasts() -> None:
    engine = RuleEngine([Rule("redis", duration=300, repeat_s=3600)])
    events = run(engine, "redis", [(t, True) for t in range(0, 3 * 3600 + 600, 5)])
    alerts = [e for e in events if isinstance(e, Alert)]
    assert [a.repeat for a in alerts] == [0, 1, 2, 3]
    assert alerts[0].since == 0
    fired_at = 305
    # first at 305, then 3905, 7505, 11105
    assert engine.state("redis").last_alert == fired_at + 3 * 3600
    assert all(not isinstance(e, Recovery) for e in events)


def test_zero_duration_fires_on_the_first_bad_sample() -> None:
    engine = RuleEngine([Rule("gave_up:root/users")])
    assert engine.observe(10, "gave_up:root/users", True, "x") == [
        Alert("gave_up:root/users", "x", 10, 0)
    ]
    assert engine.observe(15, "gave_up:root/users", False) == [
        Recovery("gave_up:root/users", 5, "x")
    ]


def test_a_problem_that_clears_before_firing_sends_no_recovery() -> None:
    engine = RuleEngine([Rule("feed", duration=60)])
    assert run(engine, "feed", [(0, True), (30, True), (35, False), (40, False)]) == []
    assert engine.state("feed").phase is Phase.OK


def test_state_for_status() -> None:
    engine = RuleEngine([Rule("feed", duration=10, title="Signal feed")])
    engine.observe(100, "feed", True, "silent")
    state = engine.state("feed")
    assert (state.phase, state.since, state.detail) == (Phase.PENDING, 100, "silent")
    engine.observe(111, "feed", True, "still silent")
    view = engine.state("feed").as_dict(lambda t: t + 1_000_000)
    assert view["state"] == "firing"
    assert view["since"] == 1_000_100
    assert view["detail"] == "still silent"
    assert view["title"] == "Signal feed"
    assert engine.firing() == ["feed"]
    engine.observe(150, "feed", False, "ok")
    view = engine.state("feed").as_dict()
    assert view["state"] == "ok" and view["since"] is None
    assert view["last_outage_s"] == 50 and view["fired_total"] == 1


def test_observe_many_takes_probe_answers_and_retire_recovers() -> None:
    engine = RuleEngine([Rule("a"), Rule("b")])
    events = engine.observe_many(1.0, {"a": (False, "bad"), "b": (True, "fine")})
    assert events == [Alert("a", "bad", 1.0, 0)]
    assert engine.retire(2.0, "a") == [Recovery("a", 1.0, "bad")]
    assert "a" not in engine
    assert engine.retire(2.0, "missing") == []


def test_readding_a_rule_keeps_its_state() -> None:
    engine = RuleEngine([Rule("a", duration=100)])
    engine.observe(0, "a", True)
    engine.add(Rule("a", duration=5))
    assert engine.observe(6, "a", True) == [Alert("a", "", 0, 0)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "a", "duration": -1}, "duration"),
        ({"name": "a", "duration": float("nan")}, "duration"),
        ({"name": "a", "repeat_s": 0}, "repeat_s"),
    ],
)
def test_bad_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule(**kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
@BOTH_BACKENDS
async def test_gather_samples_runs_probes_at_once_and_contains_failures() -> None:
    gate = anyio.Event()

    async def ok() -> tuple[bool, str]:
        gate.set()
        return True, "fine"

    async def waits_for_ok() -> tuple[bool, str]:
        await gate.wait()  # only finishes if the probes run concurrently
        return False, "down"

    async def raises() -> tuple[bool, str]:
        raise ConnectionError("refused")

    async def unknown() -> tuple[bool, str]:
        raise Unknown("not in this tree")

    async def hangs() -> tuple[bool, str]:
        await anyio.sleep_forever()
        raise AssertionError

    with anyio.fail_after(5):
        samples = await gather_samples(
            {
                "waits": waits_for_ok,
                "ok": ok,
                "raises": raises,
                "unknown": unknown,
                "hangs": hangs,
            },
            timeout=0.05,
        )
    assert list(samples) == ["waits", "ok", "raises", "hangs"]
    assert samples["ok"] == (True, "fine")
    assert samples["waits"] == (False, "down")
    assert samples["raises"] == (False, "check failed: ConnectionError: refused")
    assert samples["hangs"][0] is False and "did not answer" in samples["hangs"][1]
