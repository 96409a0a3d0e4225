"""What each policy computes: exact statistics, scores and probabilities against naive references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bandits import EpsilonGreedy, LinearPolicy, LinTS, LinUCB
from bandits.explore import greedy_pick
from bandits.linucb import EXPLORE_SAMPLES, RIDGE
from bandits.synthetic import BASE_HIGH, BASE_LOW, LinearWorld

DIM = 5


def xs(n: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, DIM))
    rows[:, 0] = 1.0
    return rows


class Reference:
    """The textbook statistics: A = ridge·I + Σ x xᵀ, b = Σ r·x, θ = A⁻¹ b (solved from scratch)."""

    def __init__(self, ridge: float) -> None:
        self.gram: dict[str, np.ndarray] = {}
        self.sums: dict[str, np.ndarray] = {}
        self.ridge = ridge

    def expose(self, x: np.ndarray, a: str) -> None:
        self.gram.setdefault(a, self.ridge * np.eye(DIM))
        self.sums.setdefault(a, np.zeros(DIM))
        self.gram[a] = self.gram[a] + np.outer(x, x)

    def reward(self, x: np.ndarray, a: str, r: float) -> None:
        self.gram.setdefault(a, self.ridge * np.eye(DIM))
        self.sums[a] = self.sums.get(a, np.zeros(DIM)) + r * x

    def theta(self, a: str) -> np.ndarray:
        return np.linalg.solve(self.gram[a], self.sums[a])

    def width(self, a: str, x: np.ndarray) -> float:
        return float(np.sqrt(x @ np.linalg.solve(self.gram[a], x)))


def feed(policy: LinearPolicy, ref: Reference, n: int, actions: list[str], seed: int) -> None:
    """Exposures and rewards through every entry point, in mixed order."""
    rng = np.random.default_rng(seed)
    rows = xs(n, seed)
    for i, x in enumerate(rows):
        a, r = actions[i % len(actions)], float(rng.normal())
        ref.expose(x, a)
        ref.reward(x, a, r)
        if i % 4 == 0:
            policy.update(x, a, r)
        elif i % 4 == 1:
            policy.expose(x, a)
            policy.reward(x, a, r)
        elif i % 4 == 2:
            policy.reward(x, a, r)
            policy.expose(x, a)
        else:
            policy.expose_many(x[None, :], [a])
            policy.reward_many(x[None, :], [a], [r])
    batch = xs(40, seed + 100)
    names = [actions[i % len(actions)] for i in range(len(batch))]
    rewards = rng.normal(size=len(batch))
    policy.expose_many(batch, names)
    policy.reward_many(batch, names, rewards)
    for x, a, r in zip(batch, names, rewards, strict=True):
        ref.expose(x, a)
        ref.reward(x, a, float(r))


@pytest.mark.parametrize("cls", [LinUCB, LinTS, EpsilonGreedy], ids=lambda c: c.name)
@pytest.mark.parametrize("refresh_every", [7, 100_000], ids=["refreshing", "sherman-morrison-only"])
def test_statistics_equal_the_textbook_ones(cls: type[LinearPolicy], refresh_every: int) -> None:
    actions = ["a", "b", "c"]
    policy, ref = cls(DIM, ridge=2.0, seed=0, refresh_every=refresh_every), Reference(ridge=2.0)
    feed(policy, ref, 300, actions, seed=1)
    for a in actions:
        stats = policy.stats(a)
        np.testing.assert_allclose(stats.gram, ref.gram[a], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(stats.sums, ref.sums[a], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(stats.theta, ref.theta(a), rtol=1e-8, atol=1e-10)
    with pytest.raises(KeyError):
        policy.stats("never-seen")


@pytest.mark.parametrize(
    "eligible", [["a", "b", "c", "d"], ["c", "a"], ["k"]], ids=["all", "few", "one-of-many"]
)
def test_linucb_scores_are_mean_plus_alpha_width(eligible: list[str]) -> None:
    actions = [*"abcdefghijkl"]  # 12 arms: a small eligible set goes through the copy-only-those path
    policy, ref = LinUCB(DIM, alpha=0.7, epsilon=0.0, seed=0), Reference(ridge=RIDGE)  # the default prior
    feed(policy, ref, 400, actions, seed=2)
    for x in xs(10, seed=3):
        scores = policy.select(x, eligible).scores
        want = {a: float(ref.theta(a) @ x + 0.7 * ref.width(a, x)) for a in eligible}
        assert scores == pytest.approx(want, rel=1e-9)


def test_linucb_probabilities_split_ties_and_keep_the_floor() -> None:
    policy = LinUCB(DIM, alpha=1.0, epsilon=0.2, epsilon_min=0.2, seed=0)  # the constant floor
    x = xs(1)[0]
    cold = policy.select(x, ["a", "b", "c", "d"])  # every arm cold: a four-way tie
    assert cold.probabilities == pytest.approx(dict.fromkeys("abcd", 0.25))
    for _ in range(50):
        policy.update(x, "a", 1.0)
        policy.update(x, "b", 0.0)
        policy.update(x, "c", 0.0)
        policy.update(x, "d", 0.0)
    trained = policy.select(x, ["a", "b", "c", "d"])
    assert trained.greedy == "a"
    assert trained.probabilities == pytest.approx({"a": 0.05 + 0.8, "b": 0.05, "c": 0.05, "d": 0.05})


def test_linucb_floor_decays_with_what_the_greedy_arm_knows_and_comes_back_for_a_new_arm() -> None:
    """ε(x) = max(ε_min, ε·min(1, √(n₀/(1 + k)))), k = x·x/w_g² − ridge with w_g the greedy arm's width
    (reference statistics); the logged floor of every other action is ε(x)/K, above ε_min/K."""
    eps, low, n0, ridge = 0.2, 0.05, 4.0, 2.0
    policy = LinUCB(DIM, alpha=0.3, epsilon=eps, epsilon_min=low, explore_samples=n0, ridge=ridge, seed=0)
    ref = Reference(ridge)
    x = xs(1, seed=7)[0]
    cold = policy.select(x, ["a", "b", "c"])
    assert cold.probabilities == pytest.approx(dict.fromkeys("abc", 1 / 3))  # a tie: ε/K + (1-ε)/K each
    seen = []
    rng = np.random.default_rng(3)
    for n, row in enumerate(xs(400, seed=8)):
        for a, rate in (("a", 0.9), ("b", 0.1), ("c", 0.1)):
            r = float(rng.random() < rate)
            policy.update(row, a, r)
            ref.expose(row, a)
            ref.reward(row, a, r)
        if n in (0, 40, 399):
            choice = policy.select(x, ["a", "b", "c"])
            assert choice.greedy == "a"
            known = 1.0 + float(x @ x) / ref.width("a", x) ** 2 - ridge
            want = max(low, eps * min(1.0, math.sqrt(n0 / known)))
            assert choice.probabilities["b"] == pytest.approx(want / 3, rel=1e-9)
            assert choice.probabilities["a"] == pytest.approx(1 - 2 * want / 3, rel=1e-9)
            seen.append(want)
    assert seen[0] == eps and seen[0] > seen[1] > seen[2] == low  # full ε, decaying, then the minimum
    fresh = policy.select(x, ["b", "c", "new"])  # a cold arm is the greedy one: the full ε again
    assert fresh.greedy == "new"
    assert fresh.probabilities["b"] == pytest.approx(eps / 3)
    constant = LinUCB(DIM, alpha=0.3, epsilon=eps, epsilon_min=eps, ridge=ridge, seed=0)
    for row in xs(400, seed=8):
        constant.update(row, "a", 1.0)
    assert constant.select(x, ["a", "b"]).probabilities["b"] == pytest.approx(eps / 2)  # the old floor


def test_linucb_floor_counts_samples_not_the_prior() -> None:
    """After n samples equal to x the floor is ε·√(n₀/(1 + n·x·x)) whatever the ridge: a stronger prior
    narrows the interval but does not count as samples."""
    eps, low, n0 = 0.2, 0.001, 4.0
    x = xs(1, seed=7)[0]
    for n in (0, 3, 40):
        floors = []
        for ridge in (1.0, 10.0):
            policy = LinUCB(DIM, alpha=0.3, epsilon=eps, epsilon_min=low, explore_samples=n0, ridge=ridge, seed=0)
            for _ in range(n):
                policy.update(x, "a", 1.0)
            policy.update(x, "b", 0.0)  # b is known to be worse: a is the greedy arm at x
            floors.append(policy.select(x, ["a", "b"]).probabilities["b"] * 2)
        want = max(low, eps * min(1.0, math.sqrt(n0 / (1.0 + n * float(x @ x)))))
        assert floors == pytest.approx([want, want], rel=1e-6)


def test_linucb_snapshot_keeps_the_prior_it_was_built_with() -> None:
    """Changing the default ridge does not touch older snapshots: they keep their λ (which their statistics
    hold), choose as the original would, and keep learning with it."""
    old = LinUCB(DIM, ridge=1.0, seed=4)
    for x in xs(80, seed=2):
        old.update(x, "a" if x[1] > 0 else "b", float(x[2] > 0))
    restored = LinUCB.restore(old.snapshot())
    assert restored.ridge == 1.0 and RIDGE != 1.0
    for x in xs(30, seed=3):
        got, want = restored.select(x, ["a", "b", "c"]), old.select(x, ["a", "b", "c"])
        assert (got.action, got.probabilities) == (want.action, want.probabilities)
        restored.update(x, got.action, 1.0)
        old.update(x, want.action, 1.0)
    np.testing.assert_array_equal(restored.stats("c").gram, old.stats("c").gram)
    restored.select(xs(1)[0], ["a", "new"])
    np.testing.assert_array_equal(restored.stats("new").gram, np.eye(DIM))  # a new arm gets its λ = 1 too


def test_linucb_prepared_batch_uses_the_same_decayed_floor_as_select() -> None:
    """The floor comes from the greedy arm's width in both paths, whatever its place in the eligible set."""
    batch, single = (LinUCB(DIM, alpha=0.2, epsilon=0.3, epsilon_min=0.01, explore_samples=2, seed=6)
                     for _ in range(2))
    rng = np.random.default_rng(1)
    for n, x in enumerate(xs(600, seed=4)):  # d pays best and is known best; the others are seen less
        for a, rate in (("a", 0.2), ("b", 0.3), ("c", 0.1), ("d", 0.8)):
            if a == "d" or n % 20 == 0:
                r = float(rng.random() < rate)
                batch.update(x, a, r)
                single.update(x, a, r)
    rows = xs(40, seed=5)
    prepared = batch.prepare(rows)
    floors = set()
    for i, x in enumerate(rows):
        eligible = [["a", "b", "c", "d"], ["d", "c", "b"], ["b", "a", "d"], ["c", "b", "a"]][i % 4]
        got, want = batch.select_row(prepared, i, eligible), single.select(x, eligible)
        assert (got.action, got.greedy) == (want.action, want.greedy)
        assert got.probabilities == pytest.approx(want.probabilities, rel=1e-9, abs=1e-12)
        floors.add(round(min(want.probabilities.values()) * len(eligible), 6))
    assert max(floors) < 0.3 and len(floors) > 2  # the floor is decayed, and differs between rows


def test_linucb_snapshot_without_the_decaying_floor_is_read_with_the_defaults(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pickle of LinUCB from before epsilon_min: same statistics, the default floor, and a warning."""
    old = LinUCB(DIM, epsilon=0.03, seed=4)
    for x in xs(50, seed=2):
        old.update(x, "a" if x[1] > 0 else "b", float(x[2] > 0))
    del old.epsilon_min, old.explore_samples  # what an earlier version pickled
    with caplog.at_level("WARNING", logger="bandits.linucb"):
        restored = LinUCB.restore(old.snapshot())
    assert "before the decaying exploration floor" in caplog.text
    assert isinstance(restored, LinUCB)
    assert (restored.epsilon, restored.epsilon_min, restored.explore_samples) == (0.03, 0.005, EXPLORE_SAMPLES)
    assert LinUCB.restore(restored.snapshot()).__dict__.keys() == restored.__dict__.keys()
    np.testing.assert_array_equal(restored.stats("a").gram, old.stats("a").gram)
    np.testing.assert_array_equal(restored.stats("b").sums, old.stats("b").sums)
    floorless = LinUCB(DIM, epsilon=0.0)
    del floorless.epsilon_min, floorless.explore_samples
    assert LinUCB.restore(floorless.snapshot()).epsilon_min == 0.0  # never above the policy's ε


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"epsilon": 0.01, "epsilon_min": 0.02}, "epsilon_min <= epsilon"),
        ({"epsilon_min": -0.1}, "epsilon_min <= epsilon"),
        ({"explore_samples": 0}, "explore_samples must be > 0"),
    ],
)
def test_linucb_refuses_a_bad_floor(params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LinUCB(DIM, **params)


def test_exposure_without_reward_moves_linucb_to_other_cold_arms() -> None:
    """Engine protocol (expose now, reward later): a pending exposure narrows that arm's interval,
    so the next requests try other arms instead of repeating one while rewards are in flight."""
    policy = LinUCB(DIM, alpha=1.0, epsilon=0.0, seed=0)
    x = xs(1)[0]
    picked = []
    for _ in range(5):
        action = policy.select(x, [*"abcde"]).action
        policy.expose(x, action)
        picked.append(action)
    assert sorted(picked) == [*"abcde"]


def test_egreedy_exploits_the_ridge_estimate_with_exact_probabilities() -> None:
    policy, ref = EpsilonGreedy(DIM, epsilon=0.1, seed=0), Reference(ridge=1.0)
    feed(policy, ref, 200, ["a", "b", "c"], seed=4)
    for x in xs(10, seed=5):
        choice = policy.select(x, ["a", "b", "c"])
        means = {a: float(ref.theta(a) @ x) for a in "abc"}
        best = max(means, key=means.__getitem__)
        assert choice.scores == pytest.approx(means, rel=1e-9)
        assert choice.greedy == best
        assert choice.probabilities == pytest.approx(
            {a: 0.1 / 3 + (0.9 if a == best else 0.0) for a in "abc"}
        )


def test_lints_logged_probability_matches_the_two_arm_closed_form() -> None:
    """Two arms: TS picks a with probability Φ((mₐ − m_b) / (α √(vₐ + v_b))); the logged value
    ε/2 + (1 − ε)·p̂ must average to the same, each p̂ being a Monte-Carlo share of 128 draws."""
    alpha, eps = 0.8, 0.1
    policy = LinTS(DIM, alpha=alpha, epsilon=eps, seed=3)
    rows = xs(30, seed=6)
    for i, x in enumerate(rows):
        policy.update(x, "a" if i % 2 else "b", 1.0 if i % 2 else 0.6)
    x = xs(1, seed=7)[0]
    means, widths = {}, {}
    for a in "ab":
        stats = policy.stats(a)
        means[a] = float(stats.theta @ x)
        widths[a] = float(x @ np.linalg.solve(stats.gram, x))
    z = (means["a"] - means["b"]) / (alpha * math.sqrt(widths["a"] + widths["b"]))
    exact = eps / 2 + (1 - eps) * 0.5 * (1 + math.erf(z / math.sqrt(2)))
    assert 0.2 < exact < 0.8  # a case where the estimate has work to do
    logged = [policy.select(x, ["a", "b"]).probabilities["a"] for _ in range(3000)]
    assert np.mean(logged) == pytest.approx(exact, abs=0.01)
    assert np.std(logged) < 0.05  # one estimate: √(p(1−p)/128)·(1−ε) ≤ 0.04


def test_lints_with_epsilon_one_explores_uniformly() -> None:
    policy = LinTS(DIM, epsilon=1.0, seed=0)  # the constructor allows it; select divided by 1 - ε = 0
    picks = [policy.select(x, ["a", "b", "c"]) for x in xs(300)]
    assert all(c.probabilities == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) for c in picks)
    assert {c.action for c in picks} == {"a", "b", "c"}


def test_lints_with_one_draw_still_logs_a_floor_for_every_action() -> None:
    policy = LinTS(DIM, n_draws=1, epsilon=0.1, seed=0)
    choice = policy.select(xs(1)[0], ["a", "b", "c", "d"])
    assert sorted(choice.probabilities.values()) == pytest.approx([0.025, 0.025, 0.025, 0.925])
    assert choice.probability == choice.probabilities[choice.action]


@pytest.mark.parametrize("make", [LinUCB, LinTS, EpsilonGreedy])
def test_contexts_and_rewards_too_large_for_the_statistics_are_refused(make) -> None:
    # Finite but huge values used to pass: x·xᵀ overflowed to infinity, and the next refresh of A⁻¹ (a batch
    # of more than 4 rows of one arm) made that arm's estimates NaN for good, winning every greedy pick.
    policy = make(DIM, seed=0)
    rows = xs(20)
    for i, x in enumerate(rows[:10]):
        policy.update(x, "ab"[i % 2], float(i % 3 == 0))
    huge = rows[0].copy()
    huge[1] = 1e160
    before = policy.version
    with pytest.raises(ValueError, match="too large"):
        policy.expose(huge, "a")
    with pytest.raises(ValueError, match="too large"):
        policy.expose_many(np.vstack([rows[10:15], huge]), ["a"] * 6)  # refused whole, before any change
    with pytest.raises(ValueError, match="at most"):
        policy.reward_many(rows[10:12], ["a", "a"], [1.0, 1e200])
    with pytest.raises(ValueError, match="at most"):
        policy.reward(rows[10], "a", -1e12)
    with pytest.raises(ValueError, match="too large"):
        policy.select(np.full(DIM, 1e200), ["a", "b"])  # x·x overflows, every entry finite
    prepared = policy.prepare(np.vstack([rows[15], huge]))
    with pytest.raises(ValueError, match="too large"):
        policy.select_row(prepared, 1, ["a", "b"])
    assert policy.version == before
    policy.expose_many(rows[10:16], ["a"] * 6)  # a refresh of A⁻¹ from A: still finite
    choice = policy.select_row(policy.prepare(rows[16:17]), 0, ["a", "b"])
    assert all(math.isfinite(v) for v in choice.scores.values())


GREEDY_CASES = [
    # scores, epsilon, u -> pick, best, probabilities
    ([1.0, 3.0, 2.0], 0.0, 0.99, 1, 1, [0.0, 1.0, 0.0]),
    ([1.0, 3.0, 2.0], 0.3, 0.05, 0, 1, [0.1, 0.8, 0.1]),  # u < ε: explore, index from u/ε
    ([1.0, 3.0, 2.0], 0.3, 0.29, 2, 1, [0.1, 0.8, 0.1]),
    ([3.0, 1.0, 3.0], 0.0, 0.2, 0, 0, [0.5, 0.0, 0.5]),  # tie: first half of u picks the first
    ([3.0, 1.0, 3.0], 0.0, 0.7, 2, 2, [0.5, 0.0, 0.5]),
    ([3.0, 1.0, 3.0], 0.3, 0.25, 2, 2, [0.45, 0.1, 0.45]),  # explored onto a tied-best arm
    ([5.0], 1.0, 0.999999, 0, 0, [1.0]),
]


@pytest.mark.parametrize(("scores", "epsilon", "u", "pick", "best", "probs"), GREEDY_CASES)
def test_greedy_pick(scores, epsilon, u, pick, best, probs) -> None:
    got_pick, got_best, got_probs = greedy_pick(scores, epsilon, u)
    assert (got_pick, got_best) == (pick, best)
    assert got_probs == pytest.approx(probs)


def test_synthetic_world_is_seeded_and_contextual() -> None:
    one, two = LinearWorld(seed=4).stream(3000), LinearWorld(seed=4).stream(3000)
    np.testing.assert_array_equal(one.contexts, two.contexts)
    np.testing.assert_array_equal(one.uniforms, two.uniforms)
    p = one.probabilities
    assert p.shape == (3000, 10) and p.min() >= 0 and p.max() <= 1
    assert np.all((p.mean(axis=0) > BASE_LOW - 0.03) & (p.mean(axis=0) < BASE_HIGH + 0.03))
    best_share = np.bincount(p.argmax(axis=1), minlength=10) / len(p)
    assert (best_share > 0.05).sum() >= 4  # no single action is best everywhere
    assert p.max(axis=1).mean() > p.mean(axis=0).max() + 0.05  # context is worth knowing
    assert not np.array_equal(LinearWorld(seed=5).stream(10).contexts, one.contexts[:10])


def test_linucb_reports_its_means_without_the_bonus() -> None:
    """Choice.means is θₐ·x from the reference statistics; the score adds α·√(xᵀA⁻¹x) on top."""
    alpha = 0.7
    bandit, ref = LinUCB(DIM, alpha=alpha, epsilon=0.0, seed=2), Reference(RIDGE)
    rng = np.random.default_rng(2)
    for x in xs(60, seed=3):
        a = ("a", "b", "c")[int(rng.integers(3))]
        r = float(rng.random())
        bandit.update(x, a, r)
        ref.expose(x, a)
        ref.reward(x, a, r)
    x = xs(1, seed=9)[0]
    choice = bandit.select(x, ["a", "b", "c"])
    for a in "abc":
        mean = float(ref.theta(a) @ x)
        bonus = alpha * math.sqrt(float(x @ np.linalg.solve(ref.gram[a], x)))
        assert choice.means[a] == pytest.approx(mean, abs=1e-9)
        assert choice.scores[a] == pytest.approx(mean + bonus, abs=1e-9)
        assert choice.mean_of(a) == choice.means[a]


@pytest.mark.parametrize("policy", [EpsilonGreedy(DIM, seed=1), LinTS(DIM, seed=1)])
def test_policies_scoring_on_the_mean_leave_means_to_the_scores(policy: LinearPolicy) -> None:
    for x in xs(20):
        policy.update(x, "a", 1.0)
    choice = policy.select(xs(1, seed=5)[0], ["a", "b"])
    assert choice.means == {} and choice.mean_of("a") == choice.scores["a"]
