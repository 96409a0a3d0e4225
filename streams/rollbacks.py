"""A running worker follows a rollback (``cadence snapshots rollback V``): the rollback bumps the snapshot
generation, and every worker polls it (``streams.app``'s ``follow_rollbacks`` timer, every second).

Following it ends where a worker restarting from the rollback's snapshot would: its policy and models, and the
learning topic applied from its offsets (the topic's end at the rollback). The running worker's feed may be
behind them (it must not apply what the rollback keeps out) or past them (samples sent after the rollback,
applied to the old state before this poll, are applied again to the new one): the feed seeks back to the lower
of the two (``streams.learning_feed.Rewind``); the lift counts each sample once throughout."""

from __future__ import annotations

import logging
from typing import Any

from engine.processor import Engine
from learning.snapshots import SnapshotStore
from learning.state import LearnedState
from streams.learning_feed import FeedControl

log = logging.getLogger(__name__)


class UnreadableRollback(RuntimeError):
    """The version a rollback made live cannot be read: every poll says so, until another rollback."""


class RollbackFollower:
    """``status`` is the worker's: ``generation`` (the snapshot generation its state belongs to, which its
    periodic snapshots are checked against), ``snapshot`` (the version it last loaded or saved) and ``learned``
    (``streams.snapshotting``: that version's generation and ``Engine.learned_mark``)."""

    def __init__(self, snapshots: SnapshotStore, engine: Engine, status: dict[str, Any],
                 feed: FeedControl | None = None) -> None:
        self.snapshots = snapshots
        self.engine = engine
        self.status = status
        self.feed = feed if feed is not None else FeedControl()

    async def poll(self) -> None:
        generation, version = await self.snapshots.rollback_point()
        if generation != self.status["generation"]:
            found = await self.snapshots.load_rollback(version)
            if found is not None:
                info, blob = found
                try:
                    state = LearnedState.unpack(blob)
                except Exception as exc:  # damaged since (a rollback refuses a version that cannot be read)
                    raise UnreadableRollback(
                        f"snapshot version {info.version}, which the rollback of generation {generation} made live, "
                        f"cannot be read ({type(exc).__name__}: {exc}): this worker keeps its state (and, leading, "
                        "its snapshots are refused) until it follows one; roll back again to a version that can be "
                        "read (`cadence snapshots rollback V`, `cadence snapshots list`)") from exc
                # both at once (no await between): the feed applies no sample to the new state before seeking
                counted = self.engine.follow_rollback(state, info.offsets)
                self.feed.rewind(info.offsets, counted)
                self.status["snapshot"] = info.version
                # no "learned" mark: the state is the version's but for the lift, which goes on counting (a
                # rollback does not restore it), so the next save (once the lift is in step) writes a version
                # holding it; marked as saved, an idle leader never wrote one, and a restart took the older lift
                self.status.pop("learned", None)
                log.warning("rollback: now on snapshot version %s; learning again from its offsets %s",
                            info.version, info.offsets)
            # only once the state is in place: if the load or the unpack raised (Redis timed out), the generations
            # still differ and the next poll tries again; the leader's periodic snapshots stay refused meanwhile
            self.status["generation"] = generation
