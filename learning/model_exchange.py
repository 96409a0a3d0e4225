"""How the workers share the live models through Redis (the only I/O of the model part).

Keys (namespace = app id):

- ``{ns}:models:scorer``  hash ``version`` -> the published scorer's model version, ``blob`` -> its JSON
  (``LiveScorer.to_json``: numbers only, no pickle), ``generation`` -> the snapshot generation it belongs
  to. The trainer writes it with each snapshot; the other workers read ``version`` and ``generation`` once
  a second and the blob when the version changed. A scorer of an older generation than the worker's (one
  published before a rollback) is not loaded: the worker keeps the rolled-back models' scorer.
- ``{ns}:models:churn``   list of encoded churn-label chunks (no user ids) of at most ``CHURN_CHUNK`` (1,000)
  labels each, pushed by partition owners about once a second, popped by the trainer. Bounded in bytes: an
  entry takes at most ``churn_chunk_bytes()`` (148 kB with 20 features; ~133 kB in practice), and the list
  is trimmed to the newest ``max_bytes`` (128 MiB) worth of entries (906), so a cluster without a trainer,
  or with a stuck one, holds at most that much. A batch pushed in one piece (an older worker's whole outbox,
  up to 6.4 MB) is split into chunks first. The trainer pops at most ``read_bytes`` (2 MiB, 14 chunks,
  14,000 labels, about ten times what it learns in a second) per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis

from learning.live_models import CHURN_CHUNK, LiveScorer, churn_chunk_bytes

CHURN_LIST_BYTES = 128 * 1024 * 1024  # the churn-label list holds at most this much (newest kept)
CHURN_READ_BYTES = 2 * 1024 * 1024  # the trainer pops at most this much at once


class ModelExchange:
    def __init__(self, client: aioredis.Redis, namespace: str, max_bytes: int = CHURN_LIST_BYTES,
                 read_bytes: int = CHURN_READ_BYTES, max_batches: int | None = None) -> None:
        """``max_batches`` overrides the entries kept (default: as many chunks as fit in ``max_bytes``)."""
        self.client = client
        self.namespace = namespace
        self.chunk_bytes = churn_chunk_bytes()
        self.max_batches = max_batches if max_batches is not None else max(1, max_bytes // self.chunk_bytes)
        self.read_batches = max(1, read_bytes // self.chunk_bytes)
        self.scorer_key = f"{namespace}:models:scorer"
        self.churn_key = f"{namespace}:models:churn"

    async def publish(self, scorer: LiveScorer, generation: int = 0) -> None:
        await self.client.hset(self.scorer_key, mapping={"version": scorer.version, "blob": scorer.to_json(),
                                                         "generation": generation})

    async def newer_scorer(
        self, than: int | None, generation: int = 0, refused: int | None = None
    ) -> LiveScorer | None:
        """The published scorer if its version differs from ``than`` (and from ``refused``, one this worker
        turned down already) and it was published in snapshot generation ``generation`` or later (None: nothing
        new, or only a scorer from before a rollback)."""
        raw, published_in = await self.client.hmget(self.scorer_key, ["version", "generation"])
        if raw is None or int(raw) in (than, refused) or int(published_in or 0) < generation:
            return None
        blob = await self.client.hget(self.scorer_key, "blob")
        return LiveScorer.from_json(blob.encode() if isinstance(blob, str) else blob) if blob is not None else None

    async def push_churn(self, chunks: bytes | Sequence[bytes]) -> None:
        """Chunks from ``LiveModels.take_churn_labels`` (one encoded batch too: split if larger than a chunk)."""
        entries = [piece for chunk in ([chunks] if isinstance(chunks, bytes) else chunks)
                   for piece in self._split(chunk)]
        if not entries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.churn_key, *entries[-self.max_batches:])
            pipe.ltrim(self.churn_key, -self.max_batches, -1)
            await pipe.execute()

    def _split(self, chunk: bytes) -> list[bytes]:
        if len(chunk) <= self.chunk_bytes:
            return [chunk]
        rows = orjson.loads(chunk)
        return [orjson.dumps(rows[i:i + CHURN_CHUNK]) for i in range(0, len(rows), CHURN_CHUNK)]

    async def pop_churn(self, most: int | None = None) -> list[bytes]:
        """The oldest chunks, at most ``most`` (default ``read_batches``: ``read_bytes`` worth)."""
        most = self.read_batches if most is None else most
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.lrange(self.churn_key, 0, most - 1)
            pipe.ltrim(self.churn_key, most, -1)
            batches, _ = await pipe.execute()
        return list(batches)
