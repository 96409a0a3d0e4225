"""A running worker follows a rollback (streams/rollbacks.py), against the embedded Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from cadence.runtime import Runtime
from contracts.decisions import encode_samples
from learning.snapshots import SnapshotInfo, SnapshotStore
from learning.state import LearnedState
from streams.learning_feed import FeedControl, deliver
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


def test_a_rollback_version_damaged_after_the_rollback_says_which_and_what_to_do(runtime: Runtime) -> None:
    # Each poll raised the bare UnpicklingError ("pickle data was truncated"), every second, naming neither the
    # version nor the way out.
    store = store_for(runtime)
    engine = make_engine()
    status: dict[str, Any] = {"generation": 0, "snapshot": None}

    async def go() -> str:
        engine.learn(samples(0, 40), {0: 50})
        v1 = await store.save(engine.learned_state().pack(), SnapshotInfo(0, "linucb", engine.policy.version))
        rolled = await store.rollback(v1.version, {0: 50})
        blob = await store.client.get(f"{store.namespace}:snap:{rolled.version}")
        await store.client.set(f"{store.namespace}:snap:{rolled.version}", blob[: len(blob) // 2])
        with pytest.raises(Exception) as failed:
            await RollbackFollower(store, engine, status).poll()
        return str(failed.value)

    message = asyncio.run(go())
    assert "snapshot version 2, which the rollback of generation 1 made live, cannot be read" in message
    assert "cadence snapshots rollback V" in message
    assert status["generation"] == 0  # not followed: tried again next second


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


def feed(engine, control: FeedControl, topic: list[bytes], pos: int, end: int, chunk: int = 3) -> int:  # noqa: ANN001
    """What streams.learning_feed.follow_learning does with one partition, the broker a list of records."""
    positions: dict[int, int] = {0: pos}
    while pos < end:
        if control.pending is not None:
            pos = control.take([0])[0]
            positions[0] = pos
        upto = min(pos + chunk, end)
        deliver({0: [(o, topic[o]) for o in range(pos, upto)]}, engine.learn_batches, control, positions)
        pos = upto
    return pos


@pytest.mark.parametrize("read_at_rollback", [14, 26])
def test_a_running_worker_and_one_restarted_after_a_rollback_end_with_the_same_policy(
    runtime: Runtime, read_at_rollback: int
) -> None:
    # The rollback's snapshot carries the learning topic's end offsets O at the rollback: a worker restarting
    # from it applies the samples from O on. A running worker used to swap in the policy and read on from
    # where its feed was (P): behind the rollback (P < O, 14) it applied samples the rollback kept out; having
    # read samples sent after it (P > O, 26) before following it, it lost them. Its lift counts every sample
    # once either way (a rollback does not restore the lift).
    topic = [encode_samples(samples(10 * i, 10), source="w1") for i in range(30)]
    rollback_at, end = 20, 30  # O: the topic's end when the operator rolls back; then 10 more are sent
    store = store_for(runtime)
    running, control = make_engine(), FeedControl()
    status: dict[str, Any] = {"generation": 0, "snapshot": None}
    follower = RollbackFollower(store, running, status, control)

    async def go() -> tuple[SnapshotInfo, bytes] | None:
        pos = feed(running, control, topic, 0, 10)
        v1 = await store.save(running.learned_state().pack(),
                              SnapshotInfo(0, "linucb", 1, dict(running.learned_offsets)))
        pos = feed(running, control, topic, pos, min(read_at_rollback, rollback_at))
        await store.rollback(v1.version, {0: rollback_at})
        pos = feed(running, control, topic, pos, read_at_rollback)  # read before its follow_rollbacks timer fires
        await follower.poll()
        feed(running, control, topic, pos, end)
        return await store.load()  # what a worker restarting now loads

    found = asyncio.run(go())
    assert found is not None
    info, blob = found
    restarted, reference = make_engine(), make_engine()
    restarted.resume_from(LearnedState.unpack(blob), info.offsets)
    feed(restarted, FeedControl(), topic, info.offsets[0], end)
    feed(reference, FeedControl(), topic, 0, end)  # every sample once, no rollback: the lift to compare with

    a, b = stats(running), stats(restarted)
    assert not np.allclose(a[0], stats(reference)[0])  # the rollback did take something out
    np.testing.assert_allclose(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1])
    assert running.policy.version == restarted.policy.version
    assert running.learned_offsets == restarted.learned_offsets == {0: end}
    assert running.lift.to_state() == reference.lift.to_state()


def test_a_second_rollback_while_the_feed_reads_the_first_ones_lift_only_stretch_counts_every_sample_once() -> None:
    # follow_rollback returned learned_offsets as how far the lift had counted, but it was already the first
    # rollback's offsets (20) while the lift had counted up to the feed (12): the second rewind sought to 20 and
    # records 12..20 never reached the lift (220 decisions counted, 300 sent). And the second follow took the
    # policy's digests for the lift's, forgetting the samples the lift had counted in 8..12: a re-emitted copy
    # of one (here 15, of 10) was counted again.
    topic = [encode_samples(samples(10 * i, 10), source="w1") for i in range(30)]
    topic[15] = topic[10]  # a crashed worker's batch, re-emitted
    running, control = make_engine(), FeedControl()
    pos = feed(running, control, topic, 0, 5)
    blob = running.learned_state().pack()
    pos = feed(running, control, topic, pos, 8)  # behind: at 8 when the operator rolls back at 20

    def follow() -> int:
        control.rewind({0: 20}, running.follow_rollback(LearnedState.unpack(blob), {0: 20}))
        return control.take([0])[0]

    assert follow() == 8
    feed(running, control, topic, 8, 12)  # the lift-only stretch, part of it
    assert follow() == 12
    feed(running, control, topic, 12, 30)
    reference = make_engine()
    feed(reference, FeedControl(), topic, 0, 30)
    assert running.lift.to_state() == reference.lift.to_state()
    assert running.learned_offsets == running.lift_offsets == {0: 30}


@pytest.mark.parametrize("read_at_rollback", [8, 26])
def test_no_snapshot_pairs_the_policys_offsets_with_a_lift_counted_elsewhere(read_at_rollback: int) -> None:
    # While the feed reads again after a rollback, the lift has counted up to other offsets than the policy
    # applied: a snapshot taken then (offsets 20, lift counted to 12) made a worker restarted from it count 220
    # decisions, 300 sent. The engine says when its state can be saved; once the rewind is read, it can.
    topic = [encode_samples(samples(10 * i, 10), source="w1") for i in range(30)]
    running, control = make_engine(), FeedControl()
    pos = feed(running, control, topic, 0, 5)
    blob = running.learned_state().pack()
    pos = feed(running, control, topic, pos, read_at_rollback)
    assert running.lift_in_step()
    control.rewind({0: 20}, running.follow_rollback(LearnedState.unpack(blob), {0: 20}))
    assert not running.lift_in_step()  # not before the feed has read past the rewind
    pos = control.take([0])[0]
    assert pos == min(read_at_rollback, 20)
    pos = feed(running, control, topic, pos, 14 if read_at_rollback < 20 else 23)
    assert not running.lift_in_step()  # lift-only records 8..20 / policy-only ones 20..26 being read
    feed(running, control, topic, pos, 28)
    assert running.lift_in_step() and control.active is None
    snapshot, offsets = running.learned_state().pack(), dict(running.learned_offsets)  # save_snapshot
    restarted, reference = make_engine(), make_engine()
    restarted.resume_from(LearnedState.unpack(snapshot), offsets)
    feed(restarted, FeedControl(), topic, offsets[0], 30)
    feed(running, control, topic, 28, 30)
    feed(reference, FeedControl(), topic, 0, 30)
    assert restarted.lift.to_state() == running.lift.to_state() == reference.lift.to_state()
