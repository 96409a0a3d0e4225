"""Outputs of events the feature store has already seen: what a crash may have lost, re-emitted.

At-least-once delivery means a batch whose outputs never reached the broker (a worker killed between
its Redis call and the broker's acknowledgement) comes back after the restart. Its events are then
duplicates for the feature store (the dedup ring), so they change nothing; but their decision and
learning samples must still go out. They are rebuilt from what Redis kept: the pending decision of the
request's placement. Re-emitting is safe: the decision keeps its id and action (consumers de-duplicate
by ``decision_id``), and learners drop samples whose key they have already applied (``SeenKeys``).
"""

from __future__ import annotations

from collections import OrderedDict
from hashlib import blake2b
from itertools import islice

from contracts.decisions import Decision, LearningSample, Mode, decision_id_for, user_bucket
from contracts.events import Event
from engine.attribution import Windows, match_pending
from engine.pending import PendingDecision, pending_decisions
from features.state import UserState


def _pending_of(event: Event, state: UserState | None) -> PendingDecision | None:
    if state is None:
        return None
    wanted = decision_id_for(event.event_id, event.placement or "")
    return next((p for p in pending_decisions(state) if p.decision_id == wanted), None)


def replayed_decision(event: Event, state: UserState | None, policy: str) -> tuple[Decision, LearningSample] | None:
    """The decision (and its exposure) already made for this request, if Redis still holds it."""
    p = _pending_of(event, state)
    if p is None:
        return None
    decision = Decision(
        decision_id=p.decision_id, request_event_id=event.event_id, user_id=event.user_id, ts=event.ts,
        channel=event.channel, placement=p.placement, action=p.action, probability=round(p.probability, 6),
        mode=Mode(p.mode), policy=policy, policy_version=p.policy_version, trace={"replayed": True},
    )
    exposure = LearningSample(kind="exposure", decision_id=p.decision_id, action=p.action, x=p.x,
                              probability=p.probability, placement=p.placement, ts=p.ts, mode=p.mode,
                              user_bucket=user_bucket(event.user_id))
    return decision, exposure


def decision_never_stored(event: Event, state: UserState | None) -> bool:
    """No decision of this placement is as recent as the request: its decision was never written."""
    if state is None:
        return False
    placement = event.placement or ""
    newer = [p for p in pending_decisions(state) if p.placement == placement and p.ts >= event.ts]
    return not newer


def replayed_reward(event: Event, state: UserState | None, click_reward: float,
                    value_scale: float, windows: Windows | None = None) -> LearningSample | None:
    """The reward sample of a reward event whose credit Redis already recorded (``windows``: the ones the
    credit was given with, so the same decision is found)."""
    reward_type = event.kind.reward
    target = match_pending(event, pending_decisions(state), windows) if state is not None else None
    if reward_type is None or target is None or reward_type not in target.credited:
        return None
    reward = click_reward if reward_type == "click" else event.revenue / value_scale
    if reward <= 0:
        return None
    return LearningSample(kind="reward", decision_id=target.decision_id, action=target.action, x=target.x,
                          reward=reward, probability=target.probability, placement=target.placement, ts=event.ts,
                          mode=target.mode, reward_type=reward_type, user_bucket=user_bucket(event.user_id))


SNAPSHOT_KEYS = 50_000  # keys a snapshot carries (8 bytes each): far more than a crashed batch re-emits
_KEY_HASH = blake2b(digest_size=8)  # empty: SeenKeys copies it per key (no keyword parsing per call)


class SeenKeys:
    """The last ``capacity`` learning-sample keys applied: a replayed sample is applied once.

    Keys are kept as 8-byte digests. A snapshot carries the newest ``SNAPSHOT_KEYS`` of them: a crashed
    worker's re-read batch re-emits samples whose originals may be just before the snapshot's offsets, and a
    worker resuming from the snapshot reads the copies after them.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        hasher = _KEY_HASH.copy()  # the same digest as blake2b(key, digest_size=8), made ~0.1 us sooner
        hasher.update(key.encode())
        digest = hasher.digest()
        if digest in self._keys:
            return False
        self._keys[digest] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def newest(self, n: int = SNAPSHOT_KEYS) -> bytes:
        """The newest ``n`` digests, oldest first, as one string of bytes (for a snapshot)."""
        keys = self._keys
        skip = max(0, len(keys) - n)
        return b"".join(islice(keys, skip, None))

    def remember(self, digests: bytes) -> None:
        """Add the digests ``newest`` gave (a restored snapshot's), as the newest (a worker resumes empty)."""
        for at in range(0, len(digests) - len(digests) % 8, 8):
            self._keys[digests[at : at + 8]] = None
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
