"""How long the model trainer rests after a training step, so that it takes at most a share of the loop.

Deciding and training share one event loop. Labels arrive in bursts (every exposure of an attribution
window resolves when event time passes its end), and a trainer that ran whenever it had labels took
most of the CPU after a burst: the intake fell behind and decisions waited seconds. With a share s, a
step that was busy for t seconds is followed by a rest of t·(1 − s)/s, so over any stretch of work the
trainer holds the loop at most s of the time. Labels that arrive faster than that wait in the bounded
backlog, and the overflow is dropped and counted (``cadence_model_labels_dropped_total``).
This paces CPU, not events: it uses the process's monotonic clock, never event time.
"""

from __future__ import annotations


def rest_after(busy_s: float, cpu_share: float) -> float:
    """Seconds to rest after a training step that was busy ``busy_s`` seconds (share in (0, 1])."""
    if not 0.0 < cpu_share <= 1.0:
        raise ValueError(f"the trainer's CPU share must be in (0, 1], got {cpu_share}")
    return max(busy_s, 0.0) * (1.0 - cpu_share) / cpu_share
