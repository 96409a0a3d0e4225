"""Every worker reads every partition of the learning topic (no consumer group) and applies it.

Exposures and rewards are additive statistics, so all workers converge to the same policy whatever
the order; what one worker's users teach reaches the others as fast as the topic delivers. A worker
starts from the offsets of the snapshot it loaded (or from the beginning when there is none).
Each message also says which worker wrote it and how far that worker had got in event time; the
batches go to the engine whole, so it can close label windows at the slowest worker's progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.decisions import LearningBatch, decode_batch

log = logging.getLogger(__name__)

OnBatch = Callable[[list[LearningBatch], dict[int, int]], None]


async def learning_partitions(consumer: AIOKafkaConsumer, topic: str, stop: asyncio.Event) -> set[int]:
    while not stop.is_set():
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
            partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        await asyncio.sleep(0.5)
    return set()


async def follow_learning(
    bootstrap: str, topic: str, on_batch: OnBatch, stop: asyncio.Event,
    start_offsets: dict[int, int] | None = None, fetch_max_wait_ms: int = 20,
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        partitions = await learning_partitions(consumer, topic, stop)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            if start_offsets and tp.partition in start_offsets:
                consumer.seek(tp, start_offsets[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            read: list[LearningBatch] = []
            positions: dict[int, int] = {}
            for tp, records in batches.items():
                for rec in records:
                    try:
                        read.append(decode_batch(rec.value))
                    except Exception as exc:  # written by us; a bad one is logged, never fatal
                        log.error("unreadable learning sample at %s/%s: %s", tp.partition, rec.offset, exc)
                if records:
                    positions[tp.partition] = records[-1].offset + 1
            if positions:
                on_batch(read, positions)
    finally:
        await consumer.stop()


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """Current end offsets of every partition (kafka-python, for the CLI's rollback).

    Read from the high watermark of a fetch, not from ListOffsets alone: the embedded broker (Tansu 0.6.0)
    answers ListOffsets(latest) with the first offset of the partition's last record batch + 1, short of
    the end by the rest of that batch (load_tests/broker_retention.py shows it), and a rollback that resumed
    learning there would apply those samples again on top of the restored state.
    """
    import time

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    try:
        tps = [KTopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        listed = consumer.end_offsets(tps)  # a lower bound on Tansu, exact on Kafka
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, listed[tp])
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                missing = sorted(tp.partition for tp in tps if consumer.highwater(tp) is None)
                raise TimeoutError(f"{topic}: no fetch answered for partitions {missing} within {timeout_s:.0f} s; "
                                   "is the broker reachable? try again")
            consumer.poll(timeout_ms=50, max_records=1)  # the records are not needed, the watermark is
        return {tp.partition: max(int(listed[tp]), int(consumer.highwater(tp) or 0)) for tp in tps}
    finally:
        consumer.close()
