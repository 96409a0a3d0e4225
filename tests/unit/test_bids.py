"""Bid signals: bounded multipliers relative to the placement's typical expected value."""

from __future__ import annotations

import pytest

from contracts.decisions import Decision, Mode
from engine.bids import BidSignaller


def decision(action: str, top: list[tuple[str, float]], mode: Mode = Mode.EXPLOIT) -> Decision:
    trace = {"top": [{"action": a, "ev": ev} for a, ev in top]} if top else {"fallback": "kill_switch"}
    return Decision("d", "r", "u", 0.0, "ad", "display_slot", action, 1.0, mode, "linucb", 1, trace)


def test_multiplier_is_relative_to_the_running_reference_and_bounded() -> None:
    bids = BidSignaller(low=0.5, high=2.0, decay=0.01, warmup=10)
    for _ in range(200):
        bids.signal(decision("c1", [("c1", 4.0)]))
    high = bids.signal(decision("c1", [("c1", 6.0)]))
    low = bids.signal(decision("c1", [("c1", 1.0)]))
    huge = bids.signal(decision("c1", [("c1", 100.0)]))
    assert high["bid_multiplier"] == pytest.approx(1.5, rel=0.02)
    assert low["bid_multiplier"] == 0.5 and huge["bid_multiplier"] == 2.0
    assert set(high) >= {"decision_id", "user_id", "placement", "creative_id", "ts", "expected_value"}


def test_a_sticky_decision_uses_the_value_of_the_creative_actually_shown() -> None:
    bids = BidSignaller(warmup=0)
    bids.signal(decision("c1", [("c1", 4.0)]))
    kept = bids.signal(decision("c2", [("c1", 8.0), ("c2", 4.0)], Mode.STICKY))
    assert kept["creative_id"] == "c2" and kept["expected_value"] == 4.0


def test_no_signal_without_a_ranking_or_before_warm_up() -> None:
    bids = BidSignaller(warmup=5)
    assert bids.signal(decision("none", [], Mode.FALLBACK)) is None
    assert [bids.signal(decision("c1", [("c1", 1.0)])) for _ in range(5)] == [None] * 5
    assert bids.signal(decision("c1", [("c1", 1.0)])) is not None


def test_an_infinite_expected_value_gets_no_signal_and_leaves_the_reference_alone() -> None:
    # one infinite value (a huge boost) used to make the running reference infinite: every later bid at the floor
    bids = BidSignaller(warmup=0)
    bids.signal(decision("c1", [("c1", 4.0)]))
    assert bids.signal(decision("c1", [("c1", float("inf"))])) is None
    after = bids.signal(decision("c1", [("c1", 4.0)]))
    assert after is not None and (after["bid_multiplier"], after["reference_value"]) == (1.0, 4.0)
