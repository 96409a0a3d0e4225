"""engine.processor.chunk_size: how a batch is cut into feature-store calls."""

from __future__ import annotations

import pytest

from engine.processor import MIN_SPLIT, STORE_CHUNK, chunk_size


@pytest.mark.parametrize(
    ("events", "size", "calls"),
    [
        (1, 1, 1),
        (MIN_SPLIT, MIN_SPLIT, 1),  # small batches: one call, nothing to overlap worth a round trip
        (MIN_SPLIT + 1, 33, 2),
        (85, 43, 2),  # a paced batch: two calls, Redis applies the second while the first is decided
        (2 * STORE_CHUNK, STORE_CHUNK, 2),
        (2 * STORE_CHUNK + 1, STORE_CHUNK, 3),
        (2000, STORE_CHUNK, 8),  # flat out: chunks of STORE_CHUNK
    ],
)
def test_a_batch_is_cut_into_calls_of_at_most_store_chunk_and_two_past_min_split(events: int, size: int,
                                                                                 calls: int) -> None:
    assert chunk_size(events) == size
    assert -(-events // chunk_size(events)) == calls


def test_every_size_covers_the_batch_without_an_empty_call() -> None:
    for events in range(1, 3 * STORE_CHUNK):
        size = chunk_size(events)
        assert 1 <= size <= STORE_CHUNK
        starts = range(0, events, size)
        assert all(min(size, events - s) > 0 for s in starts)
        assert (len(starts) >= 2) == (events > MIN_SPLIT)
