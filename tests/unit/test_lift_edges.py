"""Lift edge cases: no lift under 2 decisions a group, no interval that claims certainty, and a gauge that
does not keep stale values when the lift goes back to None."""

from __future__ import annotations

import math

from cadence.metrics import Metrics
from contracts.decisions import LearningSample
from engine.lift import LiftTracker


def exposure(did: str, mode: str, user: int) -> LearningSample:
    return LearningSample("exposure", did, "a", [1.0], mode=mode, user_bucket=user)


def click(did: str, mode: str, user: int) -> LearningSample:
    return LearningSample("reward", did, "a", [1.0], reward=1.0, mode=mode, reward_type="click", user_bucket=user)


def test_no_lift_while_a_group_has_fewer_than_2_decisions() -> None:
    tracker = LiftTracker()
    for i in range(100):
        tracker.add(exposure(f"t{i}", "exploit", i))
        tracker.add(click(f"t{i}", "exploit", i))
    tracker.add(exposure("c0", "holdout", 1000))
    result = tracker.result()
    # it used to report a lift of 1.0 (treated mean minus a control mean of 0 from one decision)
    assert (result["treated_decisions"], result["control_decisions"]) == (100, 1)
    assert result["lift"] is None and result["lift_ci95_low"] is None and result["relative_lift"] is None


def test_no_interval_while_a_group_has_no_reward_variation() -> None:
    tracker = LiftTracker()
    for i in range(200):  # every reward 0 in both groups: the old interval was [0, 0]
        tracker.add(exposure(f"t{i}", "exploit", i))
        tracker.add(exposure(f"c{i}", "holdout", 1000 + i))
    result = tracker.result()
    assert result["lift"] == 0.0 and (result["lift_ci95_low"], result["lift_ci95_high"]) == (None, None)
    for i in range(0, 200, 10):  # treated clicks, control still none: the control's rate is not known to be 0
        tracker.add(click(f"t{i}", "exploit", i))
    assert tracker.result()["lift_ci95_low"] is None
    for i in range(0, 200, 20):
        tracker.add(click(f"c{i}", "holdout", 1000 + i))
    result = tracker.result()
    assert result["lift_ci95_low"] is not None and result["lift_ci95_high"] is not None
    assert result["lift_ci95_low"] < result["lift"] == 0.05 < result["lift_ci95_high"]


def test_the_gauge_shows_nan_not_a_stale_value_when_the_lift_is_reset() -> None:
    metrics, tracker = Metrics(), LiftTracker()
    for i in range(50):
        tracker.add(exposure(f"t{i}", "exploit", i))
        tracker.add(exposure(f"c{i}", "holdout", 100 + i))
        if i % 5 == 0:
            tracker.add(click(f"t{i}", "exploit", i))
            tracker.add(click(f"c{i}", "holdout", 100 + i))
    metrics.publish_lift(tracker.result())
    assert metrics.registry.get_sample_value("cadence_holdout_lift", {"stat": "lift"}) == 0.0
    metrics.publish_lift(LiftTracker().result())  # a snapshot or a rollback started the lift afresh
    for stat in ("lift", "lift_ci95_low", "lift_ci95_high", "relative_lift"):
        assert math.isnan(metrics.registry.get_sample_value("cadence_holdout_lift", {"stat": stat}))
    assert metrics.registry.get_sample_value("cadence_holdout_lift", {"stat": "treated_decisions"}) == 0
