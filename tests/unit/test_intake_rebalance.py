"""The direct intake across rebalances, driven through its real run loop by a scripted consumer.

aiokafka gives a new assignment fresh positions (read from the committed offsets), so what the intake kept of
an earlier ownership of a partition must not be committed once it owns the partition again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

import streams.intake as intake_module
from streams.intake import DirectIntake

TP = TopicPartition("web-events", 0)


class Record:
    def __init__(self, offset: int) -> None:
        self.offset, self.value, self.timestamp = offset, b"{}", 1_000


def records(first: int, end: int) -> dict[TopicPartition, list[Record]]:
    return {TP: [Record(offset) for offset in range(first, end)]}


class ScriptedConsumer:
    """Each ``getmany`` runs the next step of ``script`` (which may call the rebalance listener)."""

    script: list[Callable[[ScriptedConsumer], Awaitable[dict[TopicPartition, list[Record]]]]] = []

    def __init__(self, **_: Any) -> None:
        self.assigned: set[TopicPartition] = set()
        self.refuse_commits = False
        self.commit_s = 0.0  # how long a commit takes
        self.commits: list[tuple[str, int]] = []  # (committer, offset) as the group saw them
        self.steps = list(type(self).script)
        self.listener: Any = None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.assign()

    async def stop(self) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(self.commit_s)
        if self.refuse_commits:
            raise CommitFailedError("the group rebalanced and gave the partition to another member")
        self.commits.extend(("this worker", offset) for offset in offsets.values())

    async def revoke(self) -> None:
        await self.listener.on_partitions_revoked(set(self.assigned))
        self.assigned = set()

    async def assign(self) -> None:
        self.assigned = {TP}
        await self.listener.on_partitions_assigned({TP})

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0.01)
        return await self.steps.pop(0)(self) if self.steps else {}


async def run_intake(monkeypatch: pytest.MonkeyPatch, script: list[Any]) -> tuple[ScriptedConsumer, list[int]]:
    consumers: list[ScriptedConsumer] = []

    def make(**kwargs: Any) -> ScriptedConsumer:
        consumers.append(ScriptedConsumer(**kwargs))
        return consumers[-1]

    monkeypatch.setattr(ScriptedConsumer, "script", script)
    monkeypatch.setattr(intake_module, "AIOKafkaConsumer", make)
    handled: list[int] = []

    async def handler(raw: list[Any]) -> asyncio.Future[None]:
        handled.extend(message.offset for message in raw)
        delivered = asyncio.get_running_loop().create_future()  # the outputs are acknowledged a little later
        asyncio.get_running_loop().call_later(0.01, delivered.set_result, None)
        return delivered

    intake = DirectIntake("unused:9092", {"web-events": "web-events"}, "group", handler, lambda _: None,
                          commit_interval_s=0.0)
    stop = asyncio.Event()
    task = asyncio.create_task(intake.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    return consumers[0], handled


async def first_batch(consumer: ScriptedConsumer) -> dict[TopicPartition, list[Record]]:
    consumer.refuse_commits = True  # the worker is slow; by its next poll the group has moved on
    return records(0, 100)


def test_offsets_whose_commit_failed_at_revocation_are_not_committed_when_the_partition_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def away_and_back(consumer: ScriptedConsumer) -> dict[TopicPartition, list[Record]]:
        await consumer.revoke()  # its commit of offset 100 fails
        consumer.commits.append(("the next owner", 900))
        consumer.refuse_commits = False
        await consumer.assign()  # fresh position: the group's committed 900
        return records(900, 950)

    consumer, handled = asyncio.run(run_intake(monkeypatch, [first_batch, away_and_back]))

    assert handled == [*range(100), *range(900, 950)]
    assert consumer.commits == [("the next owner", 900), ("this worker", 950)]


def test_a_fetch_that_waited_for_a_revocation_is_left_to_the_new_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def revoked_while_waiting(consumer: ScriptedConsumer) -> dict[TopicPartition, list[Record]]:
        consumer.refuse_commits, consumer.commit_s = False, 0.02
        revocation = asyncio.create_task(consumer.revoke())
        await asyncio.sleep(0)  # the revocation takes the intake's lock (and commits) before these are handled
        revocation.add_done_callback(lambda _: asyncio.ensure_future(consumer.assign()))
        return records(100, 150)

    async def after_reassignment(consumer: ScriptedConsumer) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0.06)
        return records(100, 150)  # the new assignment reads from the committed offset again

    consumer, handled = asyncio.run(run_intake(monkeypatch, [first_batch, revoked_while_waiting, after_reassignment]))

    assert handled == [*range(100), *range(100, 150)]  # the stale fetch was not handled; nothing twice
    assert consumer.commits[-1] == ("this worker", 150)


def test_batches_sent_back_to_be_read_again_are_counted_by_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stuck on one batch consumes its events again and again: only this count tells it apart."""
    async def same_batch(consumer: ScriptedConsumer) -> dict[TopicPartition, list[Record]]:
        return records(0, 10)  # the intake seeked back: the same events come again

    consumers: list[ScriptedConsumer] = []

    def make(**kwargs: Any) -> ScriptedConsumer:
        consumers.append(ScriptedConsumer(**kwargs))
        return consumers[-1]

    monkeypatch.setattr(ScriptedConsumer, "script", [same_batch] * 4)
    monkeypatch.setattr(intake_module, "AIOKafkaConsumer", make)
    monkeypatch.setattr(intake_module, "RETRY_AFTER_S", 0.0)
    outcomes = ["raise", "refused", "refused", "delivered"]
    failures: list[tuple[str, int]] = []

    async def handler(raw: list[Any]) -> asyncio.Future[None]:
        outcome = outcomes.pop(0)
        if outcome == "raise":
            raise RuntimeError("the engine failed")
        delivered = asyncio.get_running_loop().create_future()
        if outcome == "refused":
            delivered.set_exception(RuntimeError("the broker refused the outputs"))
        else:
            delivered.set_result(None)
        return delivered

    async def run() -> None:
        intake = DirectIntake("unused:9092", {"web-events": "web-events"}, "group", handler, lambda _: None,
                              commit_interval_s=0.0, on_failure=lambda stage, n: failures.append((stage, n)))
        stop = asyncio.Event()
        task = asyncio.create_task(intake.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await task

    asyncio.run(run())
    assert failures == [("process", 1), ("deliver", 1), ("deliver", 1)]
    assert consumers[0].commits == [("this worker", 10)]
