"""Direct intake: the input topics read in record batches by one aiokafka consumer in the worker's group.

Faust's stream machinery costs about 85 µs of CPU per message before our code sees it (an Event, a
queue hop and an ack per message: measured with the ceiling yardstick of load_tests/bench_e2e.py); a
consumer's ``getmany`` hands over a whole fetch for about 2.4 µs a message. The engine works on batches
anyway, so the worker reads batches itself and keeps Faust for what it is good at here: the web server,
timers, tasks and the application's life cycle. ``CADENCE_INTAKE=faust`` brings back the Faust agent.

Delivery is at-least-once, as with the agent: offsets are committed only for batches whose outputs the
broker has acknowledged, at most every ``commit_interval_s`` and whenever partitions are revoked (a lock
makes a rebalance wait for the batch in flight). While one batch's outputs are on their way (``IN_FLIGHT``),
the next batch is processed: the broker's acknowledgement no longer holds the engine up. Events read
again after a crash are duplicates the feature store's dedup ring recognises (engine/replay.py re-sends
their stored outputs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError

from engine.processor import RawMessage

log = logging.getLogger(__name__)

# Process one batch and hand its outputs over; the awaitable it returns is done when they are delivered.
Handler = Callable[[list[RawMessage]], Awaitable[Awaitable[object] | None]]
OnAssigned = Callable[[set[TopicPartition]], None]
# Batches sent back to be read again, by stage: "process" (the handler raised) or "deliver" (outputs refused).
OnFailure = Callable[[str, int], None]
RETRY_AFTER_S = 1.0
IN_FLIGHT = 1  # batches whose outputs may still be on their way while the next one is processed
# Co-partitioning: a user's events are keyed by user id on every input topic, and all input topics have the
# same partition count, so the range assignor gives partition p of every topic to one worker: a user's web,
# email and ad events are decided by one worker, never by two at once (whose state writes would overwrite
# each other). aiokafka's default, round robin over all topic-partitions, splits them with 3+ workers. It
# stays listed second so that a group still running older workers keeps working during a rolling upgrade.
ASSIGNORS = (RangePartitionAssignor, RoundRobinPartitionAssignor)


@dataclass(slots=True)
class _Handled:
    starts: dict[TopicPartition, int]  # first offset of the batch, per partition
    ends: dict[TopicPartition, int]  # the next offset after it
    delivered: Awaitable[object] | None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, intake: DirectIntake) -> None:
        self.intake = intake

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.intake.in_flight:  # the batch being processed finishes first, then its offsets go
            await self.intake.settle(keep=0)
            await self.intake.commit()
            self.intake.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.intake.on_assigned(set(assigned))


class DirectIntake:
    """Batches of raw input messages, handed to ``handler``; offsets committed after it returns."""

    def __init__(
        self, bootstrap: str, topics: Mapping[str, str], group_id: str, handler: Handler,
        on_assigned: OnAssigned, *, batch_size: int = 2000, fetch_max_wait_ms: int = 20,
        commit_interval_s: float = 1.0, session_timeout_s: float = 6.0, heartbeat_s: float = 1.0,
        on_failure: OnFailure | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = dict(topics)  # full topic name -> logical name
        self.group_id = group_id
        self.handler = handler
        self.on_assigned = on_assigned
        self.batch_size = batch_size
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.commit_interval_s = commit_interval_s
        self.session_timeout_s = session_timeout_s
        self.heartbeat_s = heartbeat_s
        self.on_failure = on_failure or (lambda stage, batches: None)
        self.in_flight = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition, not yet committed
        self._committed_at = 0.0
        self._position: dict[TopicPartition, int] = {}  # next offset to handle, per partition
        self._failures = 0  # batches failed in a row
        self._generation = 0  # +1 at every revocation: a fetch from an older one is not handled
        self._handled: deque[_Handled] = deque()  # processed, outputs maybe not delivered yet (oldest first)
        self.running = False  # between the start of ``run`` and its last commit
        self.finished = asyncio.Event()  # set when ``run`` has settled and committed its last batch

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def lag(self) -> dict[TopicPartition, int]:
        """Messages behind the end of each assigned partition, from the last fetch (no broker call)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        out = {}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None and tp in self._position:
                out[tp] = max(0, high - self._position[tp])
        return out

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 << 20, session_timeout_ms=int(self.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.heartbeat_s * 1000), partition_assignment_strategy=ASSIGNORS,
        )
        consumer.subscribe(list(self.topics), listener=_Rebalance(self))
        self.running = True
        try:
            await consumer.start()
        except BaseException:
            self.running = False
            self.finished.set()
            raise
        self._consumer = consumer
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
                generation = self._generation  # aiokafka returns records of the assignment current now
                if batches:
                    async with self.in_flight:
                        if generation != self._generation:  # a revocation ran first: the new owner reads them
                            continue
                        if not await self._handle(batches):
                            await asyncio.sleep(RETRY_AFTER_S)
                elif self._handled:  # the stream went quiet: let the last batch's offsets become committable
                    async with self.in_flight:
                        if not await self.settle(keep=0):
                            await asyncio.sleep(RETRY_AFTER_S)
                if self._done and time.monotonic() - self._committed_at >= self.commit_interval_s:
                    await self.commit()
        finally:
            try:
                await self.settle(keep=0)
                await self.commit()
            finally:
                await consumer.stop()
                self._consumer = None
                self.running = False
                self.finished.set()

    async def _handle(self, batches: Mapping[TopicPartition, list]) -> bool:
        """Hand one fetch to the handler; if it fails, seek back so the same events come again."""
        raw: list[RawMessage] = []
        topics = self.topics
        for tp, records in batches.items():
            logical = topics.get(tp.topic, tp.topic)
            raw.extend(
                RawMessage(logical, tp.partition, r.offset, r.value if isinstance(r.value, bytes) else b"",
                           r.timestamp / 1000.0 if r.timestamp else 0.0)
                for r in records
            )
        starts = {tp: records[0].offset for tp, records in batches.items() if records}
        try:
            delivered = await self.handler(raw)
        except Exception as exc:  # nothing of this batch is committed: read it again
            self._failures += 1
            self.on_failure("process", 1)
            log.error("a batch of %d events failed %d time(s) in a row (%s: %s); reading it again in %.0f s",
                      len(raw), self._failures, type(exc).__name__, exc, RETRY_AFTER_S,
                      exc_info=self._failures == 1)  # the traceback once per streak, not every second
            self._seek(starts)
            return False
        self._failures = 0
        ends = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        self._position.update(ends)
        self._handled.append(_Handled(starts, ends, delivered))
        return await self.settle(keep=IN_FLIGHT)

    async def settle(self, keep: int) -> bool:
        """Wait for the oldest deliveries until at most ``keep`` batches are on their way; delivered batches'
        offsets become committable. A failed delivery sends the reader back to the first undelivered batch."""
        while self._handled and (len(self._handled) > keep or self._delivered(self._handled[0])):
            oldest = self._handled[0]
            try:
                if oldest.delivered is not None:
                    await oldest.delivered
            except Exception as exc:  # e.g. the broker refused: every batch from this one on is read again
                log.error("outputs of %d batch(es) were not delivered (%s: %s); reading them again",
                          len(self._handled), type(exc).__name__, exc)
                self.on_failure("deliver", len(self._handled))
                first: dict[TopicPartition, int] = {}
                for handled in self._handled:
                    for tp, offset in handled.starts.items():
                        first.setdefault(tp, offset)
                self._handled.clear()
                self._seek(first)
                return False
            self._handled.popleft()
            self._done.update(oldest.ends)
        return True

    def forget(self, revoked: set[TopicPartition]) -> None:
        """Drop what is kept of partitions this worker gave up. Offsets whose commit failed must not be
        committed if the partition comes back: its next owner may have committed further since."""
        self._generation += 1
        for tp in revoked:
            self._done.pop(tp, None)
            self._position.pop(tp, None)

    @staticmethod
    def _delivered(handled: _Handled) -> bool:
        done = getattr(handled.delivered, "done", None)
        return handled.delivered is None or (done is not None and done())

    def _seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        consumer = self._consumer
        for tp, offset in offsets.items():
            if consumer is not None and tp in consumer.assignment():
                consumer.seek(tp, offset)
                self._position[tp] = offset

    async def commit(self) -> None:
        """Commit what has been handled; a failure (rebalance, broker away) is retried with the next batch."""
        consumer = self._consumer
        if consumer is None or not self._done:
            return
        offsets = {tp: off for tp, off in self._done.items() if tp in consumer.assignment()}
        try:
            if offsets:
                await consumer.commit(offsets)
            self._done.clear()
            self._committed_at = time.monotonic()
        except KafkaError as exc:  # the events are read again after a restart: duplicates, deduplicated
            log.warning("offset commit failed (%s); will retry", exc)
            self._committed_at = time.monotonic()
