"""Rules every policy in ``bandits.POLICIES`` must follow; a new policy is picked up automatically."""

from __future__ import annotations

import pickle
from collections import deque

import numpy as np
import pytest

from bandits import POLICIES, Policy, make_policy
from bandits.synthetic import LinearWorld

DIM = 6
ACTIONS = ["a", "b", "c", "d"]
NAMES = sorted(POLICIES)


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def contexts(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xs = rng.random((n, DIM))
    xs[:, 0] = 1.0
    return xs


def train(policy: Policy, n: int = 300, seed: int = 0, actions: list[str] | None = None) -> list[str]:
    """Play ``n`` steps where action "a" pays most often; learn from every step. Returns the actions played."""
    actions = actions or ACTIONS
    rng = np.random.default_rng(seed + 1)
    played = []
    for x in contexts(n, seed):
        action = policy.select(x, actions).action
        rate = 0.7 if action == "a" else 0.2
        policy.update(x, action, float(rng.random() < rate))
        played.append(action)
    return played


def trajectory(policy: Policy, n: int = 80, seed: int = 5) -> list[tuple[str, float, dict[str, float]]]:
    out = []
    for x in contexts(n, seed):
        choice = policy.select(x, ACTIONS)
        out.append((choice.action, choice.probability, choice.scores))
        policy.update(x, choice.action, float(x[1] > 0.5))
    return out


def test_registry_names_match_the_policies(name: str) -> None:
    policy = make_policy(name, DIM, seed=3)
    assert policy.name == name
    assert policy.seed == 3 and policy.dim == DIM


def test_snapshot_round_trip_then_identical_choices(name: str) -> None:
    policy = make_policy(name, DIM, seed=4)
    train(policy)
    restored = Policy.restore(policy.snapshot())
    assert type(restored) is type(policy) and restored.version == policy.version
    assert restored.actions == policy.actions
    assert trajectory(restored) == trajectory(policy)
    assert restored.snapshot() == policy.snapshot()


def test_snapshot_of_another_format_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = make_policy(name, DIM).snapshot()
    monkeypatch.setattr("bandits.base.SNAPSHOT_FORMAT", -1)
    with pytest.raises(ValueError, match="start the policy fresh"):
        Policy.restore(blob)
    with pytest.raises(TypeError, match="not a Policy"):
        Policy.restore(pickle.dumps({"policy": "nope"}))


def test_same_seed_same_choices_other_seed_other_choices(name: str) -> None:
    runs = {}
    for label, seed in (("first", 11), ("again", 11), ("other", 12)):
        policy = make_policy(name, DIM, seed=seed)
        played = train(policy, n=200)
        runs[label] = (played, trajectory(policy))
    assert runs["first"] == runs["again"]
    # another seed plays otherwise (while learning, or after it: a policy that has settled on "a" and
    # explores with a small ε may play the same 80 actions after training whatever its seed)
    assert [*runs["first"][0], *(a for a, _, _ in runs["first"][1])] != [
        *runs["other"][0], *(a for a, _, _ in runs["other"][1])
    ]


def test_learning_leaves_inputs_untouched(name: str) -> None:
    policy = make_policy(name, DIM, seed=0)
    xs = contexts(8)
    xs.setflags(write=False)  # an in-place write would raise
    keep = xs.copy()
    actions = list(ACTIONS)
    rewards = [1.0, 0.0, 2.5, 0.0, 1.0, 0.0, 0.0, 3.0]
    batch_actions = actions + actions
    for x, r in zip(xs, rewards, strict=True):
        choice = policy.select(x, actions)
        policy.expose(x, choice.action)
        policy.reward(x, choice.action, r)
        policy.update(x, choice.action, r)
    policy.expose_many(xs, batch_actions)
    policy.reward_many(xs, batch_actions, rewards)
    np.testing.assert_array_equal(xs, keep)
    assert actions == ACTIONS and batch_actions == ACTIONS + ACTIONS
    assert rewards == [1.0, 0.0, 2.5, 0.0, 1.0, 0.0, 0.0, 3.0]


def test_select_does_not_learn(name: str) -> None:
    policy = make_policy(name, DIM, seed=0)
    train(policy, n=50)
    version = policy.version
    x = contexts(1, seed=9)[0]
    first = policy.select(x, ACTIONS)
    for _ in range(20):
        policy.select(x, ACTIONS)
    assert policy.version == version
    assert policy.select(x, ACTIONS).scores == first.scores


def test_probabilities_are_a_distribution_over_the_eligible_set(name: str) -> None:
    policy = make_policy(name, DIM, seed=1)
    train(policy, n=150)
    rng = np.random.default_rng(2)
    for x in contexts(200, seed=3):
        eligible = [a for a in ACTIONS if rng.random() < 0.6] or ["c"]
        choice = policy.select(x, eligible)
        assert set(choice.probabilities) == set(eligible) == set(choice.scores)
        assert sum(choice.probabilities.values()) == pytest.approx(1.0, abs=1e-12)
        assert min(choice.probabilities.values()) > 0
        assert choice.action in eligible and choice.greedy in eligible
        assert choice.probability == choice.probabilities[choice.action]


def _same_choice(a, b) -> None:
    assert (a.action, a.greedy) == (b.action, b.greedy)
    assert a.probabilities == pytest.approx(b.probabilities, rel=1e-9, abs=1e-12)
    assert a.scores == pytest.approx(b.scores, rel=1e-9, abs=1e-12)
    assert a.means == pytest.approx(b.means, rel=1e-9, abs=1e-12)


def test_a_prepared_batch_chooses_what_select_chooses(name: str) -> None:
    """select_row on a batch scored at once = select row by row (same draws, eligible sets varying)."""
    batch, single = make_policy(name, DIM, seed=2), make_policy(name, DIM, seed=2)
    train(batch, n=200)
    train(single, n=200)
    xs = contexts(150, seed=21)
    rng = np.random.default_rng(22)
    eligible = [[a for a in ACTIONS if rng.random() < 0.6] or ["b"] for _ in xs]
    prepared = batch.prepare(xs)
    xs[:] = 0.0  # the batch keeps its own copy of the contexts
    for row, actions in enumerate(eligible):
        _same_choice(batch.select_row(prepared, row, actions), single.select(contexts(150, seed=21)[row], actions))
    assert batch.version == single.version


def test_a_prepared_batch_is_not_used_once_the_policy_has_learned(name: str) -> None:
    policy, reference = make_policy(name, DIM, seed=3), make_policy(name, DIM, seed=3)
    xs = contexts(4, seed=23)
    prepared = policy.prepare(xs)
    for p in (policy, reference):
        train(p, n=100)  # learning after prepare: the batch's scores are stale
        p.select(xs[0], ACTIONS + ["new"])  # and a new arm
    _same_choice(policy.select_row(prepared, 1, ACTIONS), reference.select(xs[1], ACTIONS))
    bad = xs.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):  # only the bad row is refused, as select() would
        policy.select_row(policy.prepare(bad), 2, ACTIONS)
    _same_choice(policy.select_row(policy.prepare(bad), 3, ACTIONS), reference.select(xs[3], ACTIONS))


@pytest.mark.parametrize("trained", [False, True], ids=["cold", "trained"])
def test_logged_probabilities_match_how_often_actions_are_picked(name: str, trained: bool) -> None:
    """Replaying one state many times: pick frequencies agree with the mean logged probability."""
    policy = make_policy(name, DIM, seed=7)
    if trained:
        train(policy, n=400)
    x = contexts(1, seed=8)[0]
    n = 4000
    picks = dict.fromkeys(ACTIONS, 0)
    logged = dict.fromkeys(ACTIONS, 0.0)
    for _ in range(n):
        choice = policy.select(x, ACTIONS)
        picks[choice.action] += 1
        for a, p in choice.probabilities.items():
            logged[a] += p / n
    for a in ACTIONS:
        tolerance = 4.5 * np.sqrt(logged[a] * (1 - logged[a]) / n) + 1e-3
        assert abs(picks[a] / n - logged[a]) <= tolerance, (a, picks[a] / n, logged[a])


def test_unknown_action_starts_cold_and_gets_explored(name: str) -> None:
    policy = make_policy(name, DIM, seed=5)
    train(policy, n=400, actions=["a", "b", "c"])
    offered = ["a", "b", "c", "new"]
    picked_new = 0
    for x in contexts(1000, seed=6):
        choice = policy.select(x, offered)
        assert choice.probabilities["new"] > 0
        picked_new += choice.action == "new"
        policy.update(x, choice.action, 0.0)
    assert "new" in policy.actions
    assert picked_new >= 3


def test_removed_action_is_not_offered_and_keeps_its_statistics(name: str) -> None:
    policy = make_policy(name, DIM, seed=6)
    train(policy, n=300)
    probe = contexts(1, seed=12)[0]
    before = policy.select(probe, ACTIONS).scores["d"]
    without_d = ["a", "b", "c"]
    for x in contexts(300, seed=13):
        choice = policy.select(x, without_d)
        assert choice.action != "d" and "d" not in choice.probabilities
        policy.update(x, choice.action, 1.0)
    assert "d" in policy.actions
    assert policy.select(probe, ACTIONS).scores["d"] == pytest.approx(before, rel=1e-9, abs=1e-12)


def test_batches_learn_exactly_what_single_calls_learn(name: str) -> None:
    xs = contexts(60, seed=14)
    rng = np.random.default_rng(15)
    actions = [[*ACTIONS, "late"][i] for i in rng.integers(0, 5, len(xs))]  # "late": first seen in the batch
    rewards = rng.random(len(xs)).round(2).tolist()
    single, batched = make_policy(name, DIM, seed=0), make_policy(name, DIM, seed=0)
    for x, a, r in zip(xs, actions, rewards, strict=True):
        single.expose(x, a)
        single.reward(x, a, r)
    batched.expose_many(xs, actions)
    batched.reward_many(xs, actions, rewards)
    assert batched.version == single.version
    for x in contexts(5, seed=16):
        want = single.select(x, ACTIONS).scores
        got = batched.select(x, ACTIONS).scores
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_exposures_and_rewards_commute(name: str) -> None:
    """Workers may apply samples in any order (rewards before their exposure, too): same statistics."""
    xs = contexts(40, seed=17)
    events = [("expose", x, ACTIONS[i % 4], 0.0) for i, x in enumerate(xs)]
    events += [("reward", x, ACTIONS[i % 4], float(i % 3)) for i, x in enumerate(xs)]
    in_order, shuffled = make_policy(name, DIM, seed=0), make_policy(name, DIM, seed=0)
    order = np.random.default_rng(18).permutation(len(events))
    for policy, sequence in ((in_order, events), (shuffled, [events[i] for i in order])):
        for kind, x, a, r in sequence:
            if kind == "expose":
                policy.expose(x, a)
            else:
                policy.reward(x, a, r)
    for x in contexts(5, seed=19):
        assert shuffled.select(x, ACTIONS).scores == pytest.approx(
            in_order.select(x, ACTIONS).scores, rel=1e-9
        )


X_OK = np.ones(DIM)
BAD_INPUTS = [
    ("context too long", lambda p: p.select(np.ones(DIM + 1), ACTIONS), "context must have shape"),
    ("context 2-d", lambda p: p.select(np.ones((1, DIM)), ACTIONS), "context must have shape"),
    ("context NaN", lambda p: p.select(np.r_[np.nan, np.ones(DIM - 1)], ACTIONS), "NaN or infinity"),
    ("context inf", lambda p: p.update(np.r_[np.ones(DIM - 1), np.inf], "a", 1.0), "NaN or infinity"),
    ("no actions", lambda p: p.select(X_OK, []), "at least one eligible action"),
    ("duplicate actions", lambda p: p.select(X_OK, ["a", "b", "a"]), "must be distinct"),
    ("empty action name", lambda p: p.select(X_OK, ["a", ""]), "non-empty strings"),
    ("action not a string", lambda p: p.expose(X_OK, 3), "non-empty strings"),
    ("reward NaN", lambda p: p.reward(X_OK, "a", float("nan")), "reward must be finite"),
    ("reward inf in update", lambda p: p.update(X_OK, "a", float("inf")), "reward must be finite"),
    ("batch rows mismatch", lambda p: p.expose_many(np.ones((2, DIM)), ["a"]), "contexts must have shape"),
    ("batch NaN row", lambda p: p.expose_many(np.full((1, DIM), np.nan), ["a"]), "NaN or infinity"),
    ("batch reward count", lambda p: p.reward_many(np.ones((2, DIM)), ["a", "b"], [1.0]), "one reward per"),
    ("batch reward NaN", lambda p: p.reward_many(np.ones((1, DIM)), ["a"], [np.nan]), "rewards must be fin"),
    ("batch bad name", lambda p: p.expose_many(np.ones((2, DIM)), ["fresh", ""]), "non-empty strings"),
]


@pytest.mark.parametrize(
    ("call", "match"), [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS]
)
def test_bad_inputs_are_refused_and_change_nothing(name: str, call, match: str) -> None:
    policy = make_policy(name, DIM, seed=0)
    train(policy, n=20)
    before = policy.snapshot()
    with pytest.raises(ValueError, match=match):
        call(policy)
    assert policy.snapshot() == before


BAD_SETTINGS = [
    ({"dim": 0}, "dim must be >= 1"),
    ({"ridge": 0.0}, "ridge must be > 0"),
    ({"ridge": float("nan")}, "ridge must be > 0"),
    ({"refresh_every": 0}, "refresh_every must be >= 1"),
]


@pytest.mark.parametrize(("params", "match"), BAD_SETTINGS, ids=[m for _, m in BAD_SETTINGS])
def test_bad_settings_are_refused(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_policy(name, **{"dim": DIM, **params})


def test_unknown_policy_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown policy 'ucb9'; choose one of"):
        make_policy("ucb9", DIM)


def test_learns_a_linear_world_with_delayed_rewards(name: str) -> None:
    """Seeded world, rewards revealed 20 steps late: the second half closes most of the gap to the oracle.

    Expected reward (the click probability of the chosen action, no click luck) is compared with
    uniform random play (≈ 0.61 of the oracle in this world) and the oracle (1.0).
    """
    world = LinearWorld(n_actions=5, dim=12, seed=21)
    steps, delay = 5000, 20
    stream = world.stream(steps)
    policy = make_policy(name, world.dim, seed=22)
    pending: deque = deque()
    earned = np.zeros(steps)
    for t in range(steps):
        x = stream.contexts[t]
        action = policy.select(x, world.actions).action
        arm = world.actions.index(action)
        earned[t] = stream.probabilities[t, arm]
        pending.append((x, action, stream.reward(t, arm)))
        if len(pending) > delay:
            policy.update(*pending.popleft())
    half = slice(steps // 2, steps)
    oracle = stream.probabilities[half].max(axis=1).mean()
    uniform = stream.probabilities[half].mean()
    closed = (earned[half].mean() - uniform) / (oracle - uniform)
    assert closed > 0.6, f"{name} closed only {closed:.2f} of the gap between uniform and oracle"
