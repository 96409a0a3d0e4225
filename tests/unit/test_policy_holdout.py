"""Holdout assignment (stable, hashed) and the lift estimator (Welch difference of means)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from policy.holdout import HoldoutConfig, LiftEstimator, bucket

USERS = [f"user-{i}" for i in range(20000)]


@pytest.mark.parametrize("share", [0.0, 0.05, 0.1, 0.5, 1.0])
def test_control_share_matches_the_setting(share: float) -> None:
    config = HoldoutConfig(share, "s1")
    got = sum(config.in_control(u) for u in USERS) / len(USERS)
    # binomial standard deviation at n=20000 is at most 0.0035; 4 of them
    assert abs(got - share) <= 0.014


def test_assignment_is_stable_and_depends_on_salt_and_scope() -> None:
    a = HoldoutConfig(0.2, "s1")
    again = [HoldoutConfig(0.2, "s1").in_control(u) for u in USERS[:2000]]
    assert [a.in_control(u) for u in USERS[:2000]] == again
    base = {u for u in USERS if a.in_control(u)}
    for other in (HoldoutConfig(0.2, "s2"), HoldoutConfig(0.2, "s1", scope="campaign-7")):
        overlap = len(base & {u for u in USERS if other.in_control(u)}) / len(USERS)
        assert abs(overlap - 0.2 * 0.2) < 0.01  # independent draws overlap by share²


def test_placements_limit_the_holdout() -> None:
    config = HoldoutConfig(1.0, "s", placements=("home_hero",))
    assert config.in_control("u", "home_hero")
    assert not config.in_control("u", "newsletter")


def test_assignment_does_not_depend_on_the_process_hash_seed() -> None:
    code = "from policy.holdout import bucket; print(repr(bucket('salt', 'global', 'user-42')))"
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout.strip()
        )
    assert outs == {repr(bucket("salt", "global", "user-42"))}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"share": 1.5, "salt": "s"}, "share must be between 0 and 1"), ({"share": 0.1, "salt": ""}, "salt")],
)
def test_bad_holdout(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HoldoutConfig(**kwargs)


# -- lift ---------------------------------------------------------------------------------------------
def test_lift_matches_the_textbook_formula() -> None:
    rng = np.random.default_rng(3)
    treated, control = rng.exponential(1.2, 700), rng.exponential(1.0, 400)
    est = LiftEstimator()
    for r in treated:
        est.add(True, r)
    for r in control:
        est.add(False, r)
    res = est.result()
    se = np.sqrt(treated.var(ddof=1) / 700 + control.var(ddof=1) / 400)
    assert res.diff == pytest.approx(treated.mean() - control.mean(), rel=1e-9)
    assert res.std_error == pytest.approx(se, rel=1e-9)
    assert (res.ci_low, res.ci_high) == pytest.approx(
        (res.diff - 1.959964 * se, res.diff + 1.959964 * se), rel=1e-6
    )
    assert res.relative == pytest.approx(res.diff / control.mean())
    assert (res.n_treated, res.n_control) == (700, 400)


def test_interval_covers_the_true_lift_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(11)
    reps, n, covered = 400, 600, 0
    for _ in range(reps):
        est = LiftEstimator(0.95)
        for r in rng.random(n) < 0.12:
            est.add(True, float(r))
        for r in rng.random(n) < 0.10:
            est.add(False, float(r))
        res = est.result()
        covered += res.ci_low <= 0.02 <= res.ci_high
    # 400 replications: binomial sd of the coverage ≈ 0.011; allow about 3 of them
    assert 0.915 <= covered / reps <= 0.985


def test_merge_equals_one_estimator_and_round_trips() -> None:
    rng = np.random.default_rng(5)
    data = [(bool(t), float(r)) for t, r in zip(rng.random(500) < 0.5, rng.normal(1, 2, 500), strict=True)]
    whole, left, right = LiftEstimator(), LiftEstimator(), LiftEstimator()
    for i, (t, r) in enumerate(data):
        whole.add(t, r)
        (left if i % 3 else right).add(t, r)
    left.merge(right)
    a, b = whole.result(), LiftEstimator.from_dict(left.to_dict()).result()
    assert (a.diff, a.std_error) == pytest.approx((b.diff, b.std_error), rel=1e-9)


def test_lift_needs_two_decisions_per_group_and_finite_rewards() -> None:
    est = LiftEstimator()
    est.add(True, 1.0)
    est.add(True, 0.0)
    est.add(False, 1.0)
    with pytest.raises(ValueError, match="at least 2 decisions per group, have 2 treated and 1 control"):
        est.result()
    with pytest.raises(ValueError, match="reward must be finite"):
        est.add(False, float("nan"))
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        LiftEstimator(1.0)
