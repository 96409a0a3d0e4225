"""Rate limiting of decision changes: how fast the action a user sees on a placement may change.

Per user and placement the state holds the incumbent (the action shown), since when it is shown and
the times of its recent changes. A challenger (the action the bandit and arbitration want now) replaces
the incumbent only when every rule allows it, checked in this order:

1. dwell       the incumbent has been shown for at least ``min_dwell_s`` (event time). A request older
               than the incumbent's start never changes it, so change times never go backwards.
2. hysteresis  the challenger's expected value beats the incumbent's by the relative margin
               ``hysteresis`` (0.1: at least 10 % better). Explorations skip this rule: the bandit
               chose them on purpose, and they still obey the caps.
3. daily_cap   fewer than ``max_changes_per_day`` changes in the rolling 24 hours before the request.
               Rolling, not calendar: no 24-hour window ever holds more than the cap, which also
               bounds every calendar day.
4. placement_budget  the worker's hourly change budget for the placement (event-time hour buckets,
               see :mod:`policy.budgets`) is not spent.

The first decision for a user and placement sets the incumbent and is not a change. When the incumbent
is no longer eligible (ended, banned, capped) the change is forced: it is recorded (so it counts against
the daily cap afterwards) but no rule can block it, because the incumbent may not be shown.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

DAY_S = 86400.0


class KeepReason(StrEnum):
    """Why the incumbent was kept although the policy wanted another action (trace and metric label)."""

    DWELL = "dwell"
    HYSTERESIS = "hysteresis"
    DAILY_CAP = "daily_cap"
    PLACEMENT_BUDGET = "placement_budget"


@dataclass(frozen=True, slots=True)
class StickinessSettings:
    """Per placement; the defaults impose no limit."""

    min_dwell_s: float = 0.0  # seconds an action stays before it may change
    hysteresis: float = 0.0  # relative margin a challenger must win by (0.1 = 10 %)
    max_changes_per_day: int | None = None  # per user and placement, rolling 24 h
    max_changes_per_hour: int | None = None  # per placement and worker, all users together

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_dwell_s) and self.min_dwell_s >= 0):
            raise ValueError("min_dwell_s must be a number >= 0")
        if not (math.isfinite(self.hysteresis) and self.hysteresis >= 0):
            raise ValueError("hysteresis must be a number >= 0")
        for name in ("max_changes_per_day", "max_changes_per_hour"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an integer >= 0")


@dataclass(frozen=True, slots=True)
class StickyState:
    """What one user sees on one placement. ``changes``: change times in the last day, oldest first."""

    action: str
    since: float
    changes: tuple[float, ...] = ()

    def to_wire(self) -> list:
        """Compact form: [action, since, [seconds before since of each change]] (whole seconds).

        Times are rounded up: a change then looks at most a second later than it was, so every rule
        stays at least as strict after a round trip.
        """
        since = math.ceil(self.since)
        return [self.action, since, [since - math.ceil(t) for t in self.changes]]

    @classmethod
    def from_wire(cls, doc: list) -> StickyState:
        action, since, ages = doc
        if not isinstance(action, str) or not isinstance(since, int | float) or not isinstance(ages, list):
            raise ValueError(f"sticky state {doc!r} is not [action, since, [ages]]")
        return cls(action, float(since), tuple(float(since - a) for a in ages))


@dataclass(frozen=True, slots=True)
class StickyVerdict:
    """What to show: the challenger (change allowed, or nothing to change) or the incumbent (kept)."""

    action: str
    changed: bool = False  # the shown action differs from the incumbent (counts as a change)
    kept: KeepReason | None = None  # set when the incumbent was kept against the challenger
    forced: bool = False  # the incumbent was not eligible, so the change could not be refused
    challenger: str | None = None
    detail: dict[str, float] = field(default_factory=dict)


def changes_in_last_day(state: StickyState, ts: float) -> int:
    return sum(1 for t in state.changes if t > ts - DAY_S)


def judge(
    state: StickyState | None,
    challenger: str,
    ts: float,
    settings: StickinessSettings,
    *,
    eligible: Collection[str],
    ev: Mapping[str, float],
    explored: bool = False,
    budget_available: bool = True,
) -> StickyVerdict:
    """Decide between the incumbent in ``state`` and ``challenger``; pure, changes nothing.

    ``ev`` holds the arbitration scores of the eligible actions (hysteresis compares them);
    ``budget_available`` says whether the placement's hourly change budget has room.
    """
    if state is None:
        return StickyVerdict(challenger)
    incumbent = state.action
    if challenger == incumbent:
        return StickyVerdict(challenger)
    if incumbent not in eligible:
        return StickyVerdict(challenger, changed=True, forced=True)
    dwell = ts - state.since

    def keep(reason: KeepReason, **detail: float) -> StickyVerdict:
        return StickyVerdict(incumbent, kept=reason, challenger=challenger, detail=detail)

    if ts < state.since or dwell < settings.min_dwell_s:
        return keep(KeepReason.DWELL, dwell_s=round(dwell, 3), min_dwell_s=settings.min_dwell_s)
    if not explored and settings.hysteresis > 0:
        inc, ch = ev.get(incumbent, 0.0), ev.get(challenger, 0.0)
        needed = inc + settings.hysteresis * abs(inc)
        if ch <= needed:
            return keep(KeepReason.HYSTERESIS, incumbent_ev=round(inc, 6), challenger_ev=round(ch, 6))
    cap = settings.max_changes_per_day
    if cap is not None and changes_in_last_day(state, ts) >= cap:
        return keep(KeepReason.DAILY_CAP, changes_24h=float(changes_in_last_day(state, ts)), cap=float(cap))
    if not budget_available:
        return keep(KeepReason.PLACEMENT_BUDGET)
    return StickyVerdict(challenger, changed=True, challenger=challenger)


def commit(
    state: StickyState | None, verdict: StickyVerdict, ts: float, settings: StickinessSettings
) -> StickyState:
    """The state after showing ``verdict.action`` at ``ts`` (a new object; ``state`` is unchanged)."""
    if state is None:
        return StickyState(verdict.action, ts)
    if not verdict.changed:
        return state
    at = max(ts, state.since)  # a forced change out of order must not move time backwards
    cap = settings.max_changes_per_day
    if cap is None:
        return StickyState(verdict.action, at)
    recent = [t for t in state.changes if t > at - DAY_S] + [at]
    return StickyState(verdict.action, at, tuple(recent[-max(cap, 1) :]))


def pin(state: StickyState | None, action: str, ts: float) -> StickyState:
    """A pinned action becomes the incumbent without counting as a change (levers are human orders)."""
    if state is not None and state.action == action:
        return state
    since = ts if state is None else max(ts, state.since)
    return StickyState(action, since, state.changes if state is not None else ())
