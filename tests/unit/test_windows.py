"""Event-time sliding windows: the two-bucket estimate against an exact count."""

from __future__ import annotations

import numpy as np
import pytest

from features.windows import add_to_cell, estimate

HOUR = 3600


def exact(times: list[float], at: float, size: int) -> int:
    return sum(1 for t in times if at - size < t <= at)


def test_count_in_the_same_bucket_is_exact() -> None:
    cell = None
    for t in (10.0, 20.0, 30.0):
        cell = add_to_cell(cell, t, HOUR, 1.0)
    assert estimate(cell, 40.0, HOUR) == 3.0


def test_old_events_fade_out_linearly_then_vanish() -> None:
    cell = add_to_cell(None, HOUR * 10 + 5, HOUR, 4.0)  # bucket 10
    assert estimate(cell, HOUR * 11, HOUR) == pytest.approx(4.0)  # start of bucket 11: all of it
    assert estimate(cell, HOUR * 11.5, HOUR) == pytest.approx(2.0)  # half-way: half of it
    assert estimate(cell, HOUR * 12 + 1, HOUR) == 0.0  # two buckets later: gone


def test_late_event_goes_to_the_previous_bucket_or_is_dropped() -> None:
    cell = add_to_cell(None, HOUR * 10 + 5, HOUR, 1.0)
    cell = add_to_cell(cell, HOUR * 9 + 5, HOUR, 1.0)  # previous bucket: kept
    assert cell == (10, 1.0, 1.0)
    cell = add_to_cell(cell, HOUR * 7, HOUR, 1.0)  # older than the window: not counted
    assert cell == (10, 1.0, 1.0)


def test_estimate_tracks_the_exact_sliding_count_on_a_steady_stream() -> None:
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 20 * HOUR, size=4000)).tolist()  # ~200 events per hour
    cell = None
    errors = []
    for i, t in enumerate(times):
        cell = add_to_cell(cell, t, HOUR, 1.0)
        if i > 400:
            truth = exact(times[: i + 1], t, HOUR)
            errors.append(abs(estimate(cell, t, HOUR) - truth) / truth)
    # Poisson arrivals: the linear interpolation of the previous bucket is off by a few percent.
    assert np.mean(errors) < 0.08


def test_a_late_read_counts_no_event_from_after_it() -> None:
    # 50 page views from 02:00 to 02:50, then a late request at 01:30 asked for "page views in the last hour":
    # it read 51 (cur + prev of buckets it came before), the future included; the truth is at most 1
    cell = add_to_cell(None, 1 * HOUR + 1800, HOUR, 1.0)  # the late request's own view, 01:30
    for minute in range(50):
        cell = add_to_cell(cell, 2 * HOUR + minute * 60, HOUR, 1.0)
    assert cell == (2, 50.0, 1.0)
    assert estimate(cell, 1 * HOUR + 1800, HOUR) == 0.5  # half of the 01:00 bucket's view, spread evenly
    assert estimate(cell, 0 * HOUR + 1800, HOUR) == 0.0  # further back: nothing kept is from before it
