"""Small helpers for integration tests: produce events, read topics, start workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from cadence.runtime import Runtime
from cadence.workers import WorkerProcess, worker_env

T0 = 1_767_571_200.0  # 2026-01-05 00:00 UTC


def event(event_id: str, user_id: str = "u1", ts: float = T0, etype: str = "page_view", **fields: Any) -> dict:
    doc = {"event_id": event_id, "user_id": user_id, "ts": ts, "type": etype}
    if etype == "page_view":
        doc.setdefault("placement", "home_hero")
    doc.update(fields)
    return doc


def produce(rt: Runtime, topic: str, values: Iterable[bytes | dict], key: bytes | None = None) -> None:
    """Send events keyed by their user_id (as the contract says), or by ``key`` for raw bytes."""
    producer = KafkaProducer(bootstrap_servers=rt.kafka_bootstrap, max_request_size=2_000_000)
    for v in values:
        if isinstance(v, bytes):
            producer.send(topic, key=key or b"raw", value=v)
        else:
            producer.send(topic, key=key or str(v.get("user_id", "")).encode(), value=orjson.dumps(v))
    producer.flush()
    producer.close()


class TopicReader:
    """Reads every partition of a topic from the start, without a consumer group."""

    def __init__(self, rt: Runtime, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=rt.kafka_bootstrap, enable_auto_commit=False,
                                      fetch_max_wait_ms=50)
        parts = self.consumer.partitions_for_topic(topic) or set()
        self.consumer.assign([TopicPartition(topic, p) for p in parts])
        self.consumer.seek_to_beginning()
        self.records: list[dict] = []

    def read_until(self, done: Callable[[list[dict]], bool], timeout_s: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while not done(self.records) and time.monotonic() < deadline:
            for recs in self.consumer.poll(timeout_ms=100).values():
                self.records += [orjson.loads(r.value) for r in recs]
        return self.records

    def close(self) -> None:
        self.consumer.close()


def start_worker(rt: Runtime, data_dir: Path, name: str = "worker-1", **settings: str) -> WorkerProcess:
    w = WorkerProcess(worker_env(rt.env(), **settings), data_dir, name).start()
    w.wait_ready(timeout_s=90)
    return w
