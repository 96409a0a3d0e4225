"""Every worker reads every partition of the learning topic (no consumer group) and applies it.

Exposures and rewards are additive statistics, so all workers converge to the same policy whatever
the order; what one worker's users teach reaches the others as fast as the topic delivers. A worker
starts from the offsets of the snapshot it loaded (or from the beginning when there is none); after it
follows a rollback, from the rollback snapshot's offsets again (``FeedControl``).
Each message also says which worker wrote it and how far that worker had got in event time; the
batches go to the engine whole, so it can close label windows at the slowest worker's progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from contracts.decisions import LearningBatch, decode_batch

log = logging.getLogger(__name__)

# (batches, positions, policy_only, lift_only, lifted): see ``deliver``
OnBatch = Callable[[list[LearningBatch], dict[int, int], list[LearningBatch], list[LearningBatch], dict[int, int]],
                   None]


@dataclass(slots=True)
class Rewind:
    """Where a running feed reads again from once its worker followed a rollback, as a worker restarting
    from the rollback's snapshot would: the samples from the snapshot's offsets on go into the policy and
    models; the lift goes on counting each sample once (a rollback does not restore it)."""

    policy_from: dict[int, int]  # the rollback snapshot's offsets (partition -> next offset; absent: all)
    lift_from: dict[int, int]  # how far this worker had applied, so its lift counted (absent: nothing)

    def start(self, partition: int) -> int:
        return min(self.policy_from.get(partition, 0), self.lift_from.get(partition, 0))

    def end(self, partition: int) -> int:
        return max(self.policy_from.get(partition, 0), self.lift_from.get(partition, 0))


class FeedControl:
    """A rollback follower posts a rewind (``rewind``); the feed takes it between two fetches (``take``),
    seeks, drops what it fetched meanwhile, and sorts the records it reads again (``kind``) until every
    partition is past the rewind's end."""

    def __init__(self) -> None:
        self.pending: Rewind | None = None
        self.active: Rewind | None = None

    def rewind(self, policy_from: Mapping[int, int], lift_from: Mapping[int, int]) -> None:
        self.pending = Rewind(dict(policy_from), dict(lift_from))

    def take(self, partitions: Iterable[int]) -> dict[int, int]:
        """The pending rewind becomes active; returns the offset to seek each partition to."""
        assert self.pending is not None
        self.active, self.pending = self.pending, None
        return {p: self.active.start(p) for p in partitions}

    def kind(self, partition: int, offset: int) -> tuple[bool, bool]:
        """(into the policy, into the lift) for the record at ``offset``."""
        rewind = self.active
        if rewind is None:
            return True, True
        return offset >= rewind.policy_from.get(partition, 0), offset >= rewind.lift_from.get(partition, 0)

    def settle(self, positions: Mapping[int, int]) -> None:
        """``positions``: the feed's next offset per partition; past every rewind's end, the rewind is over."""
        rewind = self.active
        if rewind is not None and all(positions.get(p, 0) >= rewind.end(p)
                                      for p in {*rewind.policy_from, *rewind.lift_from}):
            self.active = None


def deliver(read: Mapping[int, Iterable[tuple[int, bytes]]], on_batch: OnBatch, control: FeedControl,
            positions: dict[int, int]) -> None:
    """One fetch's records (partition -> (offset, value)) to ``on_batch``: ``batches`` go into the policy,
    models and lift, ``policy_only`` (read again after a rollback, counted already) not into the lift,
    ``lift_only`` (before a rollback's offsets, not counted yet) only into the lift. The positions handed on
    are those of the records that went into the policy (a snapshot pairs them with it), then those of the
    records that went into the lift (``lifted``: how far it counted, where a later rollback's rewind starts);
    ``positions`` (the feed's next offset per partition) is updated with every record."""
    batches: list[LearningBatch] = []
    policy_only: list[LearningBatch] = []
    lift_only: list[LearningBatch] = []
    learned: dict[int, int] = {}
    lifted: dict[int, int] = {}
    for partition, records in read.items():
        for offset, value in records:
            positions[partition] = offset + 1
            into_policy, into_lift = control.kind(partition, offset)
            if into_policy:
                learned[partition] = offset + 1
            if into_lift:
                lifted[partition] = offset + 1
            try:
                batch = decode_batch(value)
            except Exception as exc:  # written by us; a bad one is logged, never fatal
                log.error("unreadable learning sample at %s/%s: %s", partition, offset, exc)
                continue
            if into_policy:
                (batches if into_lift else policy_only).append(batch)
            elif into_lift:
                lift_only.append(batch)
    if learned or lifted:
        on_batch(batches, learned, policy_only, lift_only, lifted)
    control.settle(positions)


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
    start_offsets: dict[int, int] | None = None, fetch_max_wait_ms: int = 20, control: FeedControl | None = None,
) -> None:
    """``control``: how a rollback repositions this feed (``FeedControl``)."""
    control = control if control is not None else FeedControl()
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
        positions: dict[int, int] = {}
        while not stop.is_set():
            if control.pending is not None:  # a rollback was followed: read again from its offsets
                for partition, offset in control.take(tp.partition for tp in tps).items():
                    consumer.seek(TopicPartition(topic, partition), offset)
                    positions[partition] = offset
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if control.pending is not None:
                continue  # fetched before the rollback was followed: read again after the seek
            deliver({tp.partition: [(rec.offset, rec.value) for rec in records]
                     for tp, records in batches.items() if records}, on_batch, control, positions)
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
