"""Direct intake and batched outputs on the real embedded broker: delivery, commits, retries, partitions."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from kafka import KafkaProducer

from cadence.runtime import Runtime
from engine.processor import RawMessage
from streams.intake import DirectIntake
from streams.outputs import OutputSender, OutRecord

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, n: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(n):
        producer.send(topic, key=f"user-{i % 37}".encode(), value=f"event-{i}".encode())
    producer.flush()
    producer.close()


async def read_until(intake: DirectIntake, got: list[RawMessage], n: int, timeout_s: float = 30.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while len(got) < n:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


def test_every_message_once_with_offsets_committed(runtime: Runtime, isolated: dict[str, str]) -> None:
    bootstrap = runtime.kafka_bootstrap or ""
    topic = isolated["topic_prefix"] + "web-events"
    produce(bootstrap, topic, 300)
    got: list[RawMessage] = []
    assigned: list[set] = []

    async def handle(batch: list[RawMessage]) -> None:
        got.extend(batch)

    def intake() -> DirectIntake:
        return DirectIntake(bootstrap, {topic: "web-events"}, isolated["app_id"], handle, assigned.append,
                            batch_size=50, commit_interval_s=0.1)

    first = intake()
    asyncio.run(read_until(first, got, 300))
    assert sorted(m.value for m in got) == sorted(f"event-{i}".encode() for i in range(300))
    assert {m.topic for m in got} == {"web-events"}  # the logical name, without the prefix
    assert assigned and {tp.partition for tp in assigned[0]} == {0, 1, 2, 3}

    # a new consumer of the same group starts after the committed offsets: only new events come
    produce(bootstrap, topic, 10)
    more: list[RawMessage] = []

    async def handle_more(batch: list[RawMessage]) -> None:
        more.extend(batch)

    second = DirectIntake(bootstrap, {topic: "web-events"}, isolated["app_id"], handle_more, lambda tps: None)
    asyncio.run(read_until(second, more, 10))
    assert len(more) == 10


def test_a_failed_batch_is_read_again_and_not_committed(runtime: Runtime, isolated: dict[str, str]) -> None:
    bootstrap = runtime.kafka_bootstrap or ""
    topic = isolated["topic_prefix"] + "ad-events"
    produce(bootstrap, topic, 40)
    got: list[RawMessage] = []
    failures = {"left": 1}

    async def handle(batch: list[RawMessage]) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("broker refused the outputs")
        got.extend(batch)

    intake = DirectIntake(bootstrap, {topic: "ad-events"}, isolated["app_id"], handle, lambda tps: None,
                          batch_size=1000, commit_interval_s=0.1)
    asyncio.run(read_until(intake, got, 40))
    assert failures["left"] == 0
    assert len(got) == 40 and len({(m.partition, m.offset) for m in got}) == 40  # every event, none twice


def test_outputs_land_where_kafkas_partitioner_puts_their_keys(runtime: Runtime, isolated: dict[str, str]) -> None:
    bootstrap = runtime.kafka_bootstrap or ""
    topic = isolated["topic_prefix"] + "decisions"
    erasures = isolated["topic_prefix"] + "erasures"
    keys = [f"user-{i}".encode() for i in range(200)]
    # where kafka-python's producer (Kafka's default murmur2 partitioner) puts each key
    reference = KafkaProducer(bootstrap_servers=bootstrap)
    expected = {k: reference.send(topic, key=k, value=b"ref").get(timeout=10).partition for k in keys}
    reference.close()

    async def go() -> tuple[dict[bytes, set[int]], int]:
        sender = OutputSender(bootstrap)
        await sender.send([OutRecord(topic, k, b"ours") for k in keys] + [OutRecord(topic, None, b"unkeyed")] * 30)
        await sender.send([OutRecord(erasures, b"user-1", None, (("requested_by", b"ops"),))])
        await sender.stop()
        consumer = AIOKafkaConsumer(topic, erasures, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        seen: dict[bytes, set[int]] = {}
        unkeyed, tomb = 0, None
        try:
            async with asyncio.timeout(20):
                while sum(len(v) for v in seen.values()) < 200 or unkeyed < 30 or tomb is None:
                    for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                        for r in recs:
                            if tp.topic == erasures:
                                tomb = r
                            elif r.key is None:
                                unkeyed += 1
                            elif r.value == b"ours":
                                seen.setdefault(r.key, set()).add(tp.partition)
        finally:
            await consumer.stop()
        assert tomb is not None and tomb.value is None and tomb.key == b"user-1"
        assert list(tomb.headers) == [("requested_by", b"ops")]
        return seen, unkeyed

    seen, unkeyed = asyncio.run(go())
    assert unkeyed == 30
    assert {k: seen[k] for k in keys} == {k: {expected[k]} for k in keys}


def test_a_batch_whose_outputs_are_not_delivered_is_read_again(runtime: Runtime, isolated: dict[str, str]) -> None:
    bootstrap = runtime.kafka_bootstrap or ""
    topic = isolated["topic_prefix"] + "email-events"
    produce(bootstrap, topic, 60)
    got: list[tuple[int, int]] = []
    refused: list[tuple[int, int]] = []

    async def handle(batch: list[RawMessage]) -> asyncio.Future:
        got.extend((m.partition, m.offset) for m in batch)
        delivered = asyncio.get_running_loop().create_future()
        if not refused:  # the broker refuses the first batch's outputs after the engine has moved on
            refused.extend((m.partition, m.offset) for m in batch)
            delivered.set_exception(ConnectionError("broker away"))
        else:
            delivered.set_result(None)
        return delivered

    intake = DirectIntake(bootstrap, {topic: "email-events"}, isolated["app_id"], handle, lambda tps: None,
                          batch_size=1000, commit_interval_s=0.1)

    def done() -> bool:
        return len(set(got)) == 60 and all(got.count(r) >= 2 for r in refused)

    async def run_all() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(intake.run(stop))
        async with asyncio.timeout(30):
            while not done():
                await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(run_all())
    assert refused and done()  # nothing lost, and every refused event came again


def test_offsets_are_committed_while_the_stream_is_quiet(runtime: Runtime, isolated: dict[str, str]) -> None:
    """The last batch's outputs are delivered after a moment; with no batch after it, its offsets must still
    be committed (not only at shutdown), or a crash during a quiet spell would read it again."""
    from kafka import TopicPartition as KafkaTopicPartition
    from kafka.admin import KafkaAdminClient

    bootstrap = runtime.kafka_bootstrap or ""
    topic = isolated["topic_prefix"] + "web-events"
    produce(bootstrap, topic, 30)
    got: list[RawMessage] = []

    async def handle(batch: list[RawMessage]) -> asyncio.Future:
        got.extend(batch)
        delivered = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, delivered.set_result, None)  # the broker's ack comes later
        return delivered

    intake = DirectIntake(bootstrap, {topic: "web-events"}, isolated["app_id"], handle, lambda tps: None,
                          commit_interval_s=0.1)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)

    def committed() -> int:
        group = isolated["app_id"]
        offsets = admin.list_group_offsets({group: [KafkaTopicPartition(topic, p) for p in range(4)]})[group]
        return sum(meta.offset for meta in offsets.values() if meta.offset > 0)

    async def run_quiet() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(intake.run(stop))
        try:
            async with asyncio.timeout(30):
                while len(got) < 30 or await asyncio.to_thread(committed) < 30:
                    await asyncio.sleep(0.1)
            return await asyncio.to_thread(committed)  # while the intake still runs, the stream quiet
        finally:
            stop.set()
            await task

    try:
        assert asyncio.run(run_quiet()) == 30
    finally:
        admin.close()


def test_three_workers_get_the_same_partitions_of_every_input_topic(runtime: Runtime,
                                                                    isolated: dict[str, str]) -> None:
    # A user's web, email and ad events share a key, so the same partition number on each topic. Round robin
    # over all topic-partitions (aiokafka's default) gave them to different workers once there were three.
    bootstrap = runtime.kafka_bootstrap or ""
    topics = {isolated["topic_prefix"] + name: name for name in ("web-events", "email-events", "ad-events")}
    assigned: dict[int, set] = {}

    async def handle(batch: list[RawMessage]) -> None:
        return None

    async def go() -> None:
        stop = asyncio.Event()
        intakes = [DirectIntake(bootstrap, topics, isolated["app_id"], handle,
                                lambda tps, i=i: assigned.__setitem__(i, set(tps))) for i in range(3)]
        tasks = [asyncio.create_task(intake.run(stop)) for intake in intakes]
        try:
            async with asyncio.timeout(60):
                while not (len(assigned) == 3 and sum(len(a) for a in assigned.values()) == 12
                           and all(set(i.assignment) == assigned[n] for n, i in enumerate(intakes))):
                    await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(go())
    for tps in assigned.values():
        per_topic = {topic: {tp.partition for tp in tps if tp.topic == topic} for topic in topics}
        assert len({frozenset(parts) for parts in per_topic.values()}) == 1, per_topic  # the same on every topic
    every = {(tp.topic, tp.partition) for tps in assigned.values() for tp in tps}
    assert len(every) == 12  # all of them, each once
