"""The latest decision per user and placement, kept in the user's hash until its rewards are in.

Stored as one field ``pd:{placement}`` holding a compact JSON list; the context goes along as base64 of
float32 (108 characters for 20 features), so a reward arriving days later is learned with its context.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import orjson

from features.state import UserState

PENDING_PREFIX = "pd:"


@dataclass(slots=True)
class PendingDecision:
    decision_id: str
    placement: str
    action: str
    probability: float
    ts: float
    policy_version: int
    x: np.ndarray
    credited: list[str] = field(default_factory=list)  # reward types already credited
    mode: str = "exploit"  # the decision's mode: rewards of holdout decisions measure the control group

    def encode(self) -> str:
        x64 = base64.b64encode(self.x.astype(np.float32).tobytes()).decode("ascii")
        return orjson.dumps(
            [self.decision_id, self.action, round(self.probability, 6), self.ts, self.policy_version, self.credited,
             x64, self.mode]
        ).decode()

    @classmethod
    def decode(cls, placement: str, raw: str) -> PendingDecision:
        decision_id, action, p, ts, version, credited, x64, mode = orjson.loads(raw)
        x = np.frombuffer(base64.b64decode(x64), dtype=np.float32).astype(np.float64)
        return cls(decision_id, placement, action, p, ts, version, x, list(credited), mode)

    @property
    def field(self) -> str:
        return PENDING_PREFIX + self.placement


def pending_decisions(state: UserState) -> list[PendingDecision]:
    return [
        PendingDecision.decode(name[len(PENDING_PREFIX) :], raw)
        for name, raw in state.fields.items()
        if name.startswith(PENDING_PREFIX)
    ]
