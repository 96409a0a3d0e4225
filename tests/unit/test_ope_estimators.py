"""IPS, SNIPS and DR on small hand-made logs: the formulas, clipping, and every failure case."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest

from ope.candidates import Constant, Uniform
from ope.estimators import CI_METHOD, OPEError, evaluate, on_policy
from ope.log import DecisionLog, LoggedDecision

ACTIONS = ("a", "b", "c")


def make_log(
    n: int = 600,
    seed: int = 0,
    probs: Sequence[float] = (0.5, 0.3, 0.2),
    means: Sequence[float] = (0.2, 0.5, 0.8),
) -> DecisionLog:
    """Context-free log: action k drawn with probs[k], Bernoulli reward with mean means[k]."""
    rng = np.random.default_rng(seed)
    decisions = []
    for i in range(n):
        k = int(rng.choice(3, p=probs))
        decisions.append(
            LoggedDecision(
                f"d{i}",
                np.array([1.0, rng.normal()]),
                ACTIONS[k],
                float(probs[k]),
                float(rng.random() < means[k]),
                "slot",
                ACTIONS,
                float(i),
            )
        )
    return DecisionLog(decisions)


def with_changes(log: DecisionLog, rows: Sequence[int], **changes) -> DecisionLog:
    import dataclasses

    out = list(log.decisions)
    for i in rows:
        out[i] = dataclasses.replace(out[i], **changes)
    return DecisionLog(out)


class Fixed:
    """A candidate given as explicit probabilities (possibly wrong ones, for the error cases)."""

    def __init__(self, probs: dict[str, float], name: str = "fixed") -> None:
        self.probs = probs
        self.name = name

    def target_probs(self, x, eligible):
        return dict(self.probs)


def test_ips_and_snips_match_the_formulas_computed_by_hand():
    log = make_log()
    est = evaluate(log, Constant(["c"]), estimators=("ips", "snips"))
    terms = [(1 / d.probability if d.action == "c" else 0.0, d.reward) for d in log]
    ips_by_hand = sum(w * r for w, r in terms) / len(terms)
    snips_by_hand = sum(w * r for w, r in terms) / sum(w for w, _ in terms)
    assert est["ips"].value == pytest.approx(ips_by_hand)
    assert est["snips"].value == pytest.approx(snips_by_hand)
    w = np.array([t[0] for t in terms])
    assert est["ips"].ess == pytest.approx(w.sum() ** 2 / (w**2).sum())
    for e in est.values():
        assert e.ci_low < e.value < e.ci_high
        assert e.ci_high - e.value == pytest.approx(1.959964 * e.std_error, rel=1e-5)
        assert e.ci_method == CI_METHOD and e.n == len(log) and e.clip is None


def test_candidate_equal_to_logging_policy_gives_the_on_policy_mean():
    log = make_log()
    est = evaluate(log, Fixed({"a": 0.5, "b": 0.3, "c": 0.2}))
    mean = on_policy(log).value
    assert est["ips"].value == pytest.approx(mean)
    assert est["snips"].value == pytest.approx(mean)
    assert est["ips"].ess == pytest.approx(len(log))


def test_estimates_are_unbiased_over_many_logs():
    truth = 0.8  # constant "c"
    values = {"ips": [], "snips": [], "dr": []}
    for seed in range(40):
        for name, e in evaluate(make_log(400, seed), Constant(["c"]), seed=seed).items():
            values[name].append(e.value)
    for name, v in values.items():
        # 40 logs: the mean's standard error is about 0.01; 0.035 is 3.5 of those
        assert abs(np.mean(v) - truth) < 0.035, (name, np.mean(v))


def test_dr_corrects_a_reward_model_with_its_residuals():
    # rewards depend on the context; DR's model sees it, IPS does not: DR's variance should be lower
    rng = np.random.default_rng(3)
    decisions = []
    for i in range(3000):
        x = np.array([1.0, rng.normal()])
        k = int(rng.choice(3, p=(0.5, 0.3, 0.2)))
        r = 1.0 + 2.0 * x[1] * (k + 1) + rng.normal(0, 0.1)
        decisions.append(
            LoggedDecision(f"d{i}", x, ACTIONS[k], (0.5, 0.3, 0.2)[k], r, "s", ACTIONS, float(i))
        )
    est = evaluate(DecisionLog(decisions), Constant(["c"]))
    assert est["dr"].std_error < 0.5 * est["ips"].std_error
    assert abs(est["dr"].value - 1.0) < 3 * est["dr"].std_error  # E[x1] = 0, so the truth is 1.0


def test_clipping_caps_weights_and_says_so():
    log = make_log(probs=(0.9, 0.08, 0.02))
    est = evaluate(log, Constant(["c"]), clip=10.0)
    unclipped = evaluate(log, Constant(["c"]))
    assert est["ips"].n_clipped == sum(d.action == "c" for d in log)
    assert est["ips"].value < unclipped["ips"].value
    codes = {w.code for w in est["ips"].warnings}
    assert "clipped" in codes
    assert "tiny_probability" not in codes  # 0.02 is not below the 0.01 default
    assert "tiny_probability" in {w.code for w in evaluate(log, Constant(["c"]), tiny=0.05)["ips"].warnings}


# -- failure cases: (what is wrong with the log or candidate, error or warning code, message fragment) ---
def empty(log):
    return DecisionLog([])


def all_missing(log):
    return with_changes(log, range(len(log)), probability=None)


def all_zero(log):
    return with_changes(log, range(len(log)), probability=0.0)


@pytest.mark.parametrize(
    ("broken", "candidate", "kwargs", "message"),
    [
        (empty, Uniform(), {}, r"the decision log is empty: .*nothing to evaluate"),
        (
            all_missing,
            Uniform(),
            {},
            r"none of the 600 logged decisions has a usable selection probability "
            r"\(600 missing",
        ),
        (all_zero, Uniform(), {}, r"\(0 missing, 600 zero or out of range\)"),
        (None, Fixed({"a": 0.5, "b": 0.6}), {}, r"not a distribution.*sum to 1"),
        (None, Fixed({"a": 1.0, "z": 0.0}), {}, r"ineligible actions \['z'\]"),
        (None, Uniform(), {"clip": 0.0}, r"clip must be a positive maximum importance weight"),
        (None, Uniform(), {"estimators": ("ips", "magic")}, r"unknown estimators \['magic'\]"),
    ],
)
def test_errors_say_what_was_wrong_and_what_to_do(broken, candidate, kwargs, message):
    log = make_log()
    if broken is not None:
        log = broken(log)
    with pytest.raises(OPEError, match=message):
        evaluate(log, candidate, **kwargs)


def never_took_c(log):
    return DecisionLog([d for d in log if d.action != "c"])


@pytest.mark.parametrize(
    ("broken", "candidate", "code", "message"),
    [
        (
            lambda log: with_changes(log, range(5), probability=None),
            Uniform(),
            "missing_probability",
            "5 of 600 logged decisions carry no selection probability and were left out",
        ),
        (
            lambda log: with_changes(log, [0, 1], probability=0.0),
            Uniform(),
            "zero_probability",
            "2 of 600 logged decisions have a selection probability of 0",
        ),
        (
            lambda log: with_changes(log, [0], probability=1.5),
            Uniform(),
            "zero_probability",
            "outside (0, 1]",
        ),
        (
            lambda log: with_changes(log, [3], probability=0.001),
            Uniform(),
            "tiny_probability",
            "carry 35% of the candidate's importance weight (their importance weights reach 333)",
        ),
        (
            never_took_c,
            Uniform(),
            "support_not_covered",
            "33.3% of its probability on actions the log gives no evidence for (c on slot): never taken",
        ),
        (
            lambda log: with_changes(log, range(len(log)), reward=0.0),
            Uniform(),
            "no_rewards",
            "no decision in the log earned a reward",
        ),
        (lambda log: DecisionLog(log.decisions[:40]), Uniform(), "low_effective_sample_size", "only about"),
    ],
)
def test_warnings_name_the_problem_in_the_result(broken, candidate, code, message):
    est = evaluate(broken(make_log()), candidate)
    for e in est.values():
        found = {w.code: w.message for w in e.warnings}
        assert code in found, found
        assert message in found[code]
        assert str(next(w for w in e.warnings if w.code == code)) == found[code]
        assert math.isfinite(e.value)


def test_decisions_with_unusable_probabilities_are_left_out_of_n():
    log = with_changes(make_log(), [0, 1, 2], probability=None)
    assert evaluate(log, Uniform())["ips"].n == len(log) - 3


def test_candidate_that_never_agrees_with_the_log_leaves_snips_undefined():
    log = never_took_c(make_log())
    est = evaluate(log, Constant(["c"]))
    assert math.isnan(est["snips"].value)
    assert "no_overlap" in {w.code for w in est["snips"].warnings}
    assert est["ips"].value == 0.0


def test_estimate_serialises_with_its_warnings():
    d = evaluate(never_took_c(make_log()), Uniform())["dr"].to_dict()
    assert d["estimator"] == "dr" and d["candidate"] == "uniform"
    assert {"code", "message"} <= set(d["warnings"][0])


def test_on_policy_averages_the_rows_the_candidates_are_weighted_on():
    # rows 0..99 carry no probability and only zero rewards: the estimators leave them out, so must the
    # logging policy's value the gate compares them with
    log = with_changes(make_log(), range(100), probability=None, reward=0.0)
    usable = [d.reward for d in log.decisions[100:]]
    logged = on_policy(log)
    assert logged.n == 500 and logged.value == pytest.approx(np.mean(usable))
    same = evaluate(log, Fixed({"a": 0.5, "b": 0.3, "c": 0.2}), estimators=("ips",))["ips"]
    assert same.n == logged.n and same.value == pytest.approx(logged.value)


class MostlyC:
    """The best action c with a 1 % floor on the others."""

    name = "mostly-c"

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]:
        return {a: (0.98 if a == "c" else 0.01) for a in eligible}


def test_a_few_overrides_among_many_draws_do_not_block_a_candidate_but_many_do() -> None:
    # one kept arbitration override (p = 1) in 2,000 decisions used to block every candidate that explores
    from dataclasses import replace

    from ope.gate import decide_promotion

    log = make_log(n=2000)
    rows = list(log.decisions)

    def gate(overrides: int) -> tuple[bool, list[str]]:
        changed = DecisionLog([replace(d, probability=1.0) if i < overrides else d for i, d in enumerate(rows)])
        verdict = decide_promotion(evaluate(changed, MostlyC(), ("dr",))["dr"], on_policy(changed))
        return verdict.promote, [w["code"] for w in verdict.warnings]

    assert gate(0) == (True, [])
    assert gate(1)[0]  # 0.002 % of its probability on an action an override gave probability 0
    promoted, codes = gate(1000)  # half the log: 1 % of its probability is not covered
    assert not promoted and "support_not_covered" in codes


def test_a_log_too_short_for_dr_says_how_many_decisions_it_needs():
    one = DecisionLog(make_log(n=5).decisions[:1])
    with pytest.raises(OPEError, match=r"too short for the dr estimator.*at least 2 decisions.*has 1"):
        evaluate(one, Uniform())
    assert set(evaluate(one, Uniform(), ("ips", "snips"))) == {"ips", "snips"}  # the others need only one


def engine_floor_log(n: int = 6000, rare_every: int = 300) -> DecisionLog:
    """The engine's decayed floor: ε_min = 0.005 over 3 actions, so the two actions the bandit does not
    prefer are logged with 0.005/3 ≈ 0.0017 each, and shown about that often (one decision in 300 here)."""
    floor = 0.005 / 3
    rng = np.random.default_rng(3)
    decisions = []
    for i in range(n):
        rare = i % rare_every == 0
        action, p = (("b", floor) if rare else ("a", 1 - 2 * floor))
        decisions.append(
            LoggedDecision(f"d{i}", np.array([1.0, rng.normal()]), action, p, float(rng.random() < 0.3), "s",
                           ACTIONS, float(i))
        )
    return DecisionLog(decisions)


def test_tiny_probabilities_warn_only_when_they_carry_the_estimate():
    log = engine_floor_log()
    assert any(p < 0.01 for p in log.probabilities)
    # a candidate close to the logging policy barely weighs the rare draws: the engine's own floor is no threat
    close = Fixed({"a": 0.99, "b": 0.005, "c": 0.005})
    assert "tiny_probability" not in {w.code for w in evaluate(log, close, ("ips",))["ips"].warnings}
    assert "tiny_probability" not in {w.code for w in evaluate(log, Constant(["a"]), ("ips",))["ips"].warnings}
    # uniform puts 1/3 on b: its 20 draws weigh 200 each, two thirds of all the weight
    warned = [w for w in evaluate(log, Uniform(), ("ips",))["ips"].warnings if w.code == "tiny_probability"]
    assert len(warned) == 1 and "20 of 6000 logged decisions" in warned[0].message
    assert "67% of the candidate's importance weight" in warned[0].message
