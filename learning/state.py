"""What a snapshot holds: the policy, the shadow (challenger) policy when one runs, the River models (when
enabled), the holdout lift and the digests of the newest learning samples applied (so that a worker resuming
from it does not apply again a sample re-emitted after a crash), as one blob.

The models travel as ``ModelSet.snapshot()`` bytes (header with format and River version), so a snapshot
written by another River version still restores the policy: the models are then left out (logged) and
retrained, rather than the whole snapshot refused. The label join's waiting exposures and the churn
labeller's open snapshots are not included (they are large and rebuilt from the stream within a window).
A snapshot without a shadow (older, or written without one) still loads: a configured challenger then
learns from its offsets on.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

from bandits.base import Policy
from engine.lift import LiftTracker
from models.registry import ModelSet

FORMAT = 1
log = logging.getLogger(__name__)


@dataclass(slots=True)
class LearnedState:
    policy: Policy
    models: ModelSet | None = None  # the River models when scoring models are enabled
    # the lift over the learning topic up to the snapshot's offsets (None in snapshots from before it was kept)
    lift: LiftTracker | None = None
    # digests of the newest learning samples applied (engine.replay.SeenKeys.newest): their copies, re-emitted
    # after a crash past the snapshot's offsets, are not applied again (b"" in snapshots from before)
    seen: bytes = b""
    # the shadow (challenger) policy, trained on the same samples (None in snapshots from before it was kept)
    shadow: Policy | None = None

    def pack(self) -> bytes:
        return pickle.dumps(
            {"format": FORMAT, "policy": self.policy.snapshot(),
             "models": self.models.snapshot() if self.models is not None else None,
             "lift": self.lift.to_state() if self.lift is not None else None, "seen": self.seen,
             "shadow": self.shadow.snapshot() if self.shadow is not None else None},
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    @classmethod
    def unpack(cls, blob: bytes) -> LearnedState:
        doc = pickle.loads(blob)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("snapshot blob is not a cadence learned-state snapshot (format 1)")
        models = doc.get("models")
        if isinstance(models, bytes):
            try:
                models = ModelSet.restore(models)
            except ValueError as exc:
                log.error("snapshot models left out, they will be retrained: %s", exc)
                models = None
        elif models is not None and not isinstance(models, ModelSet):
            log.error("snapshot models of unknown type %s left out", type(models).__name__)
            models = None
        lift = LiftTracker.from_state(doc["lift"]) if doc.get("lift") is not None else None
        seen = doc.get("seen")
        shadow = None
        if isinstance(doc.get("shadow"), bytes):
            try:
                shadow = Policy.restore(doc["shadow"])
            except (ValueError, TypeError) as exc:  # the live policy counts; the challenger can start afresh
                log.error("snapshot shadow policy left out, the challenger starts afresh: %s", exc)
        return cls(Policy.restore(doc["policy"]), models, lift, seen if isinstance(seen, bytes) else b"", shadow)
