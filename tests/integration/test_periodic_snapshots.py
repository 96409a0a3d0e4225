"""The leader's periodic snapshot is saved only when something was learned (streams/snapshotting.py).

Before, an idle leader wrote a new, identical version every CADENCE_SNAPSHOT_INTERVAL_S: with 20 versions kept,
ten quiet minutes pushed every real rollback point out of Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from cadence.runtime import Runtime
from learning.snapshots import SnapshotStore
from learning.state import LearnedState
from streams.rollbacks import RollbackFollower
from streams.snapshotting import PeriodicSnapshots
from tests.unit.test_resume_from_snapshot import make_engine, samples

pytestmark = pytest.mark.integration


def store_for(rt: Runtime) -> SnapshotStore:
    return SnapshotStore(aioredis.Redis.from_url(rt.redis_url or ""), f"periodic{uuid.uuid4().hex[:8]}")


def worker(store: SnapshotStore, name: str) -> tuple[Any, dict[str, Any], PeriodicSnapshots]:
    engine = make_engine()
    status: dict[str, Any] = {"generation": 0, "snapshot": None}
    return engine, status, PeriodicSnapshots(store, engine, status, name)


def saved(result: Any) -> int | None:  # noqa: ANN401
    return result[0].version if result is not None else None


def test_an_idle_leader_saves_no_new_version_and_one_that_learned_does(runtime: Runtime) -> None:
    store = store_for(runtime)
    engine, _, periodic = worker(store, "w1")

    async def go() -> list[int | None]:
        engine.learn(samples(0, 40), {0: 50})
        out = [saved(await periodic.save()), saved(await periodic.save()), saved(await periodic.save())]
        engine.learn(samples(40, 10), {0: 60})
        out.append(saved(await periodic.save()))
        engine.learn([], {0: 61})  # an idle marker read: the offsets moved, a restart point further on
        out.append(saved(await periodic.save()))
        out.append(saved(await periodic.save()))
        return [*out, *(await store.versions())]

    assert asyncio.run(go()) == [1, None, None, 2, 3, None, 1, 2, 3]


def test_a_models_only_change_is_saved(runtime: Runtime) -> None:
    from features.context import CONTEXT_DIM
    from learning.live_models import LiveModels, ModelConfig
    from models.inputs import model_features
    from models.registry import ModelSample

    store = store_for(runtime)
    engine, _, periodic = worker(store, "w1")
    engine.models = LiveModels(ModelConfig(min_samples=10), 0.1, 100.0)

    async def go() -> list[int | None]:
        first = saved(await periodic.save())
        x = np.zeros(CONTEXT_DIM)
        x[0] = 1.0
        assert engine.models is not None
        engine.models.models.learn_one(ModelSample.churn(model_features(x), 1, 0.0))  # churn labels: no sample read
        return [first, saved(await periodic.save()), saved(await periodic.save())]

    assert asyncio.run(go()) == [1, 2, None]


def test_a_worker_saves_nothing_until_it_learns_past_the_version_it_loaded(runtime: Runtime) -> None:
    # a new leader that loaded a version at start and learned nothing since must not copy it as the newest
    store = store_for(runtime)
    leader, _, first = worker(store, "w1")
    resumed, status, second = worker(store, "w2")

    async def go() -> list[int | None]:
        leader.learn(samples(0, 40), {0: 50})
        v1 = saved(await first.save())
        info, blob = await store.load() or (None, b"")
        assert info is not None
        resumed.resume_from(LearnedState.unpack(blob), info.offsets)
        second.loaded()  # what streams.app's load_snapshot does
        idle = saved(await second.save())
        resumed.learn(samples(40, 10), {0: 60})
        return [v1, idle, saved(await second.save())]

    assert asyncio.run(go()) == [1, None, 2]


def test_after_following_a_rollback_the_leader_saves_the_lift_it_kept_then_what_it_learns(runtime: Runtime) -> None:
    store = store_for(runtime)
    engine, status, periodic = worker(store, "w1")
    follower = RollbackFollower(store, engine, status)

    async def go() -> list[int | None]:
        engine.learn(samples(0, 40), {0: 50})
        v1 = saved(await periodic.save())
        engine.learn(samples(40, 100), {0: 200})
        v2 = saved(await periodic.save())
        await store.rollback(1, {0: 200})  # version 3, generation 1
        refused = saved(await periodic.save())  # not followed yet: refused, and not taken for saved
        await follower.poll()
        # the state is version 3's but for the lift, which went on counting (a rollback does not restore it):
        # one version holds it (an idle leader never wrote it, and a restart took version 1's lift)
        after = saved(await periodic.save())
        idle = saved(await periodic.save())
        engine.learn(samples(140, 10), {0: 210})
        learned = saved(await periodic.save())
        _, blob = await store.load(after)  # type: ignore[misc]
        kept_lift = LearnedState.unpack(blob).lift
        return [v1, v2, refused, after, idle, learned, status["generation"],
                kept_lift is not None and kept_lift.mark() == lift_before_rollback[0]]

    lift_before_rollback: list[object] = []
    real_rollback = store.rollback

    async def rollback(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        lift_before_rollback.append(engine.lift.mark())
        return await real_rollback(*args, **kwargs)

    store.rollback = rollback  # type: ignore[method-assign]
    assert asyncio.run(go()) == [1, 2, None, 4, None, 5, 1, True]


def test_a_save_that_a_followed_rollback_overtakes_publishes_under_its_own_generation(runtime: Runtime) -> None:
    """A rollback followed while the leader's save was in its Redis round trips: the scorer of the rolled-back
    models was published under the rollback's generation (followers loaded it) and GET /health named the save's
    version instead of the rollback's (a change-set reviewer's repro)."""
    store = store_for(runtime)
    engine, status, periodic = worker(store, "w1")
    follower = RollbackFollower(store, engine, status)

    async def go() -> tuple[int | None, int, Any]:
        engine.learn(samples(0, 40), {0: 50})
        assert saved(await periodic.save()) == 1
        engine.learn(samples(40, 10), {0: 60})
        real_trim = store._trim

        async def trim_then_follow_a_rollback(*args: Any, **kwargs: Any) -> None:  # noqa: ANN401
            await real_trim(*args, **kwargs)
            await store.rollback(1, {0: 60})  # version 3, generation 1
            await follower.poll()  # the follow_rollbacks timer runs during the save's awaits

        store._trim = trim_then_follow_a_rollback  # type: ignore[method-assign]
        result = await periodic.save()
        assert result is not None
        return result[0].version, result[2], status["snapshot"]

    version, published_under, health = asyncio.run(go())
    assert (version, published_under, health) == (2, 0, 3)  # the scorer goes out as generation 0's
