"""Redis away while a worker starts or follows levers/erasures: counted, so CadenceFeatureStoreErrors fires
(before, the worker only logged, and with no batch running no store error was ever counted)."""

from __future__ import annotations

import asyncio

from cadence.metrics import Metrics
from streams.app import store_call


def count(metrics: Metrics, op: str) -> float:
    return metrics.registry.get_sample_value("cadence_feature_store_errors_total", {"op": op}) or 0.0


def test_a_failed_call_is_counted_by_op_and_not_raised() -> None:
    metrics = Metrics()

    async def away() -> None:
        raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")

    async def fine() -> None:
        pass

    async def run() -> list[bool]:
        return [await store_call(metrics, "startup", away, "reading snapshots and levers"),
                await store_call(metrics, "shared_state", away, "refreshing levers/erasures"),
                await store_call(metrics, "shared_state", away, "refreshing levers/erasures"),
                await store_call(metrics, "shared_state", fine, "refreshing levers/erasures")]

    assert asyncio.run(run()) == [False, False, False, True]
    assert count(metrics, "startup") == 1
    assert count(metrics, "shared_state") == 2


def test_readiness_is_exported_and_starts_at_zero() -> None:
    metrics = Metrics()
    assert metrics.registry.get_sample_value("cadence_worker_ready") == 0.0
    metrics.worker_ready.set(1)
    assert metrics.registry.get_sample_value("cadence_worker_ready") == 1.0


def test_a_failure_that_is_not_redis_is_not_counted_as_a_store_error() -> None:
    # a damaged lever book paged "cannot use the feature store (Redis)" (CadenceFeatureStoreErrors, critical)
    from redis.exceptions import ConnectionError as RedisConnectionError

    from policy.levers import LeverError

    metrics = Metrics()

    async def damaged() -> None:
        raise LeverError("lever book JSON is damaged; restore it from the audit log")

    async def redis_away() -> None:
        raise RedisConnectionError("Connection refused")

    async def run() -> list[bool]:
        return [await store_call(metrics, "shared_state", damaged, "refreshing levers/erasures"),
                await store_call(metrics, "shared_state", redis_away, "refreshing levers/erasures")]

    assert asyncio.run(run()) == [False, False]
    assert count(metrics, "shared_state") == 1
