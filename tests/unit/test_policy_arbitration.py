"""Arbitration: expected value = propensity × value × boost − cost, with the bandit's exploration kept."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bandits.base import Choice
from bandits.linucb import LinUCB
from policy.arbitration import ArbitrationConfig, arbitrate, rank
from policy.catalogue import Action, Catalogue, Placement


def catalogue(values: dict[str, float], costs: dict[str, float] | None = None) -> Catalogue:
    costs = costs or {}
    actions = {a: Action(a, "web", ("p",), v, costs.get(a, 0.0)) for a, v in values.items()}
    return Catalogue({"p": Placement("p", "web")}, actions)


def eps_greedy(scores: dict[str, float], pick: str, eps: float = 0.1, uniform: bool | None = None) -> Choice:
    """What an ε-greedy bandit with a unique best score reports (a pick other than the best one can only
    come from the uniform draw; the best one may come from either branch: ``uniform``)."""
    greedy = max(scores, key=lambda a: scores[a])
    k = len(scores)
    probs = {a: eps / k + (1 - eps if a == greedy else 0.0) for a in scores}
    drawn = pick != greedy if uniform is None else uniform
    return Choice.from_maps(pick, probs[pick], greedy, dict(scores), probs, uniform=drawn, floor=eps / k)


CAT = catalogue({"a": 10.0, "b": 20.0, "c": 40.0}, {"b": 3.0})
SCORES = {"a": 0.5, "b": 0.45, "c": 0.1}  # value mode: gross = score × 40


@pytest.mark.parametrize(
    ("case", "choice", "boosts", "config", "action", "p", "explored"),
    [
        (
            "no cost, no boost: the bandit's best",
            eps_greedy({"a": 0.5, "b": 0.4, "c": 0.1}, "a"),
            {},
            ArbitrationConfig(),
            "a",
            0.9 + 0.1 / 3,
            False,
        ),
        (
            "the bandit's best stays best despite b's cost",
            eps_greedy(SCORES, "a"),
            {},
            ArbitrationConfig(),
            "a",
            0.9 + 0.1 / 3,
            False,
        ),
        (
            "a boost makes b the best: the greedy branch's mass moves to b",
            eps_greedy(SCORES, "a"),
            {"b": 1.5},
            ArbitrationConfig(),
            "b",
            0.1 / 3 + 0.9,
            False,
        ),
        (
            "the uniform draw of the overridden greedy action is shown as drawn",
            eps_greedy(SCORES, "a", uniform=True),
            {"b": 1.5},
            ArbitrationConfig(),
            "a",
            0.1 / 3,
            True,
        ),
        (
            "exploration keeps the bandit's pick",
            eps_greedy(SCORES, "c"),
            {"b": 1.5},
            ArbitrationConfig(),
            "c",
            0.1 / 3,
            True,
        ),
        (
            "the uniform draw onto the ev winner: its share plus the greedy branch's (not explore: b is the best)",
            eps_greedy(SCORES, "b"),
            {"b": 1.5},
            ArbitrationConfig(),
            "b",
            0.1 / 3 + 0.9,
            False,
        ),
        (
            "response mode weighs by value",
            eps_greedy(SCORES, "a"),
            {},
            ArbitrationConfig("response"),
            "b",
            0.1 / 3 + 0.9,
            False,
        ),
        (
            "a Choice without a floor (no uniform branch said): all of its mass counts as the greedy branch",
            Choice.from_maps("a", 0.9 + 0.1 / 3, "a", dict(SCORES), {"a": 0.9 + 0.1 / 3, "b": 0.1 / 3, "c": 0.1 / 3}),
            {"b": 1.5},
            ArbitrationConfig(),
            "b",
            1.0 - 0.1 / 3,
            False,
        ),
    ],
)
def test_candidate_and_probability(case, choice, boosts, config, action, p, explored) -> None:
    result = arbitrate(choice, ["a", "b", "c"], CAT, boosts, config)
    assert (result.action, result.explored) == (action, explored)
    assert result.probability == pytest.approx(p)


def test_terms_show_the_formula() -> None:
    result = arbitrate(eps_greedy(SCORES, "a"), ["a", "b", "c"], CAT, {"b": 1.5})
    terms = {t.action: t for t in result.ranked}
    assert terms["b"].ev == pytest.approx(0.45 * 40 * 1.5 - 3.0)
    assert terms["a"].ev == pytest.approx(0.5 * 40)
    assert [t.action for t in result.ranked] == ["b", "a", "c"]
    assert terms["b"].to_trace() == {
        "action": "b",
        "score": 0.45,
        "value": 20.0,
        "boost": 1.5,
        "cost": 3.0,
        "ev": round(0.45 * 60 - 3, 4),
    }


def test_negative_scores_mean_no_value() -> None:
    choice = eps_greedy({"a": -0.2, "b": -0.5, "c": -0.1}, "c")
    result = arbitrate(choice, ["a", "b", "c"], CAT)
    assert {t.action: t.ev for t in result.ranked} == {"a": 0.0, "b": -3.0, "c": 0.0}
    assert result.action == "c"  # tie at 0 between a and c: the bandit's greedy wins


def test_logged_probability_is_the_real_frequency() -> None:
    """Draw from an ε-greedy bandit many times: each candidate appears as often as its logged p says."""
    rng = np.random.default_rng(7)
    scores = {"a": 0.5, "b": 0.45, "c": 0.3, "d": 0.1}
    cat = catalogue(
        {"a": 10.0, "b": 10.0, "c": 10.0, "d": 10.0}, {"a": 4.0}
    )  # a's cost makes b the ev winner
    n, eps = 20000, 0.2
    seen: Counter[str] = Counter()
    logged: dict[str, float] = {}
    for _ in range(n):
        uniform = rng.random() < eps
        pick = str(rng.choice(list(scores))) if uniform else "a"
        result = arbitrate(eps_greedy(scores, pick, eps, uniform), list(scores), cat)
        seen[result.action] += 1
        assert logged.setdefault(result.action, result.probability) == result.probability
    # a, the bandit's greedy action, is shown only by the uniform draw (when the bandit exploits,
    # arbitration shows b instead), at its logged ε/K
    assert set(seen) == set(scores)
    assert logged["a"] == pytest.approx(eps / 4)
    for a, p in logged.items():
        assert seen[a] / n == pytest.approx(p, abs=0.015), a  # sd ≤ 0.0036 at n = 20000
    assert sum(logged.values()) == pytest.approx(1.0)


def test_cold_linucb_ties_keep_the_bandits_own_draw() -> None:
    bandit = LinUCB(4, seed=3)
    cat = catalogue({a: 10.0 for a in "abcde"})
    x = np.ones(4) / 2
    for _ in range(50):
        choice = bandit.select(x, list("abcde"))
        result = arbitrate(choice, list("abcde"), cat)
        assert (result.action, result.probability) == (choice.action, pytest.approx(choice.probability))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"reward_unit": "euros"}, "reward_unit must be one of"), ({"top_k": 0}, "top_k must be >= 1")],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ArbitrationConfig(**kwargs)


def test_empty_eligible_set_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one eligible action"):
        arbitrate(eps_greedy({"a": 1.0}, "a"), [], CAT)


def test_mean_and_lower_ev_use_the_bandits_means() -> None:
    choice = Choice.from_maps("a", 0.9, "a", {"a": 0.5, "b": 0.45}, {"a": 0.9, "b": 0.1}, means={"a": 0.3, "b": 0.4})
    result = arbitrate(choice, ["a", "b"], CAT, {"b": 1.5})
    assert result.mean_ev == pytest.approx({"a": 0.3 * 40, "b": 0.4 * 40 * 1.5 - 3.0})
    # lower bound: mean minus k widths of the bonus (score - mean), floored at 0 like the score
    assert result.lower_ev(1.0) == pytest.approx({"a": 0.1 * 40, "b": 0.35 * 40 * 1.5 - 3.0})
    assert result.lower_ev(10.0)["a"] == 0.0
    assert "mean_ev" in result.ranked[0].to_trace(with_mean=True)
    assert "mean_ev" not in result.ranked[0].to_trace()


def test_without_means_the_scores_stand_in() -> None:
    result = arbitrate(eps_greedy(SCORES, "a"), ["a", "b", "c"], CAT)
    assert result.mean_ev == result.ev
    assert result.lower_ev(3.0) == result.ev


@pytest.mark.parametrize(
    ("case", "scores", "means", "on_mean", "expected"),
    [
        ("on the score: the optimistic best", {"a": 0.9, "b": 0.5}, {"a": 0.1, "b": 0.4}, False, "a"),
        ("on the mean: the best estimate", {"a": 0.9, "b": 0.5}, {"a": 0.1, "b": 0.4}, True, "b"),
        ("a mean tie goes to the higher score", {"a": 0.9, "b": 0.5}, {"a": 0.4, "b": 0.4}, True, "a"),
    ],
)
def test_settled_is_the_best_without_the_draw(case, scores, means, on_mean, expected) -> None:
    cat = catalogue({"a": 10.0, "b": 10.0})
    choice = Choice.from_maps("b", 0.05, "a", scores, {"a": 0.95, "b": 0.05}, means)  # the bandit explored b
    assert arbitrate(choice, ["a", "b"], cat).settled(on_mean) == expected


def test_rank_is_arbitrate_without_the_candidate() -> None:
    """The pipeline settles sticky placements on ``rank`` alone: the same terms, order and settled action."""
    choice = eps_greedy(SCORES, "a")
    full, ranking = arbitrate(choice, ["a", "b", "c"], CAT, {"b": 1.5}), rank(choice, ["a", "b", "c"], CAT, {"b": 1.5})
    assert ranking.ranked == full.ranked and ranking.eligible == full.eligible == ("a", "b", "c")
    assert [ranking.settled(m, salt="u") for m in (False, True)] == [full.settled(m, salt="u") for m in (False, True)]
    with pytest.raises(ValueError, match="at least one eligible action"):
        rank(choice, [], CAT)


def test_ranking_order_and_settled_with_many_ties() -> None:
    """Ranked on ev, then score, then eligible order; settled on ev is the first of that order unless tied."""
    rng = np.random.default_rng(7)
    cat = catalogue({a: float(rng.choice([10.0, 20.0])) for a in "abcdef"}, {"c": 1.0})
    for _ in range(300):
        eligible = list(rng.permutation(list("abcdef"))[: rng.integers(1, 7)])
        scores = {a: float(rng.choice([0.0, 0.1, 0.2, -0.1])) for a in eligible}
        choice = Choice.from_maps(eligible[0], 1.0, eligible[0], scores, dict.fromkeys(eligible, 1 / len(eligible)))
        ranking = rank(choice, eligible, cat)
        keyed = sorted((-t.ev, -t.score, eligible.index(t.action)) for t in ranking.ranked)
        assert [t.action for t in ranking.ranked] == [eligible[i] for _, _, i in keyed]
        best = max((t.ev, t.score) for t in ranking.ranked)
        tied = {t.action for t in ranking.ranked if (t.ev, t.score) == best}
        assert ranking.settled(False, salt="u") in tied
        if len(tied) == 1:
            assert ranking.settled(False, salt="u") == ranking.ranked[0].action


def test_settled_ties_are_spread_over_users_but_stable_for_each() -> None:
    cat = catalogue({a: 10.0 for a in "abcde"})
    cold = Choice.from_maps(
        "c", 0.2, "c", dict.fromkeys("abcde", 0.3), dict.fromkeys("abcde", 0.2), dict.fromkeys("abcde", 0.0)
    )
    result = arbitrate(cold, list("abcde"), cat)
    picks = [result.settled(False, salt=f"u{i}") for i in range(200)]
    assert set(picks) == set("abcde")  # a cold start does not send every user to the same action
    assert all(result.settled(False, salt=f"u{i}") == p for i, p in enumerate(picks))  # no randomness
    assert max(Counter(picks).values()) < 70  # roughly even: 40 each expected
