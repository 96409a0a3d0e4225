"""Output records written as one record batch per topic partition.

``AIOKafkaProducer.send`` costs about 15 µs of CPU per message (a future, the partitioner and the
accumulator for each); appending to a ``BatchBuilder`` and sending the batch costs about 1 µs
(load_tests/README_e2e.md). A worker's batch has one decision per request, so outputs go this way.

Keyed records land where Kafka's default partitioner would put them (murmur2 of the key), so a consumer
of decisions sees each user's decisions in order on one partition; unkeyed records rotate over the
partitions batch by batch.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

MAX_BATCH_BYTES = 512 * 1024  # below the broker's default message.max.bytes (1 MB)


class OutRecord(NamedTuple):
    """One record to send (immutable). A named tuple: made once per decision, it costs ~0.2 us where a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost ~0.5 us."""

    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone (compacted topics)
    headers: tuple[tuple[str, bytes], ...] = ()


class OutputSender:
    """Sends records and waits until the broker has acknowledged all of them."""

    def __init__(self, bootstrap: str, linger_ms: int = 2) -> None:
        self.bootstrap = bootstrap
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._partitions: dict[str, list[int]] = {}
        self._partitioner = DefaultPartitioner()
        self._key_partition: dict[tuple[bytes, int], int] = {}
        self._rotation = itertools.count()
        self._stopped = False

    async def start(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._stopped:  # a late batch at shutdown: fail it (not committed, read again), not a new producer
                raise RuntimeError("the output sender is stopped (the worker is shutting down)")
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=self.linger_ms,
                                            max_batch_size=MAX_BATCH_BYTES, acks=1)
                await producer.start()
                self._producer = producer
            return self._producer

    async def stop(self) -> None:
        self._stopped = True
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()  # flushes what is still buffered

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = sorted(await producer.partitions_for(topic))
            self._partitions[topic] = parts
        return parts

    def _partition(self, key: bytes | None, parts: list[int], spread: int) -> int:
        if key is None:
            return parts[spread % len(parts)]
        cached = self._key_partition.get((key, len(parts)))
        if cached is None:
            if len(self._key_partition) > 200_000:
                self._key_partition.clear()
            cached = self._partitioner(key, parts, parts)
            self._key_partition[(key, len(parts))] = cached
        return cached

    async def send(self, records: list[OutRecord]) -> None:
        """Send ``records`` and wait until the broker has acknowledged all of them."""
        await (await self.submit(records))

    async def submit(self, records: list[OutRecord]) -> asyncio.Future:
        """Hand ``records`` to the producer; the returned future is done when the broker has them all.

        Per partition, batches are sent in the order they are submitted, so a caller can go on with its
        next batch while this one is on its way and still keep each partition's records in order.
        """
        if not records:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        producer = self._producer or await self.start()
        spread = next(self._rotation)
        grouped: dict[tuple[str, int], list[OutRecord]] = defaultdict(list)
        for rec in records:
            parts = self._partitions.get(rec.topic) or await self._partitions_of(producer, rec.topic)
            grouped[(rec.topic, self._partition(rec.key, parts, spread))].append(rec)
        pending = []
        for (topic, partition), recs in grouped.items():
            batch = producer.create_batch()
            for rec in recs:
                if batch.append(key=rec.key, value=rec.value, timestamp=None, headers=list(rec.headers)) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=rec.key, value=rec.value, timestamp=None, headers=list(rec.headers)) \
                            is None:
                        raise ValueError(f"a record for {topic} is larger than {MAX_BATCH_BYTES} bytes")
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        return asyncio.gather(*pending)
