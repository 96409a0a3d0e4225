"""What a snapshot holds: the policy (and models, when configured), as one blob."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from bandits.base import Policy

FORMAT = 1


@dataclass(slots=True)
class LearnedState:
    policy: Policy
    models: Any = None  # models.registry.ModelSet when scoring models are enabled

    def pack(self) -> bytes:
        return pickle.dumps(
            {"format": FORMAT, "policy": self.policy.snapshot(), "models": self.models},
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    @classmethod
    def unpack(cls, blob: bytes) -> LearnedState:
        doc = pickle.loads(blob)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("snapshot blob is not a cadence learned-state snapshot (format 1)")
        return cls(Policy.restore(doc["policy"]), doc.get("models"))
