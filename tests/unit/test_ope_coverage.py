"""Do the intervals cover the truth? A small repeated-sampling study on simulator worlds (no Kafka).

The full study with more seeds and larger logs is load_tests/ope_coverage.py; this one is small enough
for the unit suite, so its tolerances are wider: 32 intervals per estimator, each with 95 % nominal
coverage, miss more than 6 times with probability < 2 %; a real defect (biased estimates, standard
errors off by a factor of 2) drops coverage far lower.
"""

from __future__ import annotations

import numpy as np
import pytest

from cadence.settings import DEFAULT_CATALOGUE
from ope.candidates import Uniform, build_candidate
from ope.log import join_samples
from ope.study import DEFAULT_CANDIDATES, run_study
from ope.synthetic import SyntheticLogs
from policy.catalogue import load_catalogue
from simulator.world import Context, World


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(DEFAULT_CATALOGUE)


@pytest.fixture(scope="module")
def study(catalogue):
    return run_study(catalogue, seeds=range(101, 109), n=4000, candidates=DEFAULT_CANDIDATES, n_users=300)


def test_snips_and_dr_intervals_cover_the_true_value(study):
    by = study["by_estimator"]
    assert by["snips"]["trials"] == by["dr"]["trials"] == 32
    assert by["snips"]["coverage"] >= 26 / 32, by["snips"]
    assert by["dr"]["coverage"] >= 26 / 32, by["dr"]


def test_estimates_are_close_to_the_truth_on_average(study):
    for name, s in study["by_estimator"].items():
        # the average error over 32 trials is well inside one interval half-width if there is no bias
        assert abs(s["mean_error"]) < 0.25 * s["mean_ci_width"], (name, s)


def test_dr_is_not_less_accurate_than_ips(study):
    # paired over the same logs; sparse click/conversion rewards leave a reward model little to explain,
    # so DR's gain is small (see dr_oracle_model), but it must not lose accuracy beyond noise
    pairs = study["dr_vs_ips"]
    assert pairs["pairs"] == 32
    assert pairs["mean_abs_error_difference"] <= 2 * pairs["difference_std_error"], pairs


def test_synthetic_log_has_exact_probabilities_and_truth(catalogue):
    world = World(catalogue, n_users=300, seed=5)
    synthetic = SyntheticLogs(world, epsilon=0.1, seed=5)
    assert sum(c.prob for c in synthetic.cells) == pytest.approx(1.0)
    for cell in synthetic.cells[:50]:
        assert cell.logging.sum() == pytest.approx(1.0)
        assert cell.logging.min() >= 0.1 / len(cell.eligible) - 1e-12
        assert cell.truth[0] == world.expected_reward(
            cell.eligible[0], Context(cell.segment, cell.device, cell.hour)
        )
    # the uniform policy's exact value is the world's own random-policy reward averaged over contexts
    by_cell = sum(
        c.prob * world.random_reward(c.placement, Context(c.segment, c.device, c.hour))
        for c in synthetic.cells
    )
    assert synthetic.true_value(Uniform()) == pytest.approx(by_cell)
    # and the sampled log's own-policy mean reward agrees with the exact logging value
    log = join_samples(synthetic.sample(20000, seed=5), catalogue)
    rewards = log.rewards
    assert abs(rewards.mean() - synthetic.logging_value()) < 3 * rewards.std() / np.sqrt(len(rewards))
    # every logged probability is the logging policy's exact probability in that decision's cell
    cell_of = {(tuple(c.x), c.placement): c for c in synthetic.cells}
    for d in log.decisions[:500]:
        cell = cell_of[(tuple(d.x), d.placement)]
        assert d.probability == cell.logging[cell.eligible.index(d.action)]


def test_context_vectors_are_those_the_engine_builds(catalogue):
    synthetic = SyntheticLogs(World(catalogue, n_users=300, seed=5), seed=5)
    cell = next(c for c in synthetic.cells if c.weekend and c.hour == 6 and c.device == "mobile")
    assert cell.x[0] == 1.0
    assert cell.x[1] == 1.0  # device_mobile
    assert cell.x[8] == pytest.approx(1.0) and cell.x[9] == pytest.approx(0.0, abs=1e-12)  # sin/cos of 6 h
    assert cell.x[10] == 1.0  # weekend
    assert not cell.x[11:].any()  # no online state yet
    assert build_candidate({"kind": "uniform"}).target_probs(cell.x, cell.eligible)
