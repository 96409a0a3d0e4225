"""Batch time and size carry their source, so the batch p99 alert is about the intake's batches, not diluted
by the many small GET /decide batches."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from bandits import make_policy
from cadence.metrics import Metrics
from cadence.settings import DEFAULT_CATALOGUE
from engine.processor import Engine, EngineConfig, RawMessage
from features.context import CONTEXT_DIM
from features.store import RedisFeatureStore
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext


def test_batches_are_counted_by_source() -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # never connected: malformed input only
    metrics = Metrics()
    engine = Engine(RedisFeatureStore(client, "source", ttl_s=3600, dedup_ring=32),
                    PolicyContext(load_catalogue(DEFAULT_CATALOGUE)), make_policy("linucb", CONTEXT_DIM, seed=1),
                    metrics, EngineConfig())
    bad = [RawMessage("web-events", 0, i, b"not json", 0.0) for i in range(3)]

    async def run() -> None:
        await engine.process(bad)
        await engine.process_isolating(bad[:1], source="http")
        await engine.process_isolating(bad[:2], source="http")

    asyncio.run(run())
    count = metrics.registry.get_sample_value
    assert count("cadence_batch_processing_seconds_count", {"source": "intake"}) == 1
    assert count("cadence_batch_processing_seconds_count", {"source": "http"}) == 2
    assert count("cadence_batch_size_events_sum", {"source": "http"}) == 3
