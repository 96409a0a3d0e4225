"""A running worker follows a rollback (streams/rollbacks.py), against the embedded Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from cadence.runtime import Runtime
from learning.snapshots import SnapshotInfo, SnapshotStore
from streams.rollbacks import RollbackFollower
from tests.unit.test_resume_from_snapshot import make_engine, samples

pytestmark = pytest.mark.integration
ACTION = "offer_10pct"


def store_for(rt: Runtime) -> SnapshotStore:
    return SnapshotStore(aioredis.Redis.from_url(rt.redis_url or ""), f"follow{uuid.uuid4().hex[:8]}")


def stats(engine) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    s = engine.policy.stats(ACTION)
    return np.array(s.gram), np.array(s.sums)


def test_a_rollback_whose_snapshot_could_not_be_read_is_followed_on_the_next_try(runtime: Runtime) -> None:
    # A Redis timeout while loading the rolled-back snapshot used to leave the worker on its pre-rollback
    # policy for good: the generation was marked followed before the load, so it was never tried again, and
    # the leader's next periodic snapshot (same generation) re-published the pre-rollback state.
    store = store_for(runtime)
    engine = make_engine()
    status: dict[str, Any] = {"generation": 0, "snapshot": None}
    follower = RollbackFollower(store, engine, status)

    async def go() -> tuple[bool, SnapshotInfo | None]:
        engine.learn(samples(0, 40), {0: 50})
        v1 = await store.save(engine.learned_state().pack(), SnapshotInfo(0, "linucb", engine.policy.version))
        v1_stats = stats(engine)
        engine.learn(samples(40, 200), {0: 300})  # after v1: to be rolled back
        assert not np.allclose(stats(engine)[0], v1_stats[0])  # so the comparison can fail
        await store.rollback(v1.version, {0: 300})
        real_load, calls = store.load, {"n": 0}

        async def flaky_load(version: int | None = None) -> Any:  # noqa: ANN401
            calls["n"] += 1
            if calls["n"] == 1:
                raise TimeoutError("Timeout reading from socket")
            return await real_load(version)

        store.load = flaky_load  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await follower.poll()  # the timer logs it and tries again in a second
        await follower.poll()
        after = stats(engine)
        followed = np.allclose(after[0], v1_stats[0]) and np.allclose(after[1], v1_stats[1])
        stale = await store.save_if_current(engine.learned_state().pack(),
                                            SnapshotInfo(0, "linucb", engine.policy.version), status["generation"])
        return followed, stale

    followed, saved = asyncio.run(go())
    assert followed
    assert status["generation"] == 1
    assert saved is not None  # once followed, the leader saves the rolled-back state (and what came after)


def test_a_periodic_snapshot_racing_a_rollback_never_becomes_what_workers_follow(runtime: Runtime) -> None:
    # The rollback wrote its version, then bumped the generation in a second round trip, and a save took its
    # version number outside its transaction: a leader's periodic snapshot landing in between passed the
    # generation check as a newer version, and workers, loading the latest on the bump, went back to the
    # pre-rollback state. Here the leader's save starts after 0..24 turns of the event loop into the
    # rollback, each on its own connection, so it lands before, inside and after it.
    async def trial(delay: int) -> bool:
        namespace = f"race{uuid.uuid4().hex[:8]}"
        cli = SnapshotStore(aioredis.Redis.from_url(runtime.redis_url or ""), namespace)
        leader_store = SnapshotStore(aioredis.Redis.from_url(runtime.redis_url or ""), namespace)
        leader = make_engine()
        leader.learn(samples(0, 40), {0: 50})
        v1 = await leader_store.save(leader.learned_state().pack(), SnapshotInfo(0, "linucb", 1, {0: 50}))
        v1_stats = stats(leader)
        leader.learn(samples(40, 200), {0: 300})
        status: dict[str, Any] = {"generation": await leader_store.generation(), "snapshot": v1.version}

        async def periodic() -> None:
            for _ in range(delay):
                await asyncio.sleep(0)
            await leader_store.save_if_current(leader.learned_state().pack(),
                                               SnapshotInfo(0, "linucb", 2, {0: 300}), status["generation"])

        await asyncio.gather(cli.rollback(v1.version, {0: 300}), periodic())
        await RollbackFollower(leader_store, leader, status).poll()
        after = stats(leader)
        await cli.client.aclose()
        await leader_store.client.aclose()
        return bool(np.allclose(after[0], v1_stats[0]) and np.allclose(after[1], v1_stats[1]))

    async def go() -> list[int]:
        return [d for d in range(25) if not await trial(d)]

    assert asyncio.run(go()) == []  # the delays after which workers followed the pre-rollback state
