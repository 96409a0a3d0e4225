"""Stickiness: dwell, hysteresis, daily cap and placement budget, on event time."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.budgets import WorkerBudgets
from policy.stickiness import (
    DAY_S,
    KeepReason,
    StickinessSettings,
    StickyState,
    StickyVerdict,
    commit,
    judge,
    pin,
)

T0 = 1_780_000_000.0
RULES = StickinessSettings(min_dwell_s=600, hysteresis=0.1, max_changes_per_day=2)
ABC = ("a", "b", "c")
EV = {"a": 1.0, "b": 1.2, "c": 1.05}


def state(since: float = T0, changes: tuple[float, ...] = ()) -> StickyState:
    return StickyState("a", since, changes)


@pytest.mark.parametrize(
    ("case", "incumbent", "challenger", "at", "kwargs", "action", "changed", "kept"),
    [
        ("first decision is not a change", None, "b", T0, {}, "b", False, None),
        ("challenger is the incumbent", state(), "a", T0 + 1, {}, "a", False, None),
        ("incumbent gone: forced", state(), "b", T0 + 1, {"eligible": ("b", "c")}, "b", True, None),
        (
            "incumbent gone, cap spent: withdrawn (default shown)",
            state(T0, (T0 - 3600, T0)),
            "b",
            T0 + 1,
            {"eligible": ("b", "c")},
            "a",
            False,
            KeepReason.DAILY_CAP,
        ),
        (
            "incumbent gone, cap spent a day ago: forced",
            state(T0, (T0 - 3600, T0)),
            "b",
            T0 + DAY_S + 1,
            {"eligible": ("b", "c")},
            "b",
            True,
            None,
        ),
        (
            "incumbent gone, placement budget spent: withdrawn",
            state(),
            "b",
            T0 + 1,
            {"eligible": ("b", "c"), "budget_available": False},
            "a",
            False,
            KeepReason.PLACEMENT_BUDGET,
        ),
        (
            "confidence: the lower bound does not beat the incumbent",
            state(),
            "b",
            T0 + 600,
            {"lower": {"b": 1.0}},
            "a",
            False,
            KeepReason.CONFIDENCE,
        ),
        ("confidence: the lower bound beats it", state(), "b", T0 + 600, {"lower": {"b": 1.01}}, "b", True, None),
        (
            "explorations skip confidence",
            state(),
            "c",
            T0 + 600,
            {"explored": True, "lower": {"c": 0.0}},
            "c",
            True,
            None,
        ),
        ("request older than the incumbent", state(), "b", T0 - 5, {}, "a", False, KeepReason.DWELL),
        ("dwell not reached", state(), "b", T0 + 599, {}, "a", False, KeepReason.DWELL),
        ("dwell reached, clear winner", state(), "b", T0 + 600, {}, "b", True, None),
        ("margin too small", state(), "c", T0 + 600, {}, "a", False, KeepReason.HYSTERESIS),
        (
            "margin exactly 10 % is not enough",
            state(),
            "b",
            T0 + 600,
            {"ev": {"a": 1.0, "b": 1.1}},
            "a",
            False,
            KeepReason.HYSTERESIS,
        ),
        ("explorations skip hysteresis", state(), "c", T0 + 600, {"explored": True}, "c", True, None),
        (
            "negative evs: margin on |ev|",
            state(),
            "b",
            T0 + 600,
            {"ev": {"a": -1.0, "b": -0.95}},
            "a",
            False,
            KeepReason.HYSTERESIS,
        ),
        ("negative evs: enough", state(), "b", T0 + 600, {"ev": {"a": -1.0, "b": -0.85}}, "b", True, None),
        (
            "two changes in 24 h",
            state(T0, (T0 - 3600, T0)),
            "b",
            T0 + 600,
            {},
            "a",
            False,
            KeepReason.DAILY_CAP,
        ),
        (
            "rolling: older change left the window",
            state(T0, (T0 - DAY_S + 599, T0)),
            "b",
            T0 + 600,
            {},
            "b",
            True,
            None,
        ),
        (
            "rolling: still in the window",
            state(T0, (T0 - DAY_S + 601, T0)),
            "b",
            T0 + 600,
            {},
            "a",
            False,
            KeepReason.DAILY_CAP,
        ),
        (
            "placement budget spent",
            state(),
            "b",
            T0 + 600,
            {"budget_available": False},
            "a",
            False,
            KeepReason.PLACEMENT_BUDGET,
        ),
        (
            "dwell is reported before the cap",
            state(T0, (T0 - 1, T0)),
            "b",
            T0 + 1,
            {},
            "a",
            False,
            KeepReason.DWELL,
        ),
    ],
)
def test_judge(case, incumbent, challenger, at, kwargs, action, changed, kept) -> None:
    kwargs = {"eligible": ABC, "ev": EV, **kwargs}
    verdict = judge(incumbent, challenger, at, RULES, **kwargs)
    assert (verdict.action, verdict.changed, verdict.kept) == (action, changed, kept)
    if kept is not None:
        assert verdict.challenger == challenger
    # withdrawn exactly when the incumbent may not be shown and the change was refused
    assert verdict.withdrawn == (incumbent is not None and incumbent.action not in kwargs["eligible"] and not changed)


def test_no_settings_means_no_limits() -> None:
    verdict = judge(state(), "c", T0, StickinessSettings(), eligible=ABC, ev=EV)
    assert verdict.changed and verdict.action == "c"
    assert not StickinessSettings().limited
    incumbent = state()
    late = judge(incumbent, "c", incumbent.since - 5, StickinessSettings(), eligible=ABC, ev=EV)
    assert late.changed and late.action == "c"  # a late request too: nothing stays without a rule
    limited = judge(incumbent, "c", incumbent.since - 5, StickinessSettings(hysteresis=0.01), eligible=ABC, ev=EV)
    assert limited.kept is KeepReason.DWELL  # with a rule, a request older than the incumbent keeps it


@pytest.mark.parametrize(
    "kwargs",
    [{"min_dwell_s": 1}, {"hysteresis": 0.01}, {"max_changes_per_day": 0}, {"max_changes_per_hour": 5}],
)
def test_any_rule_makes_a_placement_limited(kwargs: dict) -> None:
    assert StickinessSettings(**kwargs).limited


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_dwell_s": -1}, "min_dwell_s must be a number >= 0"),
        ({"hysteresis": float("nan")}, "hysteresis must be a number >= 0"),
        ({"max_changes_per_day": 1.5}, "max_changes_per_day must be an integer >= 0"),
        ({"max_changes_per_hour": True}, "max_changes_per_hour must be an integer >= 0"),
        ({"confidence": -1}, "confidence must be a number >= 0"),
    ],
)
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StickinessSettings(**kwargs)


def test_commit_records_changes_and_keeps_only_what_the_cap_needs() -> None:
    first = commit(None, StickyVerdict("a"), T0, RULES)
    assert first == StickyState("a", T0)
    s = first
    for i, action in enumerate(["b", "c", "b"], start=1):
        s = commit(s, StickyVerdict(action, changed=True), T0 + i * 1000, RULES)
    assert s == StickyState("b", T0 + 3000, (T0 + 2000, T0 + 3000))  # two kept: the cap is 2
    kept = commit(s, StickyVerdict("b", kept=KeepReason.DWELL), T0 + 3001, RULES)
    assert kept is s
    no_cap = commit(s, StickyVerdict("a", changed=True), T0 + 5000, StickinessSettings())
    assert no_cap == StickyState("a", T0 + 5000)  # nothing to count, nothing stored


def test_forced_change_out_of_order_does_not_move_time_back() -> None:
    s = StickyState("a", T0)
    after = commit(s, StickyVerdict("b", changed=True, forced=True), T0 - 100, RULES)
    assert after.since == T0 and after.changes == (T0,)


def test_pin_takes_over_without_counting() -> None:
    s = StickyState("a", T0, (T0,))
    assert pin(s, "a", T0 + 5) is s
    assert pin(s, "b", T0 + 5) == StickyState("b", T0 + 5, (T0,))
    assert pin(None, "b", T0) == StickyState("b", T0)


def test_wire_form_is_compact_and_rounds_up() -> None:
    s = StickyState("offer_10pct", T0 + 0.4, (T0 - 3600.2, T0 + 0.4))
    wire = s.to_wire()
    assert wire == ["offer_10pct", int(T0) + 1, [3601, 0]]  # ceil(T0 + 0.4) - ceil(T0 - 3600.2)
    back = StickyState.from_wire(orjson.loads(orjson.dumps(wire)))
    assert back.since >= s.since and all(b >= a for a, b in zip(s.changes, back.changes, strict=True))
    with pytest.raises(ValueError, match="is not \\[action, since, \\[ages\\]\\]"):
        StickyState.from_wire([1, 2, 3])


# -- properties -------------------------------------------------------------------------------------
step = st.tuples(
    st.floats(min_value=-7200, max_value=30000, allow_nan=False),  # time to the next request (may go back)
    st.sampled_from(ABC),  # challenger
    st.booleans(),  # explored
    st.dictionaries(st.sampled_from(ABC), st.floats(-2, 2, allow_nan=False), min_size=3),
    st.booleans(),  # the incumbent stays eligible
)
rules = st.builds(
    StickinessSettings,
    min_dwell_s=st.sampled_from([0.0, 30.0, 600.0]),
    hysteresis=st.sampled_from([0.0, 0.1]),
    max_changes_per_day=st.integers(0, 4),
)


def _windows_hold(times: list[float], cap: int) -> bool:
    rolling = all(sum(1 for u in times if t - DAY_S < u <= t) <= cap for t in times)
    days: dict[int, int] = {}
    for t in times:
        days[int(t // DAY_S)] = days.get(int(t // DAY_S), 0) + 1
    return rolling and all(n <= cap for n in days.values())


@settings(max_examples=300, deadline=None)
@given(rules, st.lists(step, min_size=1, max_size=80))
def test_no_request_sequence_exceeds_the_daily_cap(rules: StickinessSettings, steps: list) -> None:
    """No change, forced ones included, ever exceeds the cap in any 24 h, nor in any calendar day, even
    with requests out of order, incumbents that stop being eligible, and the state round-tripped through
    its wire form after every step."""
    cap = rules.max_changes_per_day
    assert cap is not None
    s: StickyState | None = None
    ts = T0
    all_changes: list[float] = []
    for dt, challenger, explored, ev, incumbent_stays in steps:
        ts += dt
        eligible = set(ABC) if incumbent_stays or s is None else set(ABC) - {s.action} | {challenger}
        verdict = judge(s, challenger, ts, rules, eligible=eligible, ev=ev, explored=explored)
        s = commit(s, verdict, ts, rules)
        if verdict.changed:
            all_changes.append(s.since)
        if verdict.withdrawn:
            assert s.action not in eligible  # the incumbent waits; nothing else took its place
        s = StickyState.from_wire(orjson.loads(orjson.dumps(s.to_wire())))
    assert _windows_hold(all_changes, cap)
    assert all_changes == sorted(all_changes)  # change times never go backwards


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 5),
    st.lists(st.tuples(st.floats(0, 1800, allow_nan=False), st.sampled_from(["p1", "p2"])), max_size=60),
)
def test_placement_budget_is_never_overspent(per_hour: int, requests: list) -> None:
    budgets = WorkerBudgets()
    ts = T0
    taken: dict[tuple[str, int], int] = {}
    for dt, placement in requests:
        ts += dt
        if budgets.change_available(placement, ts, per_hour):
            budgets.take_change(placement, ts)
            key = (placement, int(ts // 3600))
            taken[key] = taken.get(key, 0) + 1
    assert all(n <= per_hour for n in taken.values())
