"""Bid signals for ad platforms: a bounded, value-based multiplier per decision on an ad placement.

multiplier = clip(ev / reference_ev, low, high), where ev is arbitration's expected value of the creative
shown to this user (its entry in the decision's ranked ``trace.top``: bandit score x value scale x boost
- cost; the score is optimistic while the bandit still explores) and reference_ev a running mean of ev
on that placement (exponentially weighted, per worker). 1.0 means "bid as usual"; 2.0 "this impression
is worth twice the typical one". No signal before the reference has seen ``warmup`` decisions, nor for
decisions without a ranking (pinned, holdout, fallback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from contracts.decisions import Decision


@dataclass(slots=True)
class BidSignaller:
    low: float = 0.5
    high: float = 2.0
    decay: float = 0.01  # weight of each new decision in the running reference
    warmup: int = 50
    _reference: dict[str, float] = field(default_factory=dict)
    _seen: dict[str, int] = field(default_factory=dict)

    def signal(self, decision: Decision, ev: float | None = None) -> dict | None:
        ranked = {t.get("action"): t.get("ev") for t in decision.trace.get("top") or []}
        ev = ranked.get(decision.action)
        if ev is None or not math.isfinite(ev):  # an infinite value would pin the placement's reference for good
            return None
        placement = decision.placement
        ref = self._reference.get(placement)
        self._reference[placement] = ev if ref is None else (1 - self.decay) * ref + self.decay * ev
        self._seen[placement] = self._seen.get(placement, 0) + 1
        if ref is None or ref <= 0 or self._seen[placement] <= self.warmup:
            return None
        multiplier = min(self.high, max(self.low, ev / ref))
        return {
            "decision_id": decision.decision_id,
            "user_id": decision.user_id,
            "placement": placement,
            "creative_id": decision.action,
            "ts": decision.ts,
            "bid_multiplier": round(multiplier, 4),
            "expected_value": round(ev, 6),
            "reference_value": round(ref, 6),
        }
