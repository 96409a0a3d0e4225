"""streams/gc_pacing.py: the collector runs between batches, freezes survivors, and a full collection
frees cycles that died frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.gc_pacing import GcPacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A container that can sit in a reference cycle and be watched through a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the process's collector as it was: enabled, nothing frozen by the test."""
    was_enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.collect()
    if was_enabled:
        gc.enable()


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_start_turns_the_automatic_collector_off_and_stop_gives_it_back(collector: None) -> None:
    gc.enable()
    pacer = GcPacer(young_threshold=1000, clock=Clock())
    assert pacer.between_batches() is None  # not started: never collects
    pacer.start()
    assert not gc.isenabled() and pacer.running
    pacer.stop()
    assert gc.isenabled() and not pacer.running
    gc.disable()
    pacer.start()
    pacer.stop()
    assert not gc.isenabled()  # it was off before start: it stays off


def test_a_young_collection_runs_only_past_the_threshold_and_freezes_what_survives(collector: None) -> None:
    pauses: list[tuple[int, float]] = []
    pacer = GcPacer(young_threshold=5000, on_pause=lambda g, s: pauses.append((g, s)), clock=Clock())
    gc.collect()
    pacer.start()
    frozen = gc.get_freeze_count()
    kept = [[i] for i in range(100)]
    assert gc.get_count()[0] < 5000
    assert pacer.between_batches() is None and pauses == []
    kept += [[i] for i in range(6000)]  # survivors: still referenced
    assert pacer.between_batches() == 0
    assert [g for g, _ in pauses] == [0] and pauses[0][1] >= 0.0
    assert gc.get_count()[0] < 100  # the young generation was emptied
    assert gc.get_freeze_count() >= frozen + len(kept)  # the survivors are frozen, not scanned again
    assert pacer.between_batches() is None  # nothing new piled up


def test_garbage_cycles_die_in_the_young_collection_or_in_the_full_one_once_frozen(collector: None) -> None:
    clock = Clock()
    pacer = GcPacer(young_threshold=2000, full_interval_s=600.0, clock=clock)
    gc.collect()
    pacer.start()
    dead_young = cycle()  # unreachable before the next collection
    alive_then = cycle()
    holder = [alive_then()]  # reachable at the young collection: frozen with the survivors
    filler = [[i] for i in range(3000)]
    assert pacer.between_batches() == 0
    assert dead_young() is None  # the young collection freed it
    assert alive_then() is not None
    holder.clear()  # now garbage, but frozen: only a full collection scans it
    filler += [[i] for i in range(3000)]
    assert pacer.between_batches() == 0
    assert alive_then() is not None
    clock.now += 600.0
    assert pacer.between_batches() == 2  # the interval passed: a full collection, frozen objects included
    assert alive_then() is None
    assert gc.get_freeze_count() > 0  # the survivors are frozen again
    assert pacer.between_batches() is None  # the next full one is an interval away
    del filler


def test_tick_is_the_same_check_and_bad_settings_are_refused(collector: None) -> None:
    clock = Clock()
    pacer = GcPacer(young_threshold=10**9, full_interval_s=5.0, clock=clock)
    pacer.start()
    assert pacer.tick() is None
    clock.now += 5.0
    assert pacer.tick() == 2
    for bad in ({"young_threshold": 0}, {"full_interval_s": 0.0}):
        with pytest.raises(ValueError, match="young_threshold"):
            GcPacer(**bad)  # type: ignore[arg-type]
