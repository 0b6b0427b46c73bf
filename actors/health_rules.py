"""Health rules: when a sampled problem becomes an alert, when it repeats, when it recovers.

Pure logic, no actors and no I/O, so it is tested on its own (and on both backends for the
async part). The health actor samples the system, feeds each rule a verdict with
:meth:`RuleEngine.observe` and turns the events it gets back into messages, log lines and
metrics.

Why durations: a server that blinks for a second, or a feed that drops and reconnects every
twenty seconds, is not worth waking an admin at 3 a.m. A rule fires only when its problem
has held *continuously* (on every sample) for more than the rule's duration; one good sample
resets it. Once fired it re-alerts at most every ``repeat_s`` while the problem lasts, and
sends exactly one recovery when it clears.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio

__all__ = [
    "Alert",
    "Event",
    "Phase",
    "Probe",
    "Recovery",
    "Rule",
    "RuleEngine",
    "RuleState",
    "Unknown",
    "gather_samples",
]

Probe = Callable[[], Awaitable[tuple[bool, str]]]
"""An async check returning ``(ok, detail)``; raise :class:`Unknown` when it cannot tell."""


class Unknown(Exception):
    """Raised by a probe that has nothing to say this time (its subject is not running).

    The rule's state is left as it was: neither a good nor a bad sample.
    """


@dataclass(frozen=True, slots=True)
class Rule:
    """A named problem with the time it must last before an alert, and the repeat interval."""

    name: str
    duration: float = 0.0
    """The problem must hold continuously for more than this many seconds (0: at once)."""
    repeat_s: float = 3600.0
    """While it lasts, alert again at most this often."""
    title: str = ""
    """A short human title for messages ("Redis unreachable"); the name when empty."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a rule needs a name")
        if not math.isfinite(self.duration) or self.duration < 0:
            raise ValueError("duration must be a finite number of seconds >= 0")
        if not math.isfinite(self.repeat_s) or self.repeat_s <= 0:
            raise ValueError("repeat_s must be a finite number of seconds > 0")

    @property
    def label(self) -> str:
        return self.title or self.name


@dataclass(frozen=True, slots=True)
class Alert:
    """The rule fired (``repeat`` 0) or is still firing (``repeat`` 1, 2, ...)."""

    rule: str
    detail: str
    since: float
    """When the problem was first seen (the engine's clock)."""
    repeat: int = 0


@dataclass(frozen=True, slots=True)
class Recovery:
    """A fired rule's problem has cleared, after lasting ``duration`` seconds."""

    rule: str
    duration: float
    detail: str = ""
    """The last detail seen while the problem held."""


Event = Alert | Recovery


class Phase(StrEnum):
    OK = "ok"
    PENDING = "pending"
    """The problem holds but not yet for long enough."""
    FIRING = "firing"


@dataclass(slots=True)
class RuleState:
    """Where one rule stands; read it for status pages."""

    rule: Rule
    phase: Phase = Phase.OK
    since: float | None = None
    """When the current problem was first seen (None while OK)."""
    detail: str = ""
    checked_at: float | None = None
    last_alert: float | None = None
    alerts: int = 0
    """Alerts sent for the current problem (the first and the repeats)."""
    fired_total: int = 0
    last_recovery: float | None = None
    last_outage_s: float | None = None
    """How long the last fired problem lasted."""

    def as_dict(self, to_wall: Callable[[float], float] | None = None) -> dict[str, Any]:
        """Plain data; ``to_wall`` turns the engine's times into Unix times for display."""

        def when(t: float | None) -> float | None:
            if t is None:
                return None
            return round(to_wall(t) if to_wall is not None else t, 3)

        return {
            "state": self.phase.value,
            "title": self.rule.label,
            "since": when(self.since),
            "detail": self.detail,
            "checked_at": when(self.checked_at),
            "last_alert": when(self.last_alert),
            "alerts": self.alerts,
            "fired_total": self.fired_total,
            "last_recovery": when(self.last_recovery),
            "last_outage_s": None if self.last_outage_s is None else round(self.last_outage_s, 3),
        }


class RuleEngine:
    """Per-rule state machines: OK -> PENDING -> FIRING -> OK (with one Recovery)."""

    __slots__ = ("_states",)

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._states: dict[str, RuleState] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> None:
        """Add a rule, or replace an existing rule's definition keeping its state."""
        state = self._states.get(rule.name)
        if state is None:
            self._states[rule.name] = RuleState(rule)
        else:
            state.rule = rule

    def __contains__(self, name: object) -> bool:
        return name in self._states

    def names(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> RuleState:
        return self._states[name]

    def states(self) -> dict[str, RuleState]:
        return dict(self._states)

    def firing(self) -> list[str]:
        return [n for n, s in self._states.items() if s.phase is Phase.FIRING]

    def observe(self, t: float, name: str, failing: bool, detail: str = "") -> list[Event]:
        """Feed one sample taken at ``t``: ``failing`` says the rule's problem holds now."""
        state = self._states[name]
        rule = state.rule
        if state.checked_at is not None and t < state.checked_at:
            t = state.checked_at  # a clock never goes back; be safe if one did
        state.checked_at = t
        if not failing:
            events: list[Event] = []
            if state.phase is Phase.FIRING and state.since is not None:
                outage = t - state.since
                events.append(Recovery(name, outage, state.detail))
                state.last_recovery = t
                state.last_outage_s = outage
            state.phase = Phase.OK
            state.since = None
            state.last_alert = None
            state.alerts = 0
            state.detail = detail
            return events
        state.detail = detail
        if state.phase is Phase.OK or state.since is None:
            state.phase = Phase.PENDING
            state.since = t
        if state.phase is Phase.PENDING:
            if rule.duration <= 0 or t - state.since > rule.duration:
                state.phase = Phase.FIRING
                state.last_alert = t
                state.alerts = 1
                state.fired_total += 1
                return [Alert(name, detail, state.since, 0)]
            return []
        if state.last_alert is None or t - state.last_alert >= rule.repeat_s:
            state.last_alert = t
            state.alerts += 1
            return [Alert(name, detail, state.since, state.alerts - 1)]
        return []

    def observe_many(self, t: float, samples: Mapping[str, tuple[bool, str]]) -> list[Event]:
        """``samples`` maps rule name to ``(ok, detail)``, as probes answer."""
        events: list[Event] = []
        for name, (ok, detail) in samples.items():
            events.extend(self.observe(t, name, not ok, detail))
        return events

    def retire(self, t: float, name: str) -> list[Event]:
        """Forget a rule whose subject is gone; a firing rule ends with a Recovery."""
        state = self._states.get(name)
        if state is None:
            return []
        events = self.observe(t, name, False, "gone") if state.phase is Phase.FIRING else []
        del self._states[name]
        return events


async def gather_samples(
    probes: Mapping[str, Probe], timeout: float
) -> dict[str, tuple[bool, str]]:
    """Run every probe at once, each within ``timeout``.

    A probe that raises or runs out of time counts as failing (with the reason as detail):
    a check that cannot answer is itself a problem. One that raises :class:`Unknown` is left
    out of the result.
    """
    results: dict[str, tuple[bool, str]] = {}

    async def run(name: str, probe: Probe) -> None:
        try:
            with anyio.fail_after(timeout):
                ok, detail = await probe()
        except Unknown:
            return
        except TimeoutError:
            results[name] = (False, f"check did not answer within {timeout:g} s")
            return
        except Exception as exc:
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            results[name] = (False, f"check failed: {reason}"[:300])
            return
        results[name] = (bool(ok), str(detail))

    async with anyio.create_task_group() as tg:
        for name, probe in probes.items():
            tg.start_soon(run, name, probe)
    return {name: results[name] for name in probes if name in results}
