"""A running worker follows a rollback (``cadence snapshots rollback V``): the rollback bumps the snapshot
generation, and every worker polls it (``streams.app``'s ``follow_rollbacks`` timer, every second)."""

from __future__ import annotations

import logging
from typing import Any

from engine.processor import Engine
from learning.snapshots import SnapshotStore
from learning.state import LearnedState

log = logging.getLogger(__name__)


class RollbackFollower:
    """``status`` is the worker's: ``generation`` (the snapshot generation its state belongs to, which its
    periodic snapshots are checked against) and ``snapshot`` (the version it last loaded or saved)."""

    def __init__(self, snapshots: SnapshotStore, engine: Engine, status: dict[str, Any]) -> None:
        self.snapshots = snapshots
        self.engine = engine
        self.status = status

    async def poll(self) -> None:
        generation, version = await self.snapshots.rollback_point()
        if generation != self.status["generation"]:
            found = await self.snapshots.load_rollback(version)
            if found is not None:
                state = LearnedState.unpack(found[1])
                self.engine.replace_policy(state.policy)
                if self.engine.models is not None and state.models is not None:
                    self.engine.models.replace(state.models)
                self.status["snapshot"] = found[0].version
                log.warning("rollback: now on snapshot version %s", found[0].version)
            # only once the state is in place: if the load or the unpack raised (Redis timed out), the generations
            # still differ and the next poll tries again; the leader's periodic snapshots stay refused meanwhile
            self.status["generation"] = generation
