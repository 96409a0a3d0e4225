"""The leading worker's periodic snapshot (``streams.app``'s ``save_snapshot`` timer, every
``CADENCE_SNAPSHOT_INTERVAL_S``): what was learned, with the learning topic's offsets, as a new version.

Only when something was learned since the version this worker last saved or loaded (at start, or following a
rollback): an idle leader used to write an identical version every interval, and the versions kept filled with
copies, pushing real rollback points out. "Learned" is ``Engine.learned_mark`` (versions of the policy, shadow
and models, a digest of the lift, the offsets) with the snapshot generation: a new leader that learned nothing
since its load holds the version it loaded (saving it again as the newest would only copy an older state over
what the previous leader saved). A worker that followed a rollback holds that version's state except the lift,
which a rollback does not restore: its next save writes one version with the lift it kept counting."""

from __future__ import annotations

from typing import Any

from engine.processor import Engine
from learning.live_models import LiveScorer
from learning.snapshots import SnapshotInfo, SnapshotStore


class PeriodicSnapshots:
    """``status`` is the worker's (see ``streams.rollbacks.RollbackFollower``): ``generation`` (the snapshot
    generation its state belongs to: a save is refused once a rollback bumped it), ``snapshot`` (the version
    it last loaded or saved) and ``learned`` (the generation and ``Engine.learned_mark`` of that version)."""

    def __init__(self, snapshots: SnapshotStore, engine: Engine, status: dict[str, Any], worker_id: str) -> None:
        self.snapshots = snapshots
        self.engine = engine
        self.status = status
        self.worker_id = worker_id

    def loaded(self) -> None:
        """The worker's state is now the version it loaded at start: nothing to save until it learns more
        (``RollbackFollower`` records a followed rollback's version the same way)."""
        self.status["learned"] = (self.status["generation"], self.engine.learned_mark())

    async def save(self) -> tuple[SnapshotInfo, LiveScorer | None, int] | None:
        """Save this worker's learned state as the newest version; returns it with the scorer compiled from the
        models it holds (for the other workers) and the generation the save was checked under (publish the
        scorer with that one: a rollback followed during the save's round trips moves ``status``'s on), or None
        when nothing was learned since the version this worker last saved or loaded, or while the lift is not
        in step with the policy after a rollback (no version written), or when refused (a rollback this worker
        has not followed yet: ``follow_rollbacks`` loads it first)."""
        engine = self.engine
        if not engine.lift_in_step():  # reading again after a rollback: the lift is not where the policy is
            return None
        generation = self.status["generation"]
        mark = (generation, engine.learned_mark())  # read with the state: no await in between
        if mark == self.status.get("learned"):
            return None
        info = SnapshotInfo(0, engine.policy.name, engine.policy.version, dict(engine.learned_offsets),
                            engine.learned_watermark, note=f"periodic, by {self.worker_id}")
        blob = engine.learned_state().pack()
        scorer = engine.models.publish() if engine.models is not None else None  # the version the snapshot holds
        saved = await self.snapshots.save_if_current(blob, info, generation)
        if saved is None:
            return None
        if self.status["generation"] == generation:  # else a rollback was followed meanwhile: its version stands
            self.status["snapshot"], self.status["learned"] = saved.version, mark
        return saved, scorer, generation
