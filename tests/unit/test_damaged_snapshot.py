"""A damaged newest snapshot does not keep starting workers down: the one before it is loaded instead.

Before, a truncated blob raised UnpicklingError at every start attempt: the worker stayed unready for ever,
logging every second, without naming the version or the rollback command, and without trying an older one.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from bandits import make_policy
from cadence.metrics import Metrics
from learning.snapshots import SnapshotError, SnapshotInfo
from learning.state import LearnedState
from streams.app import NoReadableSnapshot, newest_readable


class Snapshots:
    """The part of SnapshotStore the start reads, in memory."""

    def __init__(self, blobs: dict[int, bytes], fail: Exception | None = None, rollback: int | None = None) -> None:
        self.blobs, self.fail, self.rollback = blobs, fail, rollback

    async def rollback_point(self) -> tuple[int, int | None]:
        return (0, None) if self.rollback is None else (1, self.rollback)

    async def versions(self) -> tuple[int, ...]:
        if self.fail is not None:
            raise self.fail
        return tuple(sorted(self.blobs))

    async def load(self, version: int | None = None) -> tuple[SnapshotInfo, bytes] | None:
        assert version is not None
        if version not in self.blobs:
            raise SnapshotError(f"no snapshot version {version}")
        return SnapshotInfo(version, "linucb", version * 10, {0: version * 100}), self.blobs[version]


def blob(updates: int) -> bytes:
    policy = make_policy("linucb", 4, seed=1)
    for _ in range(updates):
        policy.update([1.0, 0.0, 0.0, 0.0], "a", 1.0)
    return LearnedState(policy).pack()


def failures(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("cadence_snapshot_load_failures_total") or 0.0


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before_naming_the_version_and_the_rollback(
        caplog: pytest.LogCaptureFixture) -> None:
    good = blob(3)
    store = Snapshots({1: blob(1), 2: good, 3: good[: len(good) // 2], 4: b"not a pickle"})
    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="streams.app"):
        found = asyncio.run(newest_readable(store, metrics))  # type: ignore[arg-type]
    assert found is not None
    info, state = found
    assert info.version == 2 and info.offsets == {0: 200}  # learning goes on from its offsets
    assert state.policy.version == 6  # update = exposure + reward
    assert failures(metrics) == 2
    assert "snapshot version 4 cannot be read" in caplog.text and "snapshot version 3 cannot be read" in caplog.text
    assert "cadence snapshots rollback 2" in caplog.text


def test_no_snapshot_is_a_fresh_start_and_none_readable_is_an_error_that_says_so() -> None:
    assert asyncio.run(newest_readable(Snapshots({}), Metrics())) is None  # type: ignore[arg-type]
    metrics = Metrics()
    with pytest.raises(NoReadableSnapshot, match="tried 2, 1"):
        asyncio.run(newest_readable(Snapshots({1: b"x", 2: b"y"}), metrics))  # type: ignore[arg-type]
    assert failures(metrics) == 2


def test_redis_away_is_raised_not_taken_for_a_damaged_snapshot() -> None:
    metrics = Metrics()
    with pytest.raises(RedisConnectionError):
        asyncio.run(newest_readable(Snapshots({}, fail=RedisConnectionError("refused")), metrics))  # type: ignore[arg-type]
    assert failures(metrics) == 0


def test_the_start_never_falls_back_below_the_version_the_last_rollback_made_live(
        caplog: pytest.LogCaptureFixture) -> None:
    # Versions before a rollback's hold the state rolled back from: with the rollback's version unreadable, the
    # start used to load the newest of them under the new generation (its periodic snapshot then accepted) and
    # suggest rolling back to it.
    good = blob(3)
    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="streams.app"), \
            pytest.raises(NoReadableSnapshot, match="version 3 is what the last rollback made live") as refused:
        asyncio.run(newest_readable(Snapshots({1: good, 2: good, 3: good[:40]}, rollback=3), metrics))  # type: ignore[arg-type]
    assert "cadence snapshots rollback V" in str(refused.value) and failures(metrics) == 1
    assert "cadence snapshots rollback 2" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="streams.app"):  # a damaged version after the rollback's
        found = asyncio.run(newest_readable(Snapshots({2: good, 3: good, 4: b"x"}, rollback=3), Metrics()))  # type: ignore[arg-type]
    assert found is not None and found[0].version == 3
    assert "cadence snapshots rollback 3" in caplog.text
