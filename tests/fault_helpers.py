"""Helpers for the fault tests: a private stack, paced traffic in a thread, topic and metric readers.

Faults (SIGSTOP of Redis or the broker) must not disturb the other tests, so those tests start their
own embedded stack with :func:`private_stack`. Nothing here asserts; the tests do.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cadence.runtime import Runtime, create_topics
from cadence.workers import WorkerProcess
from contracts.decisions import LearningSample, decode_samples
from features.windows import parse_cell
from streams.topics import ALL_TOPICS

T = TypeVar("T")


def isolate(rt: Runtime, tag: str) -> dict[str, str]:
    """A fresh app id and topic prefix on ``rt``, topics created: the worker's CADENCE_* settings."""
    app_id = f"{tag}{uuid.uuid4().hex[:6]}"
    prefix = f"{app_id}."
    create_topics(rt.kafka_bootstrap or "", [prefix + t for t in ALL_TOPICS], partitions=4)
    return {"app_id": app_id, "topic_prefix": prefix}


@contextlib.contextmanager
def private_stack(data_dir: Path, tag: str) -> Iterator[tuple[Runtime, dict[str, str]]]:
    """An embedded broker and Redis of our own (faults here touch no other test), plus isolation."""
    rt = Runtime(data_dir / "stack", None, None).start()
    try:
        yield rt, isolate(rt, tag)
    finally:
        rt.stop()


def wait_for(check: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def metrics_or_empty(worker: WorkerProcess) -> str:
    """The worker's /metrics text, or "" when it does not answer (it crashed: the tests say so)."""
    try:
        return worker.metrics_text()
    except OSError:
        return ""


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample family in exposition ``text``, over series that carry ``labels``."""
    total = 0.0
    for series, value in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, flags=re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', series or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


class RawReader:
    """Reads every partition of one topic from the start (no consumer group), keeping raw values."""

    def __init__(self, rt: Runtime, topic: str) -> None:
        self._consumer = KafkaConsumer(bootstrap_servers=rt.kafka_bootstrap, enable_auto_commit=False,
                                       fetch_max_wait_ms=50, max_partition_fetch_bytes=4_000_000)
        partitions = wait_for(lambda: self._consumer.partitions_for_topic(topic), 10, f"metadata of {topic}")
        self._parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._parts)
        self._consumer.seek_to_beginning()
        self.records: list[tuple[int, int, bytes]] = []  # (partition, offset, value)

    def poll(self, timeout_ms: int = 100) -> int:
        got = 0
        for recs in self._consumer.poll(timeout_ms=timeout_ms).values():
            self.records += [(r.partition, r.offset, r.value) for r in recs]
            got += len(recs)
        return got

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll()

    def at_end(self) -> bool:
        """Everything the topic held when asked has been read (a slow fetch is not an empty topic)."""
        ends = self._consumer.end_offsets(self._parts)  # Tansu 0.6: only up to the last batch's first record
        return all(self._consumer.position(tp) >= max(end, self._consumer.highwater(tp) or 0)
                   for tp, end in ends.items())

    def read_until_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Read to the end of the topic, until nothing new arrived for ``quiet_s`` (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if self.poll():
                last_new = time.monotonic()
            elif time.monotonic() - last_new >= quiet_s and self.at_end():
                return

    def json(self) -> list[dict]:
        return [orjson.loads(v) for _, _, v in self.records]

    def samples(self) -> list[LearningSample]:
        return [s for _, _, v in self.records for s in decode_samples(v)]

    def close(self) -> None:
        self._consumer.close()


@dataclass
class Traffic:
    """Sends ``rounds`` of (topic, event) in a thread, pausing ``gap_s`` between rounds.

    ``acked`` holds the events the broker acknowledged, in send order; the producer retries through
    broker outages (``delivery_timeout_ms``), and ``failed`` keeps whatever it finally gave up on.
    ``on_round(i)`` is called before round ``i`` is handed to the producer.
    """

    rt: Runtime
    prefix: str
    rounds: Sequence[Sequence[tuple[str, dict]]]
    gap_s: float = 0.5
    on_round: Callable[[int], None] | None = None
    acked: list[tuple[str, dict]] = field(default_factory=list)
    failed: list[tuple[str, dict, str]] = field(default_factory=list)
    rounds_sent: int = 0

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fault-traffic", daemon=True)
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"traffic thread still sending after {timeout_s:.0f}s")

    def _ack(self, item: tuple[str, dict]) -> Callable[[Any], None]:
        def done(_meta: Any) -> None:
            with self._lock:
                self.acked.append(item)
        return done

    def _fail(self, item: tuple[str, dict]) -> Callable[[Exception], None]:
        def failed(exc: Exception) -> None:
            with self._lock:
                self.failed.append((item[0], item[1], repr(exc)))
        return failed

    def _run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.rt.kafka_bootstrap, linger_ms=5, acks=1,
                                 request_timeout_ms=5000, delivery_timeout_ms=120_000, retries=1000,
                                 max_in_flight_requests_per_connection=1, reconnect_backoff_max_ms=500)
        try:
            for i, batch in enumerate(self.rounds):
                if self._stop.is_set():
                    break
                if self.on_round is not None:
                    self.on_round(i)
                for topic, doc in batch:  # no flush per round: a broker outage must not slow the sender
                    key = str(doc["user_id"]).encode()
                    fut = producer.send(self.prefix + topic, key=key, value=orjson.dumps(doc))
                    fut.add_callback(self._ack((topic, doc)))
                    fut.add_errback(self._fail((topic, doc)))
                self.rounds_sent = i + 1
                self._stop.wait(self.gap_s)
        finally:
            producer.flush()
            producer.close()


class FeatureReader:
    """Reads users' feature hashes straight from Redis (synchronous client)."""

    def __init__(self, rt: Runtime, namespace: str) -> None:
        self.client = redis.Redis.from_url(rt.redis_url or "", socket_timeout=5)
        self.namespace = namespace

    def key(self, user_id: str) -> str:
        return f"{self.namespace}:u:{user_id}"

    def total(self, user_id: str, counter: str) -> float:
        """Everything counted in the 7-day window cell of ``counter`` (both buckets): "pvw" etc."""
        raw = self.client.hget(self.key(user_id), counter + "w")
        cell = parse_cell(raw.decode() if raw else None)
        return 0.0 if cell is None else cell[1] + cell[2]

    def keys(self, pattern: str) -> list[str]:
        return [k.decode() for k in self.client.scan_iter(match=f"{self.namespace}:u:{pattern}", count=1000)]

    def close(self) -> None:
        self.client.close()
