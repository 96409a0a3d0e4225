"""Worker budgets: action volume and spend per UTC day, placement changes per hour, all on event time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.budgets import WorkerBudgets, _Buckets

DAY0 = 1_780_012_800.0  # a UTC midnight


def test_volume_cap_per_utc_day() -> None:
    b = WorkerBudgets()
    assert b.action_block("a", DAY0, 0.0, 2, None) is None
    b.record_action("a", DAY0 + 10, 0.0)
    b.record_action("a", DAY0 + 20, 0.0)
    assert b.action_block("a", DAY0 + 86399, 0.0, 2, None) == "volume_cap"
    assert b.action_block("b", DAY0 + 86399, 0.0, 2, None) is None  # per action
    assert b.action_block("a", DAY0 + 86400, 0.0, 2, None) is None  # next day
    assert b.action_usage("a", DAY0) == (2, 0.0)


def test_budget_counts_cost() -> None:
    b = WorkerBudgets()
    b.record_action("a", DAY0, 0.3)
    b.record_action("a", DAY0, 0.3)
    assert b.action_block("a", DAY0, 0.4, None, 1.0) is None  # 1.0 exactly is still within
    b.record_action("a", DAY0, 0.4)
    assert b.action_block("a", DAY0, 0.01, None, 1.0) == "budget"
    assert b.action_usage("a", DAY0) == (3, pytest.approx(1.0))


@pytest.mark.parametrize(
    ("share", "limit", "allowed"),
    [(1.0, 10, 10), (0.5, 10, 5), (0.25, 10, 2), (1 / 49, 49, 1), (1 / 98, 98, 1)],  # 49 × (1/49) < 1 in floats
)
def test_share_splits_limits_between_workers(share: float, limit: int, allowed: int) -> None:
    b = WorkerBudgets(share=share)
    n = 0
    while b.action_block("a", DAY0, 1.0, limit, 1000.0) is None and n < 100:
        b.record_action("a", DAY0, 1.0)
        n += 1
    assert n == allowed
    changes = 0
    while b.change_available("p", DAY0, limit) and changes < 100:
        b.take_change("p", DAY0)
        changes += 1
    assert changes == allowed


def test_hourly_change_budget_uses_event_time_buckets() -> None:
    b = WorkerBudgets()
    b.take_change("p", DAY0 + 59)
    assert not b.change_available("p", DAY0 + 3599, 1)
    assert b.change_available("p", DAY0 + 3600, 1)
    assert b.change_available("other", DAY0 + 100, 1)
    assert b.change_available("p", DAY0, None)


def test_requests_older_than_the_kept_buckets_are_refused() -> None:
    b = WorkerBudgets(keep_days=2, keep_hours=3)
    b.record_action("a", DAY0 + 5 * 86400, 0.0)
    assert b.action_block("a", DAY0 + 4 * 86400, 0.0, 10, None) is None  # yesterday is still kept
    assert b.action_block("a", DAY0 + 3 * 86400, 0.0, 10, None) == "volume_cap"
    assert b.action_block("a", DAY0 + 3 * 86400, 0.0, None, None) is None  # no limit, nothing to refuse
    b.take_change("p", DAY0 + 10 * 3600)
    assert b.change_available("p", DAY0 + 8 * 3600, 5)
    assert not b.change_available("p", DAY0 + 7 * 3600, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"share": 0}, "share must be in \\(0, 1\\]"),
        ({"share": 1.5}, "1/number of workers"),
        ({"keep_days": 0}, "keep_days and keep_hours must be >= 1"),
    ],
)
def test_bad_budgets(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WorkerBudgets(**kwargs)


class _ScanEveryCall:
    """The reference: counters per bucket, every bucket older than ``keep`` behind the newest dropped on
    every add (what ``_Buckets`` did before it scanned only when a bucket was created)."""

    def __init__(self, width_s: int, keep: int) -> None:
        self.width_s, self.keep, self.buckets = width_s, keep, {}

    def add(self, ts: float, count: int) -> None:
        n = int(ts // self.width_s)
        self.buckets[n] = self.buckets.get(n, 0) + count
        newest = max(self.buckets)
        self.buckets = {k: v for k, v in self.buckets.items() if k > newest - self.keep}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 30), st.integers(1, 3)), max_size=60), st.integers(1, 4))
def test_buckets_keep_what_a_scan_on_every_add_keeps(adds: list[tuple[int, int]], keep: int) -> None:
    """Out-of-order and late adds included: the same buckets and counts as the reference."""
    buckets, reference = _Buckets(10, keep), _ScanEveryCall(10, keep)
    for tick, count in adds:
        buckets.add("k", tick * 7.0, count)
        reference.add(tick * 7.0, count)
        kept = {n: b.count for n, b in buckets._by_key["k"].items()}
        assert kept == reference.buckets


def test_a_late_add_counts_nowhere() -> None:
    b = WorkerBudgets(keep_hours=2)
    b.take_change("p", DAY0 + 5 * 3600)
    b.take_change("p", DAY0 + 2 * 3600)  # older than the 2 hours kept: dropped, not counted
    assert not b.change_available("p", DAY0 + 2 * 3600, 5)  # and still refused
    assert b.change_available("p", DAY0 + 4 * 3600, 2)


# -- surviving a restart: what is handed to the fleet's totals, and a share of them taken back ------------
def test_what_was_recorded_is_handed_over_once_per_bucket() -> None:
    b = WorkerBudgets()
    b.record_action("a", DAY0 + 10, 0.5)
    b.record_action("a", DAY0 + 20, 0.25)
    b.record_action("a", DAY0 + 86400, 1.0)  # the next UTC day: its own bucket
    b.take_change("p", DAY0 + 59)
    day = int(DAY0 // 86400)
    actions, changes = b.take_unflushed()
    assert actions == {("a", day): (2, 0.75), ("a", day + 1): (1, 1.0)}
    assert changes == {("p", int(DAY0 // 3600)): (1, 0.0)}
    assert b.take_unflushed() == ({}, {})  # handed over once
    assert b.action_usage("a", DAY0) == (2, 0.75)  # the worker's own counters stay


def test_a_restarted_worker_takes_its_share_of_what_the_fleet_spent() -> None:
    day, hour = int(DAY0 // 86400), int(DAY0 // 3600)
    fleet = ({("a", day): (10, 5.0), ("a", day - 1): (99, 99.0)}, {("p", hour): (3, 0.0)})
    b = WorkerBudgets(share=0.5)  # limits per worker: 5 decisions, 2.5 spend, 1 change per hour
    b.seed(*fleet)
    assert b.action_usage("a", DAY0) == (5, 2.5)
    assert b.action_block("a", DAY0, 0.0, 10, None) == "volume_cap"  # the day's share is used: not again
    assert b.action_block("a", DAY0, 0.1, 20, 5.0) == "budget"
    assert b.action_block("a", DAY0 + 86400, 0.0, 10, 5.0) is None  # a new day
    assert not b.change_available("p", DAY0 + 60, 2)  # 3 × 0.5 rounds up to 2: stricter, never looser
    assert b.change_available("p", DAY0 + 3600, 2)
    assert b.take_unflushed() == ({}, {})  # the fleet's totals are not counted again
    b.record_action("a", DAY0 + 86400, 1.0)
    b.seed(*fleet)  # seeding again (after a rebalance) never lowers what the worker counted itself
    assert b.action_usage("a", DAY0 + 86400) == (1, 1.0) and b.action_usage("a", DAY0) == (5, 2.5)


def test_seeding_skips_days_older_than_those_kept() -> None:
    b = WorkerBudgets(keep_days=2)
    day = int(DAY0 // 86400)
    b.seed({("a", day): (1, 0.0), ("a", day - 5): (7, 0.0)}, {})
    assert b.action_usage("a", DAY0) == (1, 0.0)
    assert b.action_block("a", DAY0 - 5 * 86400, 0.0, 10, None) == "volume_cap"  # too old: refused as before
