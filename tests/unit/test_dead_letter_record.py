"""The dead-letter record: what it keeps of the raw input."""

from __future__ import annotations

import base64

import orjson

from contracts.decisions import DEAD_LETTER_RAW_MAX, DeadLetter

KAFKA_DEFAULT_MAX_MESSAGE = 1_048_588  # bytes: what a default Apache Kafka broker takes per record batch


def test_a_small_input_is_kept_whole() -> None:
    raw = b'{"event_id": "e1", "ts": "soon"}'
    doc = orjson.loads(DeadLetter("web-events", 0, 7, "wrong_type", "field 'ts' ...", raw).to_json())
    assert base64.b64decode(doc["raw_b64"]) == raw and "raw_truncated" not in doc


def test_an_input_near_the_brokers_limit_makes_a_dead_letter_the_broker_takes() -> None:
    # An 800 KB event is accepted by the broker and refused by the engine (too_large); its dead letter with the
    # whole value in base64 was 1.07 MB, which the broker refused: the batch was read again forever.
    raw = b'{"event_id": "big", "pad": "' + b"x" * 800_000 + b'"}'
    record = DeadLetter("web-events", 0, 8, "too_large", "event is 800,032 bytes, the limit is 65,536", raw).to_json()
    assert len(record) < KAFKA_DEFAULT_MAX_MESSAGE // 4
    doc = orjson.loads(record)
    assert base64.b64decode(doc["raw_b64"]) == raw[:DEAD_LETTER_RAW_MAX]
    assert (doc["raw_bytes"], doc["raw_truncated"], doc["reason_code"]) == (len(raw), True, "too_large")
