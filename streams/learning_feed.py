"""Every worker reads every partition of the learning topic (no consumer group) and applies it.

Exposures and rewards are additive statistics, so all workers converge to the same policy whatever
the order; what one worker's users teach reaches the others as fast as the topic delivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.decisions import LearningSample

log = logging.getLogger(__name__)


async def follow_learning(
    bootstrap: str, topic: str, apply: Callable[[list[LearningSample]], None], stop: asyncio.Event,
    fetch_max_wait_ms: int = 20,
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await consumer.start()
    try:
        partitions: set[int] | None = None
        while not partitions and not stop.is_set():
            partitions = consumer.partitions_for_topic(topic) or await _fetch_partitions(consumer, topic)
            if not partitions:
                await asyncio.sleep(0.5)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions or ())])
        await consumer.seek_to_beginning()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            samples: list[LearningSample] = []
            for records in batches.values():
                for rec in records:
                    try:
                        samples.append(LearningSample.from_json(rec.value))
                    except Exception as exc:  # written by us; a bad one is logged, never fatal
                        log.error("unreadable learning sample at %s: %s", rec.offset, exc)
            if samples:
                apply(samples)
    finally:
        await consumer.stop()


async def _fetch_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public refresh
    return consumer.partitions_for_topic(topic)
