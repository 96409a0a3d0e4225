"""Shadow mode: a challenger policy chooses next to the live one, is never shown, and leaves a record.

The record keeps what OPE needs later: the challenger's probability of the action the live policy
actually showed (the numerator of the importance weight for that logged decision) and whether the two
agreed, besides the challenger's own pick.
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
    challenger_probability: float  # probability the challenger gave its own pick
    challenger_probability_of_live: float  # π_challenger(live action | x), 0 when it was not eligible for it

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
            challenger_probability_of_live=choice.probabilities.get(live.action, 0.0),
        )
