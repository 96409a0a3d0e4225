"""The leading worker's periodic snapshot (``streams.app``'s ``save_snapshot`` timer, every
``CADENCE_SNAPSHOT_INTERVAL_S``): what was learned, with the learning topic's offsets, as a new version."""

from __future__ import annotations

from typing import Any

from engine.processor import Engine
from learning.live_models import LiveScorer
from learning.snapshots import SnapshotInfo, SnapshotStore


class PeriodicSnapshots:
    """``status`` is the worker's (see ``streams.rollbacks.RollbackFollower``): ``generation`` (the snapshot
    generation its state belongs to: a save is refused once a rollback bumped it) and ``snapshot`` (the version
    it last loaded or saved)."""

    def __init__(self, snapshots: SnapshotStore, engine: Engine, status: dict[str, Any], worker_id: str) -> None:
        self.snapshots = snapshots
        self.engine = engine
        self.status = status
        self.worker_id = worker_id

    async def save(self) -> tuple[SnapshotInfo, LiveScorer | None] | None:
        """Save this worker's learned state as the newest version; returns it with the scorer compiled from the
        models it holds (for the other workers), or None when refused (a rollback this worker has not followed
        yet: ``follow_rollbacks`` loads it first)."""
        engine = self.engine
        info = SnapshotInfo(0, engine.policy.name, engine.policy.version, dict(engine.learned_offsets),
                            engine.learned_watermark, note=f"periodic, by {self.worker_id}")
        blob = engine.learned_state().pack()
        scorer = engine.models.publish() if engine.models is not None else None  # the version the snapshot holds
        saved = await self.snapshots.save_if_current(blob, info, self.status["generation"])
        if saved is None:
            return None
        self.status["snapshot"] = saved.version
        return saved, scorer
