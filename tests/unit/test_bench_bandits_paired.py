"""The bandit benchmark's paired differences: the reference minus each contender, seed by seed."""

import math

import pytest

from load_tests.bench_bandits import REFERENCE, paired


def _report(seed: int, rows: dict[str, tuple[float, float]]) -> dict:
    results = []
    for label, (ratio, reward) in rows.items():
        library, name = label.split(": ", 1)
        results.append({"library": library, "name": name, "expected_ratio": ratio, "reward": reward})
    return {"config": {"seed": seed}, "results": results}


def test_differences_are_paired_by_seed_over_the_seeds_both_ran() -> None:
    peer = "river: LinUCBDisjoint"
    reports = [
        _report(1, {REFERENCE: (0.92, 7500.0), peer: (0.91, 7480.0)}),
        _report(2, {REFERENCE: (0.90, 7300.0), peer: (0.91, 7310.0)}),
        _report(3, {REFERENCE: (0.95, 7700.0), peer: (0.92, 7650.0)}),
        _report(4, {REFERENCE: (0.99, 7900.0)}),  # the peer did not run this seed: left out, not paired
        _report(5, {REFERENCE: (0.90, 7000.0), peer: (0.0, 0.0)}),
    ]
    reports[-1]["results"][1]["skipped"] = "import failed"  # a skipped row is no result: seed 5 is not paired
    (row,) = paired(reports)
    diffs = [0.01, -0.01, 0.03]  # seeds 1-3 only
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert row["contender"] == peer and row["seeds"] == 3
    assert row["expected_ratio_diff"] == pytest.approx(mean)
    assert row["expected_ratio_diff_se"] == pytest.approx(sd / math.sqrt(3))
    assert row["reward_diff"] == pytest.approx((20.0 - 10.0 + 50.0) / 3)
    assert row["reference_ahead"] == 2


def test_nothing_to_pair_without_the_reference_or_with_one_seed() -> None:
    peer = "river: LinUCBDisjoint"
    assert paired([_report(1, {peer: (0.9, 1.0)}), _report(2, {peer: (0.9, 1.0)})]) == []
    assert paired([_report(1, {REFERENCE: (0.9, 1.0), peer: (0.8, 1.0)})]) == []


def test_reports_of_other_settings_or_a_seed_twice_are_refused() -> None:
    one, two = _report(1, {REFERENCE: (0.9, 1.0)}), _report(2, {REFERENCE: (0.9, 1.0)})
    one["config"]["steps"], two["config"]["steps"] = 20000, 5000
    with pytest.raises(ValueError, match="different settings"):
        paired([one, two])
    with pytest.raises(ValueError, match="a seed is given twice"):
        paired([_report(1, {REFERENCE: (0.9, 1.0)}), _report(1, {REFERENCE: (0.8, 1.0)})])
