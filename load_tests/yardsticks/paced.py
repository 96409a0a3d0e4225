"""A paced producer and a decision watcher: end-to-end latency from an event's send to its decision.

The watcher runs in its own process (kafka-python parses records in Python; sharing the producer's GIL
would add its own delay to every figure). Both stamp ``time.time()``, one clock for both processes.
The watcher reads the decisions topic by manual assignment from its end, with a 5 ms fetch wait.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from load_tests.yardsticks.load import LoadEvent


def _watch(bootstrap: str, topic: str, ready: mp.synchronize.Event, stop: mp.synchronize.Event,
           conn: Connection) -> None:
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (stop event), or we see it gone
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=5,
                             fetch_min_bytes=1)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_end()
    for tp in parts:
        consumer.position(tp)  # resolve the end offsets now, before anything is produced
    ready.set()
    arrivals: dict[str, float] = {}
    while not stop.is_set() and os.getppid() == parent:
        for records in consumer.poll(timeout_ms=50, max_records=5000).values():
            now = time.time()
            for rec in records:
                arrivals[orjson.loads(rec.value)["request_event_id"]] = now
    consumer.close()
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
    """Send ``events`` at ``rate`` per second (a burst every millisecond). ``marks`` name elapsed seconds;
    at each, ``on_mark(name)`` is called and the index of the next event is noted in ``PacedRun.marks``."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)
    run, pending = PacedRun(), sorted(marks.items(), key=lambda kv: kv[1])
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
            while i < due:
                e = events[i]
                run.sent_at[e.event_id] = time.time()
                producer.send(prefix + e.out.topic, key=e.out.key, value=e.out.value)
                i += 1
            time.sleep(0.001)
        producer.flush(timeout=30)
        run.send_s = time.perf_counter() - started
    finally:
        with contextlib.suppress(Exception):  # never wait for ever on a broker that is gone
            producer.close(timeout=5)
    return run
