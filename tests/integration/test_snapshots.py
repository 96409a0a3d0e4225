"""Versioned snapshots in Redis: save, list, trim, and a rollback that restores decisions exactly."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from bandits import make_policy
from cadence.runtime import Runtime
from learning.snapshots import SnapshotError, SnapshotInfo, SnapshotStore
from learning.state import LearnedState

pytestmark = pytest.mark.integration
ACTIONS = ["a", "b", "c", "d"]


def train(policy, best: str, rng: np.random.Generator, n: int) -> None:  # noqa: ANN001
    for _ in range(n):
        x = rng.normal(size=8)
        choice = policy.select(x, ACTIONS)
        policy.update(x, choice.action, 1.0 if choice.action == best else 0.0)


def choices(policy, n: int = 200) -> list[str]:  # noqa: ANN001
    rng = np.random.default_rng(99)
    return [policy.select(rng.normal(size=8), ACTIONS).action for _ in range(n)]


def store_for(rt: Runtime, keep: int = 20) -> SnapshotStore:
    return SnapshotStore(aioredis.Redis.from_url(rt.redis_url or ""), f"snap{uuid.uuid4().hex[:8]}", keep=keep)


def info(policy) -> SnapshotInfo:  # noqa: ANN001
    return SnapshotInfo(0, policy.name, policy.version, {0: 10, 1: 12})


def test_rollback_restores_the_earlier_policys_decisions_exactly(runtime: Runtime) -> None:
    store = store_for(runtime)
    rng = np.random.default_rng(1)
    policy = make_policy("linucb", 8, seed=4)
    train(policy, "a", rng, 400)

    async def go():  # noqa: ANN202
        v1 = await store.save(LearnedState(policy).pack(), info(policy))
        train(policy, "c", rng, 1500)  # the world changes: now "c" pays
        v2 = await store.save(LearnedState(policy).pack(), info(policy))
        generation_before = await store.generation()
        rolled = await store.rollback(v1.version, current_offsets={0: 500, 1: 480})
        latest_info, latest_blob = await store.load()
        _, v1_blob = await store.load(v1.version)
        _, v2_blob = await store.load(v2.version)
        return v1, v2, rolled, generation_before, await store.generation(), latest_info, latest_blob, v1_blob, v2_blob

    v1, v2, rolled, gen0, gen1, latest_info, latest_blob, v1_blob, v2_blob = asyncio.run(go())
    assert rolled.version == 3 and latest_info.version == 3 and gen1 == gen0 + 1
    assert latest_info.offsets == {0: 500, 1: 480}  # a restart will not re-learn what was rolled back
    assert latest_info.note == "rollback to version 1" and latest_info.policy_version == v1.policy_version
    restored = choices(LearnedState.unpack(latest_blob).policy)
    assert restored == choices(LearnedState.unpack(v1_blob).policy)
    assert restored != choices(LearnedState.unpack(v2_blob).policy)  # so the comparison can fail
    assert restored.count("a") > restored.count("c")


def test_a_rollback_to_a_version_that_cannot_be_read_is_refused_naming_versions_that_can(runtime: Runtime) -> None:
    # The rollback copied a truncated blob as it was: every running worker's poll raised UnpicklingError each
    # second (never following, so the leader's snapshots were refused for good), and a restarted worker skipped
    # the unreadable rollback version and loaded the state rolled back from under the new generation.
    store = store_for(runtime)
    policy = make_policy("linucb", 8, seed=4)
    train(policy, "a", np.random.default_rng(3), 50)

    async def go() -> tuple[str, tuple[int, ...], tuple[int, int | None], SnapshotInfo]:
        good = LearnedState(policy).pack()
        await store.save(good, info(policy))  # 1
        await store.save(good[: len(good) // 2], info(policy))  # 2: truncated
        await store.save(good, info(policy))  # 3
        with pytest.raises(SnapshotError) as refused:
            await store.rollback(2, {0: 30})
        kept, point = await store.versions(), await store.rollback_point()
        return str(refused.value), kept, point, await store.rollback(1, {0: 30})

    message, kept, point, rolled = asyncio.run(go())
    assert "snapshot version 2 cannot be read (UnpicklingError" in message
    assert "nothing rolled back" in message and "3, 1 (newest first)" in message
    assert kept == (1, 2, 3) and point == (0, None)  # nothing written, no generation bumped
    assert rolled.version == 4  # a readable version rolls back as before


def test_a_periodic_snapshot_of_the_state_before_a_rollback_does_not_undo_it(runtime: Runtime) -> None:
    # The leader's snapshot timer may fire after a rollback and before its own follow_rollbacks timer: its
    # pre-rollback state, saved as the newest version, used to become what every worker loads.
    store = store_for(runtime)
    rng = np.random.default_rng(2)
    policy = make_policy("linucb", 8, seed=4)
    train(policy, "a", rng, 400)

    async def go():  # noqa: ANN202
        v1 = await store.save(LearnedState(policy).pack(), info(policy))
        train(policy, "c", rng, 1500)
        followed = await store.generation()  # the generation the leader's live state belongs to
        await store.rollback(v1.version, current_offsets={0: 5})
        stale = await store.save_if_current(LearnedState(policy).pack(), info(policy), followed)
        latest_info, latest_blob = await store.load()
        _, v1_blob = await store.load(v1.version)
        after = await store.save_if_current(LearnedState(policy).pack(), info(policy), await store.generation())
        return stale, latest_info, latest_blob, v1_blob, after

    stale, latest_info, latest_blob, v1_blob, after = asyncio.run(go())
    assert stale is None
    assert latest_info.note == "rollback to version 1"
    assert choices(LearnedState.unpack(latest_blob).policy) == choices(LearnedState.unpack(v1_blob).policy)
    assert choices(LearnedState.unpack(latest_blob).policy) != choices(policy)  # so the comparison can fail
    assert after is not None and after.version == latest_info.version + 1  # once followed, saving goes on


def test_after_a_rollback_workers_do_not_load_the_scorer_published_before_it(runtime: Runtime) -> None:
    from features.context import CONTEXT_DIM
    from learning.live_models import LiveModels, ModelConfig
    from learning.model_exchange import ModelExchange
    from models.inputs import model_features
    from models.registry import ModelSample

    exchange = ModelExchange(aioredis.Redis.from_url(runtime.redis_url or ""), f"ex{uuid.uuid4().hex[:8]}")
    models = LiveModels(ModelConfig(min_samples=10), 0.1, 100.0)
    rng = np.random.default_rng(3)
    for _ in range(300):
        x = np.zeros(CONTEXT_DIM)
        x[0], x[1 + int(rng.integers(0, 3))] = 1.0, 1.0
        models.models.learn_one(ModelSample.conversion(model_features(x), "a", int(rng.random() < 0.2), 0.0))
    before = models.publish()  # published in generation 0, before the rollback

    async def go():  # noqa: ANN202
        await exchange.publish(before, generation=0)
        # a worker that followed the rollback (generation 1) scores with the rolled-back models (version 7)
        stale = await exchange.newer_scorer(7, generation=1)
        same_generation = await exchange.newer_scorer(7, generation=0)
        await exchange.publish(before, generation=1)  # the leader publishes again after following it
        fresh = await exchange.newer_scorer(7, generation=1)
        return stale, same_generation, fresh

    stale, same_generation, fresh = asyncio.run(go())
    assert stale is None
    assert same_generation is not None and same_generation.version == before.version  # so the check can fail
    assert fresh is not None and fresh.version == before.version


def test_list_and_trim_keep_the_newest_versions(runtime: Runtime) -> None:
    store = store_for(runtime, keep=3)
    policy = make_policy("linucb", 8, seed=1)

    async def go() -> list[int]:
        for _ in range(5):
            await store.save(LearnedState(policy).pack(), info(policy))
        with pytest.raises(SnapshotError, match=r"no snapshot version 1; versions kept: \[3, 4, 5\]"):
            await store.load(1)
        return [i.version for i in await store.list()]

    assert asyncio.run(go()) == [3, 4, 5]


def test_only_one_worker_leads_snapshot_writing(runtime: Runtime) -> None:
    store = store_for(runtime)

    async def go() -> tuple[bool, ...]:
        held = await store.try_lead("w1", 5), await store.try_lead("w2", 5), await store.try_lead("w1", 5)
        await store.try_lead("w1", 0.2)  # renewed with a short lease, then left to expire
        await asyncio.sleep(0.4)
        taken = await store.try_lead("w2", 5), await store.try_lead("w1", 5)  # w1 must not renew w2's lease
        return (*held, *taken)

    assert asyncio.run(go()) == (True, False, True, True, False)


def test_unpack_refuses_foreign_blobs() -> None:
    import pickle

    with pytest.raises(ValueError, match="not a cadence learned-state snapshot"):
        LearnedState.unpack(pickle.dumps({"something": "else"}))


def test_the_offsets_a_rollback_stores_are_the_true_ends_of_the_learning_topic(runtime: Runtime) -> None:
    """`cadence snapshots rollback` stores these ends as the offsets to resume learning from: past the last
    record of a batch too, so no sample already learned is applied again on top of the restored state."""
    from kafka import KafkaProducer

    from cadence.runtime import create_topics
    from streams.learning_feed import end_offsets

    topic = f"ends{uuid.uuid4().hex[:8]}"
    create_topics(runtime.kafka_bootstrap or "", [topic], partitions=2)
    producer = KafkaProducer(bootstrap_servers=runtime.kafka_bootstrap, linger_ms=50)
    sent = [producer.send(topic, b"sample", partition=0) for _ in range(10)]  # one batch: offsets 0..9
    producer.flush()
    producer.close()
    assert [f.get().offset for f in sent] == list(range(10))
    assert end_offsets(runtime.kafka_bootstrap or "", topic) == {0: 10, 1: 0}


def test_a_rollback_deletes_no_version_whatever_keep_the_store_that_made_it_has(runtime: Runtime) -> None:
    # `cadence snapshots rollback` builds its store with the CLI shell's CADENCE_SNAPSHOTS_KEPT (20 unless set
    # there): its rollback trimmed the versions down to that, deleting rollback points the workers keep (200).
    workers = store_for(runtime, keep=200)
    cli = SnapshotStore(workers.client, workers.namespace, keep=5)
    policy = make_policy("linucb", 8, seed=1)

    async def go() -> tuple[list[int], list[int]]:
        for _ in range(30):
            await workers.save(LearnedState(policy).pack(), info(policy))
        await cli.rollback(10, {0: 5})
        after_rollback = [i.version for i in await workers.list()]
        await SnapshotStore(workers.client, workers.namespace, keep=12).save(LearnedState(policy).pack(), info(policy))
        return after_rollback, [i.version for i in await workers.list()]

    after_rollback, after_save = asyncio.run(go())
    assert after_rollback == list(range(1, 32))
    assert after_save == list(range(21, 33))  # the workers' next save trims, with their own setting


def test_older_versions_are_thinned_to_one_an_hour_and_one_a_day_not_deleted(runtime: Runtime) -> None:
    # Keeping only the newest versions, a version every 30 s covered 10 minutes: a bad change noticed an hour
    # or a day later could not be rolled back.
    import time

    from learning.retention import DAY_S, Retention, kept

    store = SnapshotStore(store_for(runtime).client, f"thin{uuid.uuid4().hex[:8]}", keep=3, hourly=24, daily=7)
    policy = make_policy("linucb", 8, seed=1)
    blob, now = LearnedState(policy).pack(), time.time()
    created = [now - 10 * DAY_S + i * 1200.0 for i in range(720)]  # a version every 20 minutes for 10 days

    async def go() -> tuple[list[SnapshotInfo], Retention | None]:
        for at in created:
            i = info(policy)
            i.created_at = at
            await store.save(blob, i)
        return await store.list(), await store.recorded_retention()

    rows, recorded = asyncio.run(go())
    versions = [r.version for r in rows]
    assert versions[-3:] == [718, 719, 720]
    assert now - rows[0].created_at > 5 * DAY_S  # a week of days back (to the end of the 6th day before today)
    assert len(versions) <= 3 + 24 + 7 + 1
    assert set(versions) == set(kept(zip(range(1, 721), created, strict=True), now, store.retention))
    assert recorded == store.retention  # what `cadence snapshots list` shows as the workers' rule


def test_the_version_a_pending_rollback_wrote_is_never_trimmed(runtime: Runtime) -> None:
    store = store_for(runtime, keep=3)
    store.retention = type(store.retention)(3, 0, 0)  # the newest 3 only: no hour or day keeps it
    policy = make_policy("linucb", 8, seed=1)
    blob = LearnedState(policy).pack()

    async def go() -> tuple[list[int], int | None, list[int]]:
        for _ in range(5):
            await store.save(blob, info(policy))
        rolled = await store.rollback(4, {0: 5})  # version 6
        for _ in range(5):  # the leader's next saves (it followed the rollback)
            await store.save(blob, info(policy))
        kept_while_pending = await store.versions()
        loaded = await store.load_rollback(rolled.version)
        await store.rollback(9, {0: 6})  # version 12: 6 is no rollback point any more
        await store.save(blob, info(policy))
        return list(kept_while_pending), loaded[0].version if loaded else None, list(await store.versions())

    kept_while_pending, loaded, after_next_rollback = asyncio.run(go())
    assert kept_while_pending == [6, 9, 10, 11]
    assert loaded == 6
    assert after_next_rollback == [11, 12, 13]
