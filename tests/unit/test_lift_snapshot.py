"""The holdout lift travels in snapshots: a worker that resumes the learning topic at a snapshot's offsets
resumes the lift there too (it used to start empty and count rewards of decisions it never counted)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np

from bandits import make_policy
from contracts.decisions import LearningSample, user_bucket
from engine.lift import LiftTracker
from learning.state import LearnedState


def stream(seed: int = 4, n: int = 400) -> list[LearningSample]:
    """Exposures of both groups, each followed a little later by its click (30 % in both groups)."""
    rng = np.random.default_rng(seed)
    out: list[LearningSample] = []
    for i in range(n):
        mode = "holdout" if rng.random() < 0.3 else "exploit"
        out.append(LearningSample("exposure", f"d{i}", "a", [1.0], mode=mode))
        if rng.random() < 0.3:
            out.append(LearningSample("reward", f"d{i}", "a", [1.0], reward=1.0, mode=mode, reward_type="click"))
    return out


def test_a_tracker_resumed_from_its_snapshot_agrees_with_one_that_read_the_whole_stream() -> None:
    samples = stream()
    cut = len(samples) * 3 // 4
    whole, before = LiftTracker(), LiftTracker()
    for s in samples:
        whole.add(s)
    for s in samples[:cut]:
        before.add(s)
    policy = make_policy("linucb", 1, seed=0)
    restored = LearnedState.unpack(LearnedState(policy, None, before).pack()).lift
    assert restored is not None
    for s in samples[cut:]:
        restored.add(s)
    assert restored.result() == whole.result()


def test_a_snapshot_from_before_the_lift_was_kept_still_loads() -> None:
    policy = make_policy("linucb", 1, seed=0)
    old = pickle.dumps({"format": 1, "policy": policy.snapshot(), "models": None})
    state = LearnedState.unpack(old)
    assert state.lift is None and state.policy.snapshot() == policy.snapshot()
    assert LiftTracker.from_state({"treated": "junk"}).result()["treated_decisions"] == 0


def test_a_snapshot_from_before_the_lift_clustered_users_restarts_the_lift_and_says_so(caplog) -> None:
    # the six totals of the old state cannot be split into buckets of users: the lift restarts, logged
    policy = make_policy("linucb", 1, seed=0)
    old = pickle.dumps({"format": 1, "policy": policy.snapshot(), "models": None,
                        "lift": {"treated": [400, 12.0, 12.0], "control": [100, 2.0, 2.0]}})
    state = LearnedState.unpack(old)
    assert state.lift is not None and state.lift.result()["treated_decisions"] == 0
    assert "lift restarts" in caplog.text
    assert state.policy.snapshot() == policy.snapshot()


def test_the_buckets_round_trip_exactly_through_a_snapshot() -> None:
    tracker = LiftTracker()
    for s in stream():
        tracker.add(dataclasses.replace(s, user_bucket=user_bucket(s.decision_id)))
    restored = LearnedState.unpack(LearnedState(make_policy("linucb", 1, seed=0), None, tracker).pack()).lift
    assert restored is not None and restored.to_state() == tracker.to_state()
