"""A worker that resumes from a snapshot knows which learning samples the snapshot had applied.

A crashed worker's batch is read again and its samples re-emitted on the learning topic, after the offsets of a
snapshot that may already hold their originals. Workers that kept running drop the copies (``SeenKeys``); one
that starts from the snapshot used to apply them a second time, and its policy parted from the others for good.
"""

from __future__ import annotations

import numpy as np
import redis.asyncio as aioredis

from bandits import make_policy
from cadence.metrics import Metrics
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningSample
from engine.processor import Engine, EngineConfig
from engine.replay import SNAPSHOT_KEYS, SeenKeys
from features.context import CONTEXT_DIM
from features.store import RedisFeatureStore
from learning.state import LearnedState
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext


def make_engine() -> Engine:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected: learning only
    store = RedisFeatureStore(client, "resume", ttl_s=3600, dedup_ring=32)
    return Engine(store, PolicyContext(load_catalogue(DEFAULT_CATALOGUE)), make_policy("linucb", CONTEXT_DIM, seed=1),
                  Metrics(), EngineConfig())


def samples(first: int, n: int) -> list[LearningSample]:
    rng = np.random.default_rng(first)
    out = []
    for i in range(first, first + n):
        x = np.zeros(CONTEXT_DIM)
        x[0], x[1 + i % 3] = 1.0, 1.0
        x[11] = rng.random()
        decision = f"{i:024x}"
        out.append(LearningSample("exposure", decision, "offer_10pct", x.tolist(), probability=0.9,
                                  placement="home_hero", ts=1000.0 + i, mode="exploit"))
        if i % 4 == 0:
            out.append(LearningSample("reward", decision, "offer_10pct", x.tolist(), reward=1.0, probability=0.9,
                                      placement="home_hero", ts=1001.0 + i, mode="exploit", reward_type="click"))
    return out


def test_a_sample_re_emitted_after_the_snapshot_is_not_applied_again_by_a_worker_resuming_from_it() -> None:
    running = make_engine()
    before = samples(0, 40)
    running.learn(before, {0: len(before)})
    blob, offsets = running.learned_state().pack(), dict(running.learned_offsets)  # what save_snapshot stores
    copies = before[-10:]  # the crashed batch, re-emitted after the snapshot's offsets
    after = [*copies, *samples(40, 20)]
    running.learn(after, {0: len(before) + len(after)})

    resumed = make_engine()
    resumed.resume_from(LearnedState.unpack(blob), offsets)
    resumed.learn(after, {0: len(before) + len(after)})  # reads on from the snapshot's offsets

    a, b = running.policy.stats("offer_10pct"), resumed.policy.stats("offer_10pct")
    np.testing.assert_allclose(b.gram, a.gram)
    np.testing.assert_allclose(b.sums, a.sums)
    assert resumed.lift.result() == running.lift.result()


def test_the_snapshot_carries_the_newest_keys_only_and_a_restored_set_keeps_its_capacity() -> None:
    seen = SeenKeys(capacity=SNAPSHOT_KEYS + 100)
    keys = [f"d{i}:exposure:" for i in range(SNAPSHOT_KEYS + 50)]
    assert all(seen.first_time(k) for k in keys)
    carried = seen.newest()
    assert len(carried) == 8 * SNAPSHOT_KEYS

    restored = SeenKeys(capacity=SNAPSHOT_KEYS + 100)
    restored.remember(carried)
    assert not restored.first_time(keys[-1]) and not restored.first_time(keys[50])  # the newest are known
    assert restored.first_time(keys[49])  # older than what the snapshot carries: applied again
    small = SeenKeys(capacity=10)
    small.remember(carried)
    assert not small.first_time(keys[-1]) and small.first_time(keys[-11])  # the newest ten kept


def test_a_rollback_that_cannot_be_followed_changes_nothing_however_often_it_is_tried() -> None:
    # follow_rollback swapped the digests of the samples applied for an empty set before the carry-over raised
    # PolicyMismatch (a snapshot of other contexts): the worker kept its policy, then applied re-emitted copies
    # of samples it had applied a second time, and every retry (each second) did it again.
    import pytest

    from bandits.restore import PolicyMismatch

    running = make_engine()
    applied = samples(0, 40)
    running.learn(applied, {0: 40})
    version, offsets = running.policy.version, dict(running.learned_offsets)
    other = LearnedState(make_policy("linucb", 5, seed=1))  # a snapshot of an engine with 5-value contexts
    for _ in range(3):  # the follower's retries
        with pytest.raises(PolicyMismatch):
            running.follow_rollback(other, {0: 10})
    assert running.learned_offsets == offsets and running._lift_seen is None  # noqa: SLF001
    running.learn(applied[-10:], {0: 41})  # a crashed worker's re-emitted copies
    assert running.policy.version == version
