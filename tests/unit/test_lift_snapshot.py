"""The holdout lift travels in snapshots: a worker that resumes the learning topic at a snapshot's offsets
resumes the lift there too (it used to start empty and count rewards of decisions it never counted)."""

from __future__ import annotations

import pickle

import numpy as np

from bandits import make_policy
from contracts.decisions import LearningSample
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
