"""A paced producer and a decision watcher: end-to-end latency from an event's send to its decision.

Both are light, so that on a 2-core machine the yardstick does not take the CPU the worker and the broker
need: the producer sends the events due every ``SEND_EVERY_S`` (5 ms) as one record batch per partition
(the worker's own ``OutputSender``, about 1 µs a record; kafka-python's ``send`` costs tens of µs each), and
the watcher reads with aiokafka ``getmany``. The watcher runs in its own process (sharing the producer's
GIL would add its own delay to every figure). Both stamp ``time.time()``, one clock for both processes.
The watcher reads the decisions topic by manual assignment from its end, with a 5 ms fetch wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from load_tests.yardsticks.load import LoadEvent
from streams.outputs import OutputSender, OutRecord

# Events due are sent every 5 ms, as a producer with Kafka 4.0's default linger.ms (5) would. A produce
# request every millisecond cost the embedded broker ~0.5 of a core on this 2-core machine, CPU the worker
# then lacked (the worker got ~0.7 of a core at 2,600/s). Latency starts at each event's actual send.
SEND_EVERY_S = 0.005


def _watch(bootstrap: str, topic: str, ready: mp.synchronize.Event, stop: mp.synchronize.Event,
           conn: Connection) -> None:
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (stop event), or we see it gone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    arrivals: dict[str, float] = {}

    async def watch() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5,
                                    fetch_min_bytes=1)
        await consumer.start()
        try:
            await consumer.topics()  # fetches the cluster's metadata
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(parts)
            await consumer.seek_to_end(*parts)
            for tp in parts:
                await consumer.position(tp)  # resolve the end offsets now, before anything is produced
            ready.set()
            while not stop.is_set() and os.getppid() == parent:
                for records in (await consumer.getmany(timeout_ms=50, max_records=5000)).values():
                    now = time.time()
                    for rec in records:
                        arrivals[orjson.loads(rec.value)["request_event_id"]] = now
        finally:
            await consumer.stop()

    asyncio.run(watch())
    conn.send(arrivals)
    conn.close()


class DecisionWatcher:
    """Child process noting when each decision (by its request_event_id) arrives on ``topic``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        ctx = mp.get_context("fork")  # no re-import of __main__; the bench has no threads of its own here
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        args = (bootstrap, topic, self._ready, self._stop, send)
        self._proc = ctx.Process(target=_watch, args=args, daemon=True, name="decision-watcher")

    def __enter__(self) -> DecisionWatcher:
        self._proc.start()
        if not self._ready.wait(30):
            self._proc.terminate()
            raise RuntimeError("decision watcher did not get the decisions topic's end offsets within 30 s")
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def collect(self) -> dict[str, float]:
        """Stop watching; the arrival time of every decision seen."""
        self._stop.set()
        arrivals = self._recv.recv() if self._recv.poll(30) else {}
        self._proc.join(5)
        return arrivals

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            self._stop.set()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


@dataclass
class PacedRun:
    sent_at: dict[str, float] = field(default_factory=dict)  # event_id -> wall-clock send time
    send_s: float = 0.0
    marks: dict[str, int] = field(default_factory=dict)  # name -> index of the first event sent after it


def send_paced(bootstrap: str, prefix: str, events: Sequence[LoadEvent], rate: float, marks: dict[str, float],
               on_mark: Callable[[str], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
               ) -> PacedRun:
    """Send ``events`` at ``rate`` per second (a burst every ``SEND_EVERY_S``). ``marks`` name elapsed seconds;
    at each, ``on_mark(name)`` is called and the index of the next event is noted in ``PacedRun.marks``."""
    return asyncio.run(_send_paced(bootstrap, prefix, events, rate, marks, on_mark, should_stop))


async def _send_paced(bootstrap: str, prefix: str, events: Sequence[LoadEvent], rate: float,
                      marks: dict[str, float], on_mark: Callable[[str], None] | None,
                      should_stop: Callable[[], bool]) -> PacedRun:
    sender = OutputSender(bootstrap, linger_ms=0)
    await sender.start()
    run, pending = PacedRun(), sorted(marks.items(), key=lambda kv: kv[1])
    deliveries: list[asyncio.Future] = []
    started = time.perf_counter()
    i = 0
    try:
        while i < len(events):
            if should_stop():
                raise KeyboardInterrupt  # in case a library swallowed the one the signal raised
            elapsed = time.perf_counter() - started
            while pending and elapsed >= pending[0][1]:
                name = pending.pop(0)[0]
                run.marks[name] = i
                if on_mark:
                    on_mark(name)
            due = min(len(events), int(rate * elapsed) + 1)
            if i < due:
                now = time.time()
                for e in events[i:due]:
                    run.sent_at[e.event_id] = now
                deliveries.append(await sender.submit(
                    [OutRecord(prefix + e.out.topic, e.out.key, e.out.value) for e in events[i:due]]))
                i = due
            if len(deliveries) > 1000:  # delivered futures are dropped as they finish
                deliveries = [d for d in deliveries if not d.done()]
            await asyncio.sleep(SEND_EVERY_S)
        await asyncio.wait_for(asyncio.gather(*deliveries), 30)
        run.send_s = time.perf_counter() - started
    finally:
        with contextlib.suppress(Exception):  # never wait for ever on a broker that is gone
            await asyncio.wait_for(sender.stop(), 5)
    return run
