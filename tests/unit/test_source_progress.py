"""Label windows close at the slowest producer's progress; clean stops and long lags release them."""

from __future__ import annotations

import pytest

from learning.source_progress import SourceProgress


def reported(sources: SourceProgress, *reports: tuple[str, float]) -> float:
    """One read of the learning topic: its producers' reports, then the closing time."""
    for source, progress in reports:
        sources.report(source, progress)
    return sources.settle()


def test_the_slowest_producer_sets_the_closing_time() -> None:
    sources = SourceProgress(max_lag_s=1800.0)
    assert reported(sources, ("a", 1000.0), ("b", 400.0)) == 400.0  # read together: b counts from the start
    assert reported(sources, ("a", 1500.0)) == 400.0  # a runs ahead, b holds the windows
    assert reported(sources, ("b", 1200.0)) == 1200.0
    assert reported(sources, ("b", 1100.0)) == 1200.0  # an older message read late moves nothing back
    assert reported(sources, ("b", 2000.0)) == 1500.0 and len(sources) == 2


def test_windows_already_closed_stay_closed_for_a_producer_that_starts_behind() -> None:
    sources = SourceProgress(max_lag_s=1800.0)
    assert reported(sources, ("a", 1000.0)) == 1000.0
    assert reported(sources, ("late", 400.0)) == 1000.0  # it holds later windows, not the closed ones
    assert reported(sources, ("a", 1300.0), ("late", 1100.0)) == 1100.0


def test_a_producer_that_stops_cleanly_releases_the_windows_at_once() -> None:
    sources = SourceProgress(max_lag_s=1800.0)
    assert reported(sources, ("a", 5000.0), ("b", 4000.0)) == 4000.0
    sources.release("b", 4000.0)
    assert sources.settle() == 5000.0 and len(sources) == 1
    sources.release("unknown", 10.0)  # a release read twice, or of a producer already dropped
    assert sources.settle() == 5000.0
    sources.release("a", 5000.0)
    assert sources.settle() == 5000.0 and len(sources) == 0  # nobody left: the closing time stays


def test_a_released_producer_holds_again_only_with_newer_progress() -> None:
    sources = SourceProgress(max_lag_s=1800.0)
    assert reported(sources, ("a", 1000.0), ("idle", 900.0)) == 900.0
    sources.release("idle", 950.0)  # caught up and quiet at 950
    # an older message of its own, read after the release (another learning partition): not brought back
    assert reported(sources, ("idle", 940.0), ("a", 1200.0)) == 1200.0 and len(sources) == 1
    assert reported(sources, ("idle", 950.0)) == 1200.0 and len(sources) == 1
    # new events, new samples: it holds the windows not yet closed again
    assert reported(sources, ("idle", 1150.0), ("a", 1300.0)) == 1200.0 and len(sources) == 2
    assert reported(sources, ("idle", 1250.0)) == 1250.0


def test_a_producer_further_behind_than_max_lag_stops_holding_the_windows() -> None:
    sources = SourceProgress(max_lag_s=600.0)
    assert reported(sources, ("crashed", 1000.0), ("a", 1300.0)) == 1000.0 and sources.dropped == 0
    assert reported(sources, ("a", 1600.0)) == 1000.0  # exactly max_lag_s behind: still held
    assert reported(sources, ("a", 1600.5)) == 1600.5  # beyond it: dropped, counted
    assert sources.dropped == 1 and len(sources) == 1
    # it comes back within max_lag_s of the leader: it holds the windows not yet closed again
    assert reported(sources, ("crashed", 1100.0), ("a", 1650.0)) == 1600.5 and len(sources) == 2
    assert reported(sources, ("a", 1700.0)) == 1600.5  # 600 behind exactly: held
    assert reported(sources, ("a", 1700.5)) == 1700.5 and sources.dropped == 2


def test_zero_max_lag_closes_at_the_fastest_producer() -> None:
    sources = SourceProgress(max_lag_s=0.0)
    assert reported(sources, ("a", 100.0), ("b", 50.0)) == 100.0
    assert reported(sources, ("b", 180.0)) == 180.0  # whoever is ahead


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_negative_or_missing_max_lag_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="max_lag_s must be >= 0"):
        SourceProgress(bad)
