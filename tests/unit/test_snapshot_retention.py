"""Snapshot retention (learning/retention.py): the newest versions plus the newest of each recent hour and day."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learning.retention import DAY_S, HOUR_S, Retention, kept

NOW = 1_800_000_000.0 - 1_800_000_000.0 % DAY_S + 13.5 * HOUR_S  # 13:30 UTC


def test_a_version_every_30_s_for_10_days_keeps_the_newest_then_one_an_hour_then_one_a_day() -> None:
    versions = [(i + 1, NOW - 10 * DAY_S + i * 30.0) for i in range(int(10 * DAY_S / 30))]
    out = kept(versions, versions[-1][1], Retention(newest=20, hourly=24, daily=7))
    newest = [v for v, why in out.items() if why == "newest"]
    assert sorted(newest) == [v for v, _ in versions[-20:]]
    ages = sorted(versions[-1][1] - created for v, created in versions if out.get(v) in ("hourly", "daily"))
    assert len([v for v, why in out.items() if why == "hourly"]) == 23  # this hour's newest is the newest
    # today's newest is the newest, yesterday's is the newest of an hour of the last 24
    assert len([v for v, why in out.items() if why == "daily"]) == 5
    assert 5 * DAY_S < max(ages) < 6 * DAY_S  # the end of the day 6 days before today (13:30 now)
    assert len(out) == 20 + 23 + 5


def test_a_pinned_version_is_kept_whatever_its_age() -> None:
    versions = [(v, NOW - 30 * DAY_S + v) for v in range(1, 100)]  # all within one day, a month ago
    out = kept(versions, NOW, Retention(newest=3, hourly=24, daily=7), pinned={5})
    assert out == {99: "newest", 98: "newest", 97: "newest", 5: "rollback"}


def test_the_highest_number_stands_for_its_hour_whatever_the_clocks_say() -> None:
    out = kept([(1, NOW - 2 * HOUR_S), (2, NOW - 2 * HOUR_S - 60), (3, NOW)], NOW, Retention(1, 24, 0))
    assert out == {3: "newest", 2: "hourly"}


def test_nothing_but_the_newest_with_thinning_off() -> None:
    versions = [(v, NOW - (50 - v) * HOUR_S) for v in range(1, 50)]
    assert kept(versions, NOW, Retention(newest=2, hourly=0, daily=0)) == {49: "newest", 48: "newest"}


def test_a_rule_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="newest >= 1"):
        Retention(newest=0)


ages = st.lists(st.floats(min_value=0, max_value=60 * DAY_S, allow_nan=False), min_size=0, max_size=80)
rules = st.builds(Retention, st.integers(1, 25), st.integers(0, 48), st.integers(0, 40))


def timeline(gaps: list[float], start: float) -> list[tuple[int, float]]:
    """Versions 1.. saved ``gaps`` seconds apart from ``start`` (a writer's clock: in order)."""
    out, t = [], start
    for i, gap in enumerate(gaps):
        t += gap
        out.append((i + 1, t))
    return out


@settings(max_examples=300, deadline=None)
@given(gaps=ages, rule=rules, pin=st.integers(1, 80))
def test_properties(gaps: list[float], rule: Retention, pin: int) -> None:
    versions = timeline([g / 40 for g in gaps], NOW - 60 * DAY_S)
    now = max([NOW, *(c for _, c in versions)])
    out = kept(versions, now, rule, pinned={pin})
    numbers = sorted(v for v, _ in versions)
    assert set(out) <= set(numbers)
    assert set(numbers[-rule.newest:]) <= set(out)  # the newest are always kept
    assert pin not in numbers or pin in out  # a pending rollback's version too
    assert len(out) <= rule.most
    for width, count in ((HOUR_S, rule.hourly), (DAY_S, rule.daily)):  # every recent hour (day) has its newest
        for _, created in versions:
            bucket = int(created // width)
            if bucket > int(now // width) - count:
                newest_of_bucket = max(w for w, c in versions if int(c // width) == bucket)
                assert newest_of_bucket in out


@settings(max_examples=300, deadline=None)
@given(gaps=ages, rule=rules, split=st.integers(0, 80), later=st.floats(0, 20 * DAY_S))
def test_trimming_at_every_save_keeps_what_trimming_once_keeps(gaps: list[float], rule: Retention, split: int,
                                                               later: float) -> None:
    # no version an earlier trim deleted is ever wanted again: trim at t1, save more, trim at t2 == trim at t2
    versions = timeline(gaps, NOW - 60 * DAY_S)
    before, after = versions[:split], versions[split:]
    t1 = max([NOW - 60 * DAY_S, *(c for _, c in before)])
    t2 = max([t1 + later, *(c for _, c in after)])
    survivors = [(v, c) for v, c in before if v in kept(before, t1, rule)]
    assert kept(survivors + after, t2, rule) == kept(versions, t2, rule)
