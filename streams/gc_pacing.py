"""Python's cyclic garbage collector, run between batches instead of in the middle of one.

Left to itself (with the worker's thresholds: 20,000, 20, 20), the collector starts whenever 20,000 more
container objects are alive than at its last run. In the worker that moment falls inside a batch, when
the batch's own events, decisions and traces are alive: a young collection then scans them (and promotes
them, though they die with the batch), and every 20th, an older collection scans everything promoted
since, a stall of about 200 ms on a 2-core VM that delays every event and HTTP answer waiting behind it.

Paced, the automatic collector is off and :meth:`GcPacer.between_batches` runs the collections where a
batch has just finished, so only objects that really outlive batches are scanned:

- a young collection (generation 0) once 20,000 more container objects are alive, then ``gc.freeze()``:
  what survived it (cache entries, waiting exposures) moves to the permanent generation and is never
  scanned again, so no older collection is needed between full ones;
- every ``full_interval_s`` (monotonic clock: this is process housekeeping, not event time), a full
  collection of everything, frozen objects included: reference cycles that died after being frozen are
  freed there. It is the one long pause left, once per interval.

A timer calls :meth:`tick` every second as well, so an idle worker or an HTTP-only replica collects too.
Measured with ``python -m load_tests.gc_pacing`` (numbers in load_tests/README_e2e.md).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

GC_GEN0_THRESHOLD = 20_000  # container objects alive beyond the last collection before a young collection


class GcPacer:
    def __init__(
        self, young_threshold: int = GC_GEN0_THRESHOLD, full_interval_s: float = 600.0,
        on_pause: Callable[[int, float], None] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if young_threshold < 1 or full_interval_s <= 0:
            raise ValueError("need young_threshold >= 1 and full_interval_s > 0")
        self.young_threshold = young_threshold
        self.full_interval_s = full_interval_s
        self.on_pause = on_pause  # (generation, seconds) of every collection run
        self.clock = clock
        self.running = False
        self._full_at = 0.0
        self._was_enabled = True

    def start(self) -> None:
        """Turn the automatic collector off and collect from here on (call once the worker is set up)."""
        if self.running:
            return
        self._was_enabled = gc.isenabled()
        gc.disable()
        self.running = True
        self._full_at = self.clock() + self.full_interval_s

    def stop(self) -> None:
        """Give the collector back to Python (as it was before ``start``); frozen objects stay frozen."""
        if self.running:
            self.running = False
            if self._was_enabled:
                gc.enable()

    def between_batches(self) -> int | None:
        """Collect if it is time: the generation collected (0 young, 2 full), None when nothing ran."""
        if not self.running:
            return None
        if self.clock() >= self._full_at:
            return self.full()
        if gc.get_count()[0] < self.young_threshold:
            return None
        self._collect(0)
        gc.freeze()
        return 0

    tick = between_batches  # the one-second timer's call: the same check

    def full(self) -> int:
        """A full collection now, frozen objects included; the survivors are frozen again."""
        self._full_at = self.clock() + self.full_interval_s
        gc.unfreeze()
        self._collect(2)
        gc.freeze()
        return 2

    def _collect(self, generation: int) -> None:
        started = time.perf_counter()
        gc.collect(generation)
        if self.on_pause is not None:
            self.on_pause(generation, time.perf_counter() - started)
