"""How the workers share the live models through Redis (the only I/O of the model part).

Keys (namespace = app id):

- ``{ns}:models:scorer``  hash ``version`` -> the published scorer's model version, ``blob`` -> its JSON
  (``LiveScorer.to_json``: numbers only, no pickle), ``generation`` -> the snapshot generation it belongs
  to. The trainer writes it with each snapshot; the other workers read ``version`` and ``generation`` once
  a second and the blob when the version changed. A scorer of an older generation than the worker's (one
  published before a rollback) is not loaded: the worker keeps the rolled-back models' scorer.
- ``{ns}:models:churn``   list of encoded churn-label batches (no user ids), pushed by partition owners
  about once a second, popped by the trainer. Trimmed to the newest ``max_batches`` so that a cluster
  without a trainer cannot grow it without bound.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from learning.live_models import LiveScorer


class ModelExchange:
    def __init__(self, client: aioredis.Redis, namespace: str, max_batches: int = 10_000) -> None:
        self.client = client
        self.namespace = namespace
        self.max_batches = max_batches
        self.scorer_key = f"{namespace}:models:scorer"
        self.churn_key = f"{namespace}:models:churn"

    async def publish(self, scorer: LiveScorer, generation: int = 0) -> None:
        await self.client.hset(self.scorer_key, mapping={"version": scorer.version, "blob": scorer.to_json(),
                                                         "generation": generation})

    async def newer_scorer(self, than: int | None, generation: int = 0) -> LiveScorer | None:
        """The published scorer if its version differs from ``than`` and it was published in snapshot
        generation ``generation`` or later (None: nothing new, or only a scorer from before a rollback)."""
        raw, published_in = await self.client.hmget(self.scorer_key, ["version", "generation"])
        if raw is None or (than is not None and int(raw) == than) or int(published_in or 0) < generation:
            return None
        blob = await self.client.hget(self.scorer_key, "blob")
        return LiveScorer.from_json(blob.encode() if isinstance(blob, str) else blob) if blob is not None else None

    async def push_churn(self, batch: bytes) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.churn_key, batch)
            pipe.ltrim(self.churn_key, -self.max_batches, -1)
            await pipe.execute()

    async def pop_churn(self, most: int = 100) -> list[bytes]:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(self.churn_key, 0, most - 1)
            pipe.ltrim(self.churn_key, most, -1)
            batches, _ = await pipe.execute()
        return list(batches)
