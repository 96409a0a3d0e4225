"""The learning topic's message formats: columns (format 2), the batch of objects (format 1), one sample."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import orjson

from contracts.decisions import (
    LIFT_BUCKETS,
    LearningSample,
    decode_batch,
    decode_samples,
    encode_idle,
    encode_samples,
    sample_dicts,
    user_bucket,
)


def samples(n: int, dim: int = 20, seed: int = 3) -> list[LearningSample]:
    rng = np.random.default_rng(seed)
    return [
        LearningSample("reward" if i % 3 == 0 else "exposure", f"d{i}", f"offer_{i % 4}", rng.normal(size=dim),
                       reward=float(i % 3 == 0) * rng.random(), probability=rng.random(), placement="home_hero",
                       ts=1.7e9 + i, mode="explore" if i % 2 else "exploit", reward_type="click" if i % 3 == 0 else "")
        for i in range(n)
    ]


def as_tuple(s: LearningSample) -> tuple:
    return (s.kind, s.decision_id, s.action, tuple(np.asarray(s.x).tolist()), s.reward, s.probability, s.placement,
            s.ts, s.mode, s.reward_type, s.key)


def test_columns_round_trip_every_field_exactly() -> None:
    batch = samples(50)
    raw = encode_samples(batch)
    assert orjson.loads(raw)["v"] == 2
    back = decode_samples(raw)
    assert [as_tuple(s) for s in back] == [as_tuple(s) for s in batch]
    xs = np.array([s.x for s in back])
    assert xs.shape == (50, 20) and xs.dtype == np.float64


def test_columns_are_smaller_than_one_object_per_sample() -> None:
    batch = samples(200)
    old = orjson.dumps({"samples": [s.to_dict() for s in batch]}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert len(encode_samples(batch)) < 0.7 * len(old)


def test_contexts_of_different_lengths_fall_back_to_objects() -> None:
    batch = samples(3) + samples(2, dim=7)
    raw = encode_samples(batch)
    assert "samples" in orjson.loads(raw)
    assert [as_tuple(s) for s in decode_samples(raw)] == [as_tuple(s) for s in batch]


def test_older_formats_still_decode() -> None:
    batch = samples(4)
    objects = orjson.dumps({"samples": [s.to_dict() for s in batch]}, option=orjson.OPT_SERIALIZE_NUMPY)
    assert [as_tuple(s) for s in decode_samples(objects)] == [as_tuple(s) for s in batch]
    assert [as_tuple(s) for s in decode_samples(batch[0].to_json())] == [as_tuple(batch[0])]


def test_a_batch_carries_its_producer_and_progress_in_either_format() -> None:
    for batch in (samples(5), samples(3) + samples(2, dim=7)):  # columns, then the objects fallback
        back = decode_batch(encode_samples(batch, "host-a:17", 1.7e9 + 900.5))
        assert [as_tuple(s) for s in back.samples] == [as_tuple(s) for s in batch]
        assert (back.source, back.progress, back.idle) == ("host-a:17", 1.7e9 + 900.5, False)
        assert back.reported == ("host-a:17", 1.7e9 + 900.5)  # its own clock, not its samples' largest ts


def test_a_batch_without_producer_reports_its_largest_ts_anonymously() -> None:
    batch = samples(6)
    for raw in (encode_samples(batch), encode_samples(batch, "", 5.0), encode_samples(batch, "w", None),
                orjson.dumps({"samples": [s.to_dict() for s in batch]}, option=orjson.OPT_SERIALIZE_NUMPY)):
        back = decode_batch(raw)
        assert back.source == "" and back.progress is None and not back.idle
        assert back.reported == ("", max(s.ts for s in batch))
    assert decode_batch(encode_samples([])).reported is None  # nothing to say


def test_an_idle_message_has_no_samples_and_names_its_producer() -> None:
    back = decode_batch(encode_idle("host-b:9", 1.7e9 + 60.0))
    assert back.samples == [] and decode_samples(encode_idle("host-b:9", 1.0)) == []
    assert (back.source, back.progress, back.idle) == ("host-b:9", 1.7e9 + 60.0, True)


def test_the_user_bucket_travels_in_either_format_and_is_left_out_when_no_sample_has_one() -> None:
    batch = [dataclasses.replace(s, user_bucket=user_bucket(f"user-{i % 3}") if i % 2 else None)
             for i, s in enumerate(samples(6))]
    for raw in (encode_samples(batch), encode_samples(batch + samples(1, dim=7))):  # columns, then objects
        assert [s.user_bucket for s in decode_samples(raw)][:6] == [s.user_bucket for s in batch]
        assert [d.get("user_bucket") for d in sample_dicts(orjson.loads(raw))][:6] == [s.user_bucket for s in batch]
    assert "user_bucket" not in orjson.loads(encode_samples(samples(3)))  # older readers see what they always saw
    # a bucket, not a pseudonym: a thousandth of all users share it
    buckets = Counter(user_bucket(f"user-{i}") for i in range(100_000))
    assert set(buckets) == set(range(LIFT_BUCKETS)) and max(buckets.values()) < 2 * 100_000 / LIFT_BUCKETS
