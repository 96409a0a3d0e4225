"""Arbitration under costs and boosts keeps every eligible action's probability above the exploration floor,
logs exactly the probability each action is shown with, and so keeps off-policy evaluation honest."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bandits.egreedy import EpsilonGreedy
from bandits.lints import LinTS
from bandits.linucb import LinUCB
from cadence.settings import DEFAULT_CATALOGUE
from ope.candidates import Constant
from ope.estimators import evaluate, on_policy
from ope.gate import decide_promotion
from ope.log import DecisionLog, LoggedDecision, join_samples
from policy.arbitration import arbitrate
from policy.catalogue import Action, Catalogue, Placement, load_catalogue
from policy.levers import Lever, LeverKind
from policy.pipeline import PolicyContext, PolicyRequest, decide_action
from policy.state import UserPolicyState


class FixedU:
    """A stand-in generator: ``random()`` gives ``u`` (which branch and pick the bandit takes), normal draws
    come from a seeded generator (the same ones for every ``u``, so LinTS's Thompson draws are fixed)."""

    def __init__(self, u: float, seed: int) -> None:
        self.u = u
        self._g = np.random.default_rng(seed)

    def random(self) -> float:
        return self.u

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._g.standard_normal(shape)


def branches(eps: float, k: int, n: int) -> list[tuple[float, float]]:
    """(u, probability) of each way the bandit's one uniform u can fall: the k uniform picks (u < ε) and the
    n equally likely greedy-branch outcomes (tied best scores, or LinTS's draws)."""
    out = [((i + 0.5) / k * eps, eps / k) for i in range(k)]
    return out + [(eps + (j + 0.5) / n * (1.0 - eps), (1.0 - eps) / n) for j in range(n)]


def shown_distribution(policy, x, actions, cat, boosts, eps, n):
    """The exact distribution of the action shown (summing over every outcome of the bandit's draw) and the
    probability logged for each action shown."""
    truth = dict.fromkeys(actions, 0.0)
    logged: dict[str, float] = {}
    for u, w in branches(eps, len(actions), n):
        policy._rng = FixedU(u, 5)
        arb = arbitrate(policy.select(x, actions), actions, cat, boosts)
        truth[arb.action] += w
        assert logged.setdefault(arb.action, arb.probability) == pytest.approx(arb.probability, abs=1e-12)
    return truth, logged


ACTIONS = ["a", "b", "c", "d", "e"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["egreedy", "linucb", "lints"]),
    k=st.integers(2, 5),
    eps=st.sampled_from([0.02, 0.1, 0.3]),
    rates=st.lists(st.sampled_from([0.0, 0.1, 0.3, 0.5]), min_size=5, max_size=5),
    trained=st.lists(st.booleans(), min_size=5, max_size=5),
    costs=st.lists(st.sampled_from([0.0, 0.0, 0.5, 3.0, 10.0]), min_size=5, max_size=5),
    boosts=st.lists(st.sampled_from([1.0, 1.0, 0.1, 2.0, 10.0]), min_size=5, max_size=5),
)
def test_every_eligible_action_is_shown_with_at_least_the_floor_and_logged_exactly(
    kind, k, eps, rates, trained, costs, boosts
) -> None:
    actions = ACTIONS[:k]
    cat = Catalogue({"p": Placement("p", "web")},
                    {a: Action(a, "web", ("p",), 10.0, costs[i]) for i, a in enumerate(ACTIONS)})
    if kind == "egreedy":
        policy, n = EpsilonGreedy(2, epsilon=eps, seed=1), None
    elif kind == "linucb":
        policy, n = LinUCB(2, epsilon=eps, epsilon_min=eps, seed=1), None  # a constant floor: ε known here
    else:
        policy, n = LinTS(2, epsilon=eps, n_draws=16, seed=1), 16
    x = np.array([1.0, 0.5])
    for i, a in enumerate(actions):  # untrained actions tie (cold start), trained ones differ
        if trained[i]:
            for j in range(20):
                policy.update(x, a, float(j < 20 * rates[i]))
    if n is None:  # greedy_pick: the greedy branch splits over the actions tied on the best score
        scores = policy.select(x, actions).scores
        n = list(scores.values()).count(max(scores.values()))
    boost = {a: boosts[i] for i, a in enumerate(actions) if boosts[i] != 1.0}
    truth, logged = shown_distribution(policy, x, actions, cat, boost, eps, n)
    assert sum(truth.values()) == pytest.approx(1.0)
    for a in actions:  # every eligible action can be shown, with at least the uniform share ε/K
        assert truth[a] >= eps / k - 1e-12, (a, truth)
    for a, p in logged.items():  # and the logged probability is the true one
        assert p == pytest.approx(truth[a], abs=1e-9), (a, truth, logged)


T = 1_767_571_200.0 + 12 * 3600  # noon UTC, outside the email quiet hours


def boosted_newsletter_log(n: int = 20000):
    """The reviewer's repro (ope_boost_gate.py): a boost lever (×10 on email_digest for segment "loyal") on
    the 3-action newsletter, a LinUCB trained so that email_winback is greedy for everyone, while winback
    now does poorly with loyal users (0.05). The candidate "always winback" is worth 0.175, the logged
    policy about 0.2."""
    cat = load_catalogue(DEFAULT_CATALOGUE)
    true = {"email_winback": 0.30, "email_digest": 0.10, "email_new_arrivals": 0.10}
    log_true = {True: {**true, "email_winback": 0.05}, False: true}
    rng = np.random.default_rng(0)
    pol = LinUCB(2, alpha=0.0, seed=1)
    for _ in range(3000):
        for a, m in true.items():
            for loyal in (0.0, 1.0):
                pol.update(np.array([1.0, loyal]), a, float(rng.random() < m))
    ctx = PolicyContext(cat)
    ctx.levers.apply(Lever("b1", LeverKind.BOOST, "ana", "push digest to loyal", T - 60, "email_digest",
                           segment="loyal", factor=10.0))
    samples, winback_loyal, loyal_p = [], 0, set()
    for i in range(n):
        loyal = i % 2 == 0
        x = np.array([1.0, float(loyal)])
        out = decide_action(PolicyRequest(f"u{i}", "newsletter", T + i, "loyal" if loyal else "new", True),
                            UserPolicyState(), ctx, lambda el, x=x: pol.select(x, el))
        did = f"d{i}"
        samples.append({"kind": "exposure", "decision_id": did, "action": out.action, "x": list(x),
                        "probability": out.probability, "placement": "newsletter", "ts": T + i,
                        "mode": out.mode.value, "eligible": out.trace["eligible"]})
        if loyal and out.action == "email_winback":
            winback_loyal += 1
            loyal_p.add(out.probability)
        if rng.random() < log_true[loyal][out.action]:
            samples.append({"kind": "reward", "decision_id": did, "action": out.action, "x": list(x),
                            "reward": 1.0, "ts": T + i + 1, "mode": out.mode.value})
    return join_samples(samples, cat), winback_loyal, loyal_p, pol


def test_a_boost_lever_does_not_let_the_gate_promote_a_worse_candidate() -> None:
    log, winback_loyal, winback_p, pol = boosted_newsletter_log()
    # the overridden greedy action keeps its uniform share: ε_min/3 at least, shown about 10000 × that often
    floor = pol.epsilon_min / 3
    assert winback_p and min(winback_p) >= floor - 1e-12
    assert 5 <= winback_loyal <= 60  # ~17 expected at ε_min = 0.005 (Poisson: 5..60 is far beyond 4 sd)
    est = evaluate(log, Constant(["email_winback"], "always winback"), clip=None)
    logged = on_policy(log)
    assert logged.value == pytest.approx(0.2, abs=0.01)
    # unbiased now, if noisy: the true 0.175 lies in the DR interval, and the gate does not promote
    assert est["dr"].ci_low <= 0.175 <= est["dr"].ci_high
    assert est["dr"].ci_low < logged.value  # not promoted on the numbers, besides any blocking warning
    decision = decide_promotion(est["dr"], logged)
    assert not decision.promote, decision.reason


def test_support_warning_sees_an_action_the_log_gave_probability_0_behind_p_below_1() -> None:
    """A log like the reviewer's, from an engine before the fix: with three actions an override gave the
    greedy action probability 0 for loyal users while every shown action was logged with p < 1. No single
    decision says so; the importance weights of a candidate choosing it average 0.5, not 1."""
    rng = np.random.default_rng(3)
    policy = {True: {"a": 0.0, "b": 0.9, "c": 0.1}, False: {"a": 0.8, "b": 0.1, "c": 0.1}}
    rows = []
    for i in range(4000):
        loyal = i % 2 == 0
        probs = policy[loyal]
        action = str(rng.choice(list(probs), p=list(probs.values())))
        rows.append(LoggedDecision(f"d{i}", np.array([1.0, float(loyal)]), action, probs[action],
                                   float(rng.random() < 0.2), "slot", ("a", "b", "c"), float(i)))
    log = DecisionLog(rows)
    assert {d.probability for d in log} <= {0.9, 0.1, 0.8}  # nothing logged for sure
    codes = {w.code: w.message for w in evaluate(log, Constant(["a"]), ("ips",))["ips"].warnings}
    assert "support_not_covered" in codes
    found = re.search(r"puts ([\d.]+)% of its probability [^(]*\(([^)]*)\).*weights average ([\d.]+)",
                      codes["support_not_covered"])
    assert found is not None, codes
    assert float(found[1]) == pytest.approx(50, abs=3) and found[2] == "a on slot"  # half its mass: loyal users
    assert float(found[3]) == pytest.approx(0.5, abs=0.03)
    for covered in ("b", "c"):  # shown with p > 0 in every decision: no warning
        assert not evaluate(log, Constant([covered]), ("ips",))["ips"].warnings
