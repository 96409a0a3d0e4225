"""Live lift of the engine over the holdout group, from the learning stream (so every worker has it).

Each decision's exposure opens an observation in its group (treated, or control for mode "holdout");
its rewards add to that group's total. Per-decision variance is approximated by the sum of squared
reward events (exact when a decision gets at most one reward; a click plus a conversion on one
decision makes the interval slightly narrow). Normal-approximation interval on the difference of means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contracts.decisions import LearningSample

Z95 = 1.959963984540054


@dataclass(slots=True)
class _Group:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def var_of_mean(self) -> float:
        if self.n < 2:
            return math.inf
        var = max(self.total_sq / self.n - self.mean**2, 0.0) * self.n / (self.n - 1)
        return var / self.n


class LiftTracker:
    def __init__(self) -> None:
        self._treated = _Group()
        self._control = _Group()

    def add(self, sample: LearningSample) -> None:
        group = self._control if sample.mode == "holdout" else self._treated
        if sample.kind == "exposure":
            group.n += 1
        elif sample.kind == "reward":
            group.total += sample.reward
            group.total_sq += sample.reward**2

    def to_state(self) -> dict[str, list[float]]:
        """The six numbers, for snapshots: a worker resuming the learning topic at a snapshot's offsets must
        resume its lift there too (otherwise it counts rewards of decisions it never counted)."""
        t, c = self._treated, self._control
        return {"treated": [t.n, t.total, t.total_sq], "control": [c.n, c.total, c.total_sq]}

    @classmethod
    def from_state(cls, state: object) -> LiftTracker:
        """``to_state``'s numbers back; anything else (a snapshot from before lift was kept) starts empty."""
        tracker = cls()
        if isinstance(state, dict):
            for name, group in (("treated", tracker._treated), ("control", tracker._control)):
                values = state.get(name)
                if isinstance(values, list | tuple) and len(values) == 3:
                    group.n, group.total, group.total_sq = int(values[0]), float(values[1]), float(values[2])
        return tracker

    def result(self) -> dict[str, float | int | None]:
        t, c = self._treated, self._control
        diff = t.mean - c.mean
        se = math.sqrt(t.var_of_mean + c.var_of_mean) if t.n >= 2 and c.n >= 2 else None
        return {
            "treated_decisions": t.n,
            "control_decisions": c.n,
            "treated_reward_per_decision": t.mean,
            "control_reward_per_decision": c.mean,
            "lift": diff,
            "lift_ci95_low": diff - Z95 * se if se is not None else None,
            "lift_ci95_high": diff + Z95 * se if se is not None else None,
            "relative_lift": diff / c.mean if c.mean > 0 else None,
        }
