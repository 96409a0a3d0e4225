"""Candidate configs: what each kind does, the train/evaluate split, and config errors."""

from __future__ import annotations

import numpy as np
import pytest

from ope.candidates import CandidateConfigError, Constant, GreedyModel, build_candidate, load_config, plan
from ope.log import DecisionLog, LoggedDecision

WEB = ("offer_10pct", "offer_bundle", "offer_free_shipping")


def make_log(n: int = 400, seed: int = 0) -> DecisionLog:
    """Reward 1 for offer_bundle when x[1] > 0, for offer_10pct otherwise; uniform logging."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = np.array([1.0, rng.choice([-1.0, 1.0])])
        a = WEB[int(rng.integers(3))]
        r = float((a == "offer_bundle") == (x[1] > 0) and a != "offer_free_shipping")
        out.append(LoggedDecision(f"d{i}", x, a, 1 / 3, r, "home_hero", WEB, float(i)))
    return DecisionLog(out)


def test_constant_follows_its_preference_order_and_falls_back_to_uniform():
    c = Constant(["offer_bundle", "email_digest"])
    assert c.target_probs(np.ones(2), WEB) == {"offer_bundle": 1.0}
    assert c.target_probs(np.ones(2), ("email_digest", "email_winback")) == {"email_digest": 1.0}
    assert c.target_probs(np.ones(2), ("creative_a", "creative_b")) == {"creative_a": 0.5, "creative_b": 0.5}


def test_greedy_model_learns_the_better_action_per_context_from_the_first_half():
    cand = build_candidate({"kind": "greedy_model", "epsilon": 0.3}, make_log())
    assert isinstance(cand, GreedyModel)
    up = cand.target_probs(np.array([1.0, 1.0]), WEB)
    down = cand.target_probs(np.array([1.0, -1.0]), WEB)
    assert max(up, key=up.get) == "offer_bundle" and max(down, key=down.get) == "offer_10pct"
    assert sum(up.values()) == pytest.approx(1.0)
    assert min(up.values()) == pytest.approx(0.1)  # ε/K


def test_bandit_is_trained_on_the_first_half_only_and_every_candidate_is_evaluated_on_the_second():
    log = make_log()
    configs = [{"kind": "uniform"}, {"kind": "bandit", "policy": "linucb", "params": {"epsilon": 0.1}}]
    (uniform, bandit), held_out, note = plan(log, configs)
    first_half = log.decisions[: len(log) // 2]
    assert held_out.decisions == log.decisions[len(log) // 2 :]
    # one exposure per decision plus one reward step per rewarded one: exactly the first half
    assert bandit.policy.version == len(first_half) + sum(d.reward != 0 for d in first_half)
    assert "first 200 decisions" in note and "later 200" in note
    probs = bandit.target_probs(np.array([1.0, 1.0]), WEB)
    assert sum(probs.values()) == pytest.approx(1.0) and set(probs) == set(WEB)


def test_without_learning_candidates_the_whole_log_is_evaluated():
    log = make_log()
    _, held_out, note = plan(log, [{"kind": "uniform"}, {"kind": "constant", "action": "offer_bundle"}])
    assert len(held_out) == len(log)
    assert "all 400 decisions" in note


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, r"needs field 'kind', one of \['bandit', 'constant', 'greedy_model', 'uniform'\]"),
        ({"kind": "uniform", "colour": "red"}, r"unknown fields \['colour'\]"),
        ({"kind": "constant"}, r"field 'action' must be an action id or a list"),
        ({"kind": "bandit", "policy": "nope"}, r"field 'policy' must be one of"),
        ({"kind": "bandit", "policy": "linucb", "params": {"alpha": -1}}, r"rejects params"),
        (
            {"kind": "bandit", "policy": "linucb", "train_on": "all"},
            r"'train_on' must be one of \['first_half'\]"
            r".*memorised",
        ),
        ({"kind": "greedy_model", "epsilon": 2}, r"'epsilon' must be in \[0, 1\]"),
    ],
)
def test_bad_configs_name_the_field_to_fix(config, message):
    with pytest.raises(CandidateConfigError, match=message):
        build_candidate(config, make_log())


def test_learning_candidate_without_a_training_log_is_refused():
    with pytest.raises(CandidateConfigError, match="needs a training log"):
        build_candidate({"kind": "greedy_model"}, DecisionLog([]))


def test_load_config_reads_files_and_inline_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"kind": "constant", "action": "offer_bundle"}')
    assert load_config(str(path))["action"] == "offer_bundle"
    assert load_config('{"kind": "uniform"}') == {"kind": "uniform"}
    with pytest.raises(CandidateConfigError, match="no such candidate config file"):
        load_config(str(tmp_path / "missing.json"))
    with pytest.raises(CandidateConfigError, match="must be a JSON object"):
        load_config(_write(tmp_path, "[1]"))


def _write(tmp_path, text: str) -> str:
    p = tmp_path / "x.json"
    p.write_text(text)
    return str(p)
