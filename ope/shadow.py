"""Shadow mode: a challenger policy chooses next to the live one, is never shown, and leaves a record.

The record keeps the challenger's own pick, its probability, its probability of the action the live policy
showed, and whether the two agreed. What it is for: watching the challenger (how often it agrees with the
live decisions, what it would pick) on live traffic. What it is not: an importance-weighting log for the
challenger as the engine would run it. The challenger's probabilities are the bare bandit's, before
arbitration (no values, costs or boost levers), while ``live_probability`` is after arbitration; and the
engine writes records for sticky decisions and for exploits on placements with stickiness rules too, whose
live p = 1 was decided, not drawn. ``challenger_probability_of_live / live_probability`` is therefore not
the weight of the challenger as it would be deployed; nothing in ope/ reads these records. To evaluate a
challenger, run ``cadence ope`` with a ``bandit`` candidate: trained on the first half of the learning log,
run through arbitration as the engine runs it, scored on the decisions the bandit drew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import orjson

from bandits.base import Choice
from contracts.decisions import Decision


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    decision_id: str
    placement: str
    ts: float
    live_action: str
    live_probability: float
    challenger: str
    challenger_version: int
    challenger_action: str
    challenger_probability: float  # probability the bare challenger (no arbitration) gave its own pick
    # π_challenger(live action | x) before arbitration, 0 when it was not eligible for it
    challenger_probability_of_live: float

    @property
    def agrees(self) -> bool:
        return self.live_action == self.challenger_action

    def to_json(self) -> bytes:
        return orjson.dumps({**asdict(self), "agrees": self.agrees})


class ShadowLog:
    """Builds shadow records for one named challenger (pure: no I/O, no clock, no randomness)."""

    def __init__(self, challenger: str) -> None:
        self.challenger = challenger

    def record(self, live: Decision, choice: Choice, challenger_version: int = 0) -> ShadowRecord:
        return ShadowRecord(
            decision_id=live.decision_id,
            placement=live.placement,
            ts=live.ts,
            live_action=live.action,
            live_probability=live.probability,
            challenger=self.challenger,
            challenger_version=challenger_version,
            challenger_action=choice.action,
            challenger_probability=choice.probability,
            challenger_probability_of_live=choice.probability_of(live.action),
        )
