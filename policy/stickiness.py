"""Rate limiting of decision changes: how fast the action a user sees on a placement may change.

Per user and placement the state holds the incumbent (the action shown), since when it is shown and
the times of its recent changes. A challenger (the action the policy wants now) replaces the incumbent
only when every rule allows it, checked in this order:

1. dwell       the incumbent has been shown for at least ``min_dwell_s`` (event time). A request older
               than the incumbent's start never changes it, so change times never go backwards.
2. hysteresis  the challenger's expected value beats the incumbent's by the relative margin
               ``hysteresis`` (0.1: at least 10 % better).
3. confidence  when ``lower`` is given (the challenger's ev at a lower confidence bound), that bound must
               beat the incumbent's ev too: the one change of the day goes to an action known to be
               better, not to one that only might be.
4. daily_cap   fewer than ``max_changes_per_day`` changes in the rolling 24 hours before the request.
               Rolling, not calendar: no 24-hour window ever holds more than the cap, which also
               bounds every calendar day.
5. placement_budget  the worker's hourly change budget for the placement (event-time hour buckets,
               see :mod:`policy.budgets`) is not spent.

The first decision for a user and placement sets the incumbent and is not a change.

Forced changes. When the incumbent is no longer eligible (ended, banned, or its per-action contact cap
reached, e.g. an ad creative's 6 impressions a day) it may not be shown, so dwell and hysteresis do
not apply; but the replacement is a change like any other: it needs the daily cap (4) and the placement
budget (5), and it is counted. When either refuses, the verdict is ``withdrawn``: the placement shows
its default action (the pipeline logs mode ``fallback``, reason ``incumbent_unavailable``), and the
incumbent stays the incumbent, shown again as soon as it is eligible (which is not a change). So the
guarantee holds for every change of the policy's action, forced ones included:

    no user sees more than ``max_changes_per_day`` changes of the action on a placement in any
    rolling 24 hours.

What it does not count, by design: the placement's default shown instead of any action (withdrawn,
kill switch, holdout, nothing eligible) and suppressed decisions (nothing shown) do not replace the
incumbent; a pin lever (a human order) replaces it without counting as a change.

Cost measured on the closed loop (load_tests/stickiness_experiment.py): on ``display_slot`` a heavy user
can see at most two creatives a day (one change), so the slot shows nothing after their 6 impressions
each, where the unlimited engine shows a third creative.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from math import ceil

DAY_S = 86400.0


class KeepReason(StrEnum):
    """Why the incumbent was kept although the policy wanted another action (trace and metric label)."""

    DWELL = "dwell"
    HYSTERESIS = "hysteresis"
    DAILY_CAP = "daily_cap"
    PLACEMENT_BUDGET = "placement_budget"
    CONFIDENCE = "confidence"


@dataclass(frozen=True, slots=True)
class StickinessSettings:
    """Per placement; the defaults impose no limit."""

    min_dwell_s: float = 0.0  # seconds an action stays before it may change
    hysteresis: float = 0.0  # relative margin a challenger must win by (0.1 = 10 %)
    max_changes_per_day: int | None = None  # per user and placement, rolling 24 h
    max_changes_per_hour: int | None = None  # per placement, all users of the fleet together
    # where any rule above is set: a change needs the challenger's mean minus this many widths of the
    # bandit's exploration bonus to beat the incumbent's mean (rule 3); 0 turns the rule off
    confidence: float = 3.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_dwell_s) and self.min_dwell_s >= 0):
            raise ValueError("min_dwell_s must be a number >= 0")
        if not (math.isfinite(self.hysteresis) and self.hysteresis >= 0):
            raise ValueError("hysteresis must be a number >= 0")
        if not (math.isfinite(self.confidence) and self.confidence >= 0):
            raise ValueError("confidence must be a number >= 0 (bonus widths; 0 turns the rule off)")
        for name in ("max_changes_per_day", "max_changes_per_hour"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name} must be an integer >= 0")

    @property
    def limited(self) -> bool:
        """Any rule set: an action shown here may have to stay, so it is chosen as one that should."""
        return (
            self.min_dwell_s > 0
            or self.hysteresis > 0
            or self.max_changes_per_day is not None
            or self.max_changes_per_hour is not None
        )


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


@dataclass(slots=True)  # not frozen: made per request, and a frozen __init__ costs 3-4x; never changed
class StickyVerdict:
    """What to show: the challenger (change allowed, or nothing to change), the incumbent (kept), or
    the placement's default (``withdrawn``: the incumbent may not be shown and no change is allowed)."""

    action: str
    changed: bool = False  # the shown action differs from the incumbent (counts as a change)
    kept: KeepReason | None = None  # set when the incumbent was kept against the challenger
    forced: bool = False  # the incumbent was not eligible: it had to go
    withdrawn: bool = False  # the incumbent may not be shown and no change is allowed: show the default
    challenger: str | None = None
    detail: dict[str, float] | None = None  # the numbers behind ``kept`` for the trace (None: nothing to add)


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
    lower: Mapping[str, float] | None = None,
) -> StickyVerdict:
    """Decide between the incumbent in ``state`` and ``challenger``; pure, changes nothing.

    ``ev`` holds the expected values of the eligible actions that hysteresis compares; ``lower`` their
    lower confidence bounds (rule 3, skipped when None); ``explored``: the challenger is a deliberate
    exploration, which skips rules 2 and 3 (it is not meant to be better); ``budget_available`` says
    whether the placement's hourly change budget has room.
    """
    if state is None:
        return StickyVerdict(challenger)
    incumbent = state.action
    if challenger == incumbent:
        return StickyVerdict(challenger)
    cap = settings.max_changes_per_day
    if incumbent not in eligible:
        if cap is not None and changes_in_last_day(state, ts) >= cap:
            return StickyVerdict(incumbent, kept=KeepReason.DAILY_CAP, withdrawn=True, challenger=challenger,
                                 detail={"changes_24h": float(changes_in_last_day(state, ts)), "cap": float(cap)})
        if not budget_available:
            return StickyVerdict(incumbent, kept=KeepReason.PLACEMENT_BUDGET, withdrawn=True,
                                 challenger=challenger)
        return StickyVerdict(challenger, changed=True, forced=True, challenger=challenger)

    def keep(reason: KeepReason, **detail: float) -> StickyVerdict:
        return StickyVerdict(incumbent, kept=reason, challenger=challenger, detail=detail)

    dwell = ts - state.since
    # a request older than the incumbent keeps it, on a placement with limits; without any, nothing stays
    if (ts < state.since and settings.limited) or 0 <= dwell < settings.min_dwell_s:
        return keep(KeepReason.DWELL, dwell_s=round(dwell, 3), min_dwell_s=settings.min_dwell_s)
    # ev is read only where a rule needs it (the pipeline passes a mapping that looks values up when asked)
    if not explored and (settings.hysteresis > 0 or lower is not None):
        inc = ev.get(incumbent, 0.0)
        if settings.hysteresis > 0:
            ch = ev.get(challenger, 0.0)
            if ch <= inc + settings.hysteresis * abs(inc):
                return keep(KeepReason.HYSTERESIS, incumbent_ev=round(inc, 6), challenger_ev=round(ch, 6))
        if lower is not None and lower.get(challenger, 0.0) <= inc:
            low = round(lower.get(challenger, 0.0), 6)
            return keep(KeepReason.CONFIDENCE, incumbent_ev=round(inc, 6), challenger_lower_ev=low)
    if cap is not None and changes_in_last_day(state, ts) >= cap:
        return keep(KeepReason.DAILY_CAP, changes_24h=float(changes_in_last_day(state, ts)), cap=float(cap))
    if not budget_available:
        return keep(KeepReason.PLACEMENT_BUDGET)
    return StickyVerdict(challenger, changed=True, challenger=challenger)


def commit(
    state: StickyState | None, verdict: StickyVerdict, ts: float, settings: StickinessSettings
) -> StickyState:
    """The state after showing ``verdict.action`` at ``ts`` (a new object; ``state`` is unchanged). Times are
    kept rounded up to the second, as the stored state keeps them (policy/state.py): a worker that just decided
    holds the same state as one that reads it back."""
    if state is None:
        return StickyState(verdict.action, ceil(ts))
    if not verdict.changed:
        return state
    at = max(ceil(ts), state.since)  # a forced change out of order must not move time backwards
    cap = settings.max_changes_per_day
    if cap is None:
        return StickyState(verdict.action, at)
    recent = [t for t in state.changes if t > at - DAY_S] + [at]
    return StickyState(verdict.action, at, tuple(recent[-max(cap, 1) :]))


def pin(state: StickyState | None, action: str, ts: float) -> StickyState:
    """A pinned action becomes the incumbent without counting as a change (levers are human orders)."""
    if state is not None and state.action == action:
        return state
    since = ceil(ts) if state is None else max(ceil(ts), state.since)
    return StickyState(action, since, state.changes if state is not None else ())
