"""Candidate configs: what each kind does, the train/evaluate split, and config errors."""

from __future__ import annotations

import numpy as np
import pytest

from bandits.linucb import LinUCB
from cadence.settings import DEFAULT_CATALOGUE
from ope.candidates import CandidateConfigError, Constant, GreedyModel, build_candidate, load_config, plan
from ope.diagnostics import OPEError
from ope.estimators import evaluate, on_policy
from ope.gate import decide_promotion
from ope.log import DecisionLog, LoggedDecision, join_samples
from policy.arbitration import arbitrate
from policy.catalogue import Action, Catalogue, Placement, load_catalogue
from policy.pipeline import PolicyContext, PolicyRequest, decide_action
from policy.state import UserPolicyState

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
    (uniform, bandit), held_out, note = plan(log, configs, load_catalogue(DEFAULT_CATALOGUE))
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
    with pytest.raises(CandidateConfigError, match="too short to split"):
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


# -- the bandit candidate is scored as the engine runs it: bandit, then arbitration -----------------------
COSTLY = Catalogue(
    {"p": Placement("p", "web")},
    {
        "a": Action("a", "web", ("p",), 1.0, cost=0.2),
        "b": Action("b", "web", ("p",), 1.0),
        "c": Action("c", "web", ("p",), 1.0),
    },
)
ABC = ["a", "b", "c"]
ENGINE_PARAMS = {"alpha": 0.05, "epsilon": 0.2, "epsilon_min": 0.2}


def engine_log(n: int, seed: int = 0) -> DecisionLog:
    """A learning log made by the engine's own decision path (policy.pipeline.decide_action) with a
    LinUCB bandit on COSTLY: click rates a = 0.6u, b = 0.2, c = 0.02 in context (1, u). The bandit's
    greedy action is a for u > 1/3, arbitration (ev = score − cost) shows a only for u > 2/3."""
    rng = np.random.default_rng(seed)
    bandit = LinUCB(dim=2, seed=1, **ENGINE_PARAMS)
    ctx = PolicyContext(COSTLY)
    ctr = {"a": lambda u: 0.6 * u, "b": lambda u: 0.2, "c": lambda u: 0.02}
    samples = []
    for i in range(n):
        x = np.array([1.0, rng.random()])
        out = decide_action(
            PolicyRequest(f"u{i}", "p", float(i)), UserPolicyState(), ctx, lambda e, x=x: bandit.select(x, e)
        )
        r = float(rng.random() < ctr[out.action](x[1]))
        bandit.update(x, out.action, r)
        samples.append(
            {"kind": "exposure", "decision_id": f"d{i}", "action": out.action, "x": x.tolist(),
             "probability": out.probability, "placement": "p", "ts": float(i), "mode": out.mode.value,
             "eligible": out.trace["eligible"]}
        )
        if r:
            samples.append({"kind": "reward", "decision_id": f"d{i}", "action": out.action, "x": x.tolist(),
                            "reward": r, "ts": i + 0.5})
    return join_samples(samples, COSTLY)


def test_bandit_candidate_probabilities_are_those_arbitration_logs():
    config = {"kind": "bandit", "policy": "linucb", "params": ENGINE_PARAMS}
    (cand,), _, _ = plan(engine_log(2000), [config], COSTLY)
    for u in (0.1, 0.5, 0.9):  # arbitration agrees with the bandit, overrides it, agrees again
        x = np.array([1.0, u])
        probs = cand.target_probs(x, ABC)
        assert set(probs) == set(ABC) and sum(probs.values()) == pytest.approx(1.0)
        counts = dict.fromkeys(ABC, 0)
        draws = 20000
        for _ in range(draws):  # the engine's path: the bandit draws, arbitration picks and logs p
            arb = arbitrate(cand.policy.select(x, ABC), ABC, COSTLY)
            assert probs[arb.action] == arb.probability  # exactly what the engine logs for that action
            counts[arb.action] += 1
        for a in ABC:  # and they are the frequencies the engine would show: 4 standard errors at most
            se = np.sqrt(max(probs[a] * (1 - probs[a]), 1e-12) / draws)
            assert abs(counts[a] / draws - probs[a]) <= 4 * se + 1e-12, (u, a, counts, probs)
    # where arbitration overrides the bandit (1/3 < u < 2/3) its greedy action a is shown only by the uniform
    # draw, which is never overridden: ε/K
    assert cand.target_probs(np.array([1.0, 0.5]), ABC)["a"] == pytest.approx(ENGINE_PARAMS["epsilon"] / 3)


def test_the_logging_bandit_as_a_candidate_is_not_promoted_over_itself():
    log = engine_log(24000)
    config = {"kind": "bandit", "policy": "linucb", "params": ENGINE_PARAMS}
    (cand,), held_out, note = plan(log, [config], COSTLY)
    assert "arbitration" in note
    current = on_policy(held_out)
    est = evaluate(held_out, cand, ("dr",))["dr"]
    # the same bandit and the same arbitration: it estimates the logged value, it does not beat it
    assert est.ci_low <= current.value <= est.ci_high, (est, current)
    assert not decide_promotion(est, current).promote


def test_bandit_candidate_needs_the_engines_catalogue():
    config = {"kind": "bandit", "policy": "linucb", "params": ENGINE_PARAMS}
    with pytest.raises(CandidateConfigError, match="catalogue"):
        plan(make_log(), [config])
    (cand,), _, _ = plan(engine_log(200), [config], COSTLY)
    with pytest.raises(OPEError, match=r"\['zz'\] are not in the catalogue"):
        cand.target_probs(np.array([1.0, 0.5]), ["a", "zz"])
