"""The latest decisions per user and placement, kept in the user's hash until their rewards are in.

One field ``pd:{placement}`` holds the last ``KEEP`` decisions of that placement (newest first) as a JSON
list of compact lists; the context goes along as base64 of float16 (56 characters for 20 features), so a
reward arriving days later is learned with its context. Keeping more than the latest one matters: a
conversion often arrives after the user's next page view has replaced the decision it belongs to.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import orjson

from features.state import UserState

PENDING_PREFIX = "pd:"
KEEP = 3  # decisions kept per placement: ~140 bytes each


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

    def to_wire(self) -> list:
        x64 = base64.b64encode(self.x.astype(np.float16).tobytes()).decode("ascii")
        return [self.decision_id, self.action, round(self.probability, 6), self.ts, self.policy_version,
                self.credited, x64, self.mode]

    @classmethod
    def from_wire(cls, placement: str, doc: list) -> PendingDecision:
        decision_id, action, p, ts, version, credited, x64, mode = doc
        x = np.frombuffer(base64.b64decode(x64), dtype=np.float16).astype(np.float64)
        return cls(decision_id, placement, action, p, ts, version, x, list(credited), mode)

    @property
    def field(self) -> str:
        return PENDING_PREFIX + self.placement


def pending_decisions(state: UserState) -> list[PendingDecision]:
    """Every pending decision of the user, newest first within each placement."""
    out: list[PendingDecision] = []
    for name, raw in state.fields.items():
        if name.startswith(PENDING_PREFIX):
            placement = name[len(PENDING_PREFIX) :]
            out += [PendingDecision.from_wire(placement, doc) for doc in orjson.loads(raw)]
    return out


def slot_with(state: UserState | None, pending: PendingDecision) -> str:
    """The placement's field value with ``pending`` added (new) or replaced (same decision id).

    The other decisions of the placement stay in their wire form (no context decoded and encoded again).
    """
    raw = state.fields.get(pending.field) if state is not None else None
    others = [doc for doc in orjson.loads(raw) if doc[0] != pending.decision_id] if raw else []
    kept = sorted([pending.to_wire(), *others], key=lambda doc: doc[3], reverse=True)[:KEEP]
    return orjson.dumps(kept).decode()
