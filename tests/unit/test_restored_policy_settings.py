"""A worker resuming from a snapshot runs the policy its settings chose, with what the snapshot learned.

Before, ``Policy.snapshot`` pickled the whole policy and the worker swapped it in as it was: a worker
configured CADENCE_POLICY=lints ran the snapshot's linucb, CADENCE_POLICY_ALPHA=2.0 ran the snapshot's 0.1.
And the shadow (challenger) policy was not in the snapshot: a restarted worker's challenger started cold.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import redis.asyncio as aioredis

from bandits import LinTS, LinUCB, make_policy
from bandits.base import Choice, Policy
from bandits.restore import PolicyMismatch, carry_over
from cadence.metrics import Metrics
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningSample
from engine.processor import Engine, EngineConfig
from features.context import CONTEXT_DIM
from features.store import RedisFeatureStore
from learning.state import FORMAT, LearnedState
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext

ACTIONS = ["offer_free_shipping", "offer_10pct", "offer_bundle", "offer_loyalty_points"]


def make_engine(name: str = "linucb", shadow: str = "", seed: int = 1, **params: float) -> Engine:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected: learning only
    store = RedisFeatureStore(client, "restore", ttl_s=3600, dedup_ring=32)
    challenger = make_policy(shadow, CONTEXT_DIM, seed=seed + 1) if shadow else None
    return Engine(store, PolicyContext(load_catalogue(DEFAULT_CATALOGUE)),
                  make_policy(name, CONTEXT_DIM, seed=seed, **params), Metrics(), EngineConfig(), None, challenger)


def samples(n: int) -> list[LearningSample]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        x = (np.abs(rng.normal(size=CONTEXT_DIM)) * 0.3).tolist()
        action = ACTIONS[i % 4]
        out.append(LearningSample("exposure", f"d{i}", action, x, ts=1e9 + i))
        if action == "offer_bundle":
            out.append(LearningSample("reward", f"d{i}", action, x, reward=1.0, ts=1e9 + i, reward_type="conversion"))
    return out


def trained_blob(name: str = "linucb", shadow: str = "", **params: float) -> tuple[Engine, bytes]:
    running = make_engine(name, shadow, **params)
    running.learn(samples(400), {0: 400})
    return running, running.learned_state().pack()


def picks(policy: Policy, n: int = 200) -> list[Choice]:
    rng = np.random.default_rng(99)
    return [policy.select(np.abs(rng.normal(size=CONTEXT_DIM)) * 0.3, ACTIONS) for _ in range(n)]


def same_statistics(a: Policy, b: Policy) -> None:
    assert a.version == b.version and a.actions == b.actions
    for action in ACTIONS:
        np.testing.assert_array_equal(a.stats(action).gram, b.stats(action).gram)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(a.stats(action).sums, b.stats(action).sums)  # type: ignore[attr-defined]


def test_the_configured_decision_hyperparameters_run_after_a_snapshot_is_loaded(
        caplog: pytest.LogCaptureFixture) -> None:
    running, blob = trained_blob(alpha=0.1)
    resumed = make_engine(alpha=2.0)
    with caplog.at_level(logging.WARNING, logger="engine.learner"):
        resumed.resume_from(LearnedState.unpack(blob), {0: 400})
    assert isinstance(resumed.policy, LinUCB) and resumed.policy.alpha == 2.0
    same_statistics(resumed.policy, running.policy)
    assert "alpha 0.1 -> 2.0" in caplog.text  # one line says what changed


@pytest.mark.parametrize(("configured", "params", "kind"), [
    ("lints", {"alpha": 0.25}, LinTS), ("egreedy", {"epsilon": 0.3}, None)])
def test_another_configured_policy_type_takes_the_snapshots_statistics(configured, params, kind) -> None:  # noqa: ANN001
    running, blob = trained_blob("linucb")
    resumed = make_engine(configured, **params)
    resumed.resume_from(LearnedState.unpack(blob), {0: 400})
    assert resumed.policy.name == configured
    for name, value in params.items():
        assert getattr(resumed.policy, name) == value
    same_statistics(resumed.policy, running.policy)
    assert resumed.policy.ridge == running.policy.ridge  # type: ignore[attr-defined]  # the snapshot's λ
    # it decides from what was learned: the rewarded action is the greedy one
    assert all(c.greedy == "offer_bundle" for c in picks(resumed.policy, 50))
    resumed.learn(samples(8), {0: 408})  # and learns on


def test_unchanged_settings_restore_the_snapshots_decisions_exactly() -> None:
    _, blob = trained_blob("linucb", alpha=0.1)
    expected = [(c.action, c.probability) for c in picks(LearnedState.unpack(blob).policy)]
    resumed = make_engine(alpha=0.1)
    resumed.resume_from(LearnedState.unpack(blob), {0: 400})
    assert [(c.action, c.probability) for c in picks(resumed.policy)] == expected
    rolled = make_engine(alpha=0.1)
    rolled.follow_rollback(LearnedState.unpack(blob), {0: 400})  # the rollback path
    assert [(c.action, c.probability) for c in picks(rolled.policy)] == expected


def test_a_policy_that_cannot_take_the_statistics_is_refused_with_what_to_set() -> None:
    class Constant(Policy):
        name = "constant"

        def _grow(self, n_arms: int) -> None: ...
        def _select(self, x, actions, idx):  # noqa: ANN001, ANN202
            return self._choice(actions, [0.0] * len(actions), [1 / len(actions)] * len(actions), 0, 0)
        def _expose(self, x, arm) -> None: ...  # noqa: ANN001
        def _reward(self, x, arm, reward) -> None: ...  # noqa: ANN001

    with pytest.raises(PolicyMismatch, match="CADENCE_POLICY=linucb again"):
        carry_over(Constant(CONTEXT_DIM), make_policy("linucb", CONTEXT_DIM))
    with pytest.raises(PolicyMismatch, match="contexts of 8 values"):
        carry_over(make_policy("linucb", CONTEXT_DIM), make_policy("lints", 8))


def test_the_shadow_policy_travels_in_the_snapshot() -> None:
    running, blob = trained_blob("linucb", shadow="lints")
    assert running.shadow_policy is not None and running.shadow_policy.version > 0
    resumed = make_engine("linucb", shadow="lints")
    resumed.resume_from(LearnedState.unpack(blob), {0: 400})
    assert resumed.shadow_policy is not None
    same_statistics(resumed.shadow_policy, running.shadow_policy)
    x = np.full(CONTEXT_DIM, 0.3)
    assert resumed.shadow_policy.select(x, ACTIONS).greedy == running.shadow_policy.select(x, ACTIONS).greedy
    other = make_engine("linucb", shadow="egreedy")  # another challenger type: the statistics carry over
    other.resume_from(LearnedState.unpack(blob), {0: 400})
    assert other.shadow_policy is not None and other.shadow_policy.name == "egreedy"
    same_statistics(other.shadow_policy, running.shadow_policy)
    unused = make_engine("linucb")  # no challenger configured: none runs
    unused.resume_from(LearnedState.unpack(blob), {0: 400})
    assert unused.shadow_policy is None


def test_a_snapshot_from_before_shadows_were_kept_still_loads_and_keeps_the_configured_challenger() -> None:
    running, _ = trained_blob("linucb")
    old = pickle.dumps({"format": FORMAT, "policy": running.policy.snapshot(), "models": None, "lift": None,
                        "seen": b""})
    state = LearnedState.unpack(old)
    assert state.shadow is None
    resumed = make_engine("linucb", shadow="lints")
    challenger = resumed.shadow_policy
    resumed.resume_from(state, {0: 400})
    assert resumed.shadow_policy is not None  # cold, as before: it learns from the snapshot's offsets on
    assert resumed.shadow_policy.name == "lints" and resumed.shadow_policy.version == 0
    assert resumed.shadow_policy.actions == [] and challenger is not None and challenger.actions == []
    same_statistics(resumed.policy, running.policy)


@pytest.mark.parametrize("kept", ["no shadow", "a shadow of other contexts"])
def test_after_a_rollback_to_a_snapshot_without_a_usable_shadow_running_and_restarted_challengers_match(
        kept: str) -> None:
    # The configured challenger was the live one (same object), trained in place: a running worker following
    # such a rollback kept its trained challenger, while one restarted from the snapshot had a cold one.
    stream = samples(300)
    running = make_engine("linucb", shadow="lints")
    running.learn(stream[:150], {0: 150})
    state = running.learned_state()
    state.shadow = None if kept == "no shadow" else make_policy("lints", 5, seed=2)
    blob = state.pack()
    running.learn(stream[150:], {0: 300})  # after the snapshot: rolled back
    running.follow_rollback(LearnedState.unpack(blob), {0: 300})
    restarted = make_engine("linucb", shadow="lints")
    restarted.resume_from(LearnedState.unpack(blob), {0: 300})
    assert running.shadow_policy is not None and restarted.shadow_policy is not None
    assert running.shadow_policy.version == restarted.shadow_policy.version == 0  # afresh, as the log says
    assert running.shadow_policy.actions == restarted.shadow_policy.actions == []
    more = samples(340)[300:]
    running.learn(more, {0: 340})
    restarted.learn(more, {0: 340})
    same_statistics(running.shadow_policy, restarted.shadow_policy)
    assert running.configured_shadow is not None and running.configured_shadow.version == 0  # never trained


def test_the_configured_policies_are_never_trained_and_carry_over_leaves_them_as_they_are() -> None:
    running = make_engine("linucb", shadow="lints")
    running.learn(samples(100), {0: 100})
    assert running.configured_policy.version == 0
    assert running.configured_shadow is not None and running.configured_shadow.version == 0
    for configured in (make_policy("linucb", CONTEXT_DIM, alpha=2.0), make_policy("lints", CONTEXT_DIM)):
        before = configured.snapshot()
        policy, _ = carry_over(configured, LearnedState.unpack(running.learned_state().pack()).policy)
        policy.update(np.full(CONTEXT_DIM, 0.1), "offer_bundle", 1.0)
        assert configured.snapshot() == before
