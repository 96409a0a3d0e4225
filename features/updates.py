"""What one validated event changes in its user's feature hash (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from contracts.events import Event

REVENUE_COUNTER = "rv"


@dataclass(slots=True)
class FeatureUpdate:
    user_id: str
    digest: bytes  # 8-byte digest of event_id: the per-user dedup ring holds these
    ts: float
    want_state: bool
    counters: list[tuple[str, float]] = field(default_factory=list)
    sets: list[tuple[str, str, str]] = field(default_factory=list)  # (mode, field, value)
    erased: bool = False  # set by the store: Redis refused the update, the user is in the erased set


_EMPTY_DIGEST = hashlib.blake2b(digest_size=8)  # copied per event: a copy costs less than a new hasher's set-up


def event_digest(event_id: str) -> bytes:
    digest = _EMPTY_DIGEST.copy()
    digest.update(event_id.encode())
    return digest.digest()


def update_for(event: Event, store_profile: bool = True) -> FeatureUpdate:
    """Counters to increment and fields to set for one event.

    ``store_profile=False`` (no marketing consent) keeps only what the engine needs to de-duplicate and
    to count traffic, not the profile fields that describe the person.
    """
    kind = event.kind
    ts = repr(event.ts)
    # the lists built as literals where the event type decides them (fewer appends: this runs per event)
    counter = kind.counter
    if counter:
        counters = [(counter, 1.0)]
        sets = [(">", f"t:{counter}", ts), ("<", "fs", ts)]
    else:
        counters = []
        sets = [("<", "fs", ts)]
    if event.revenue > 0:
        counters.append((REVENUE_COUNTER, event.revenue))
    if event.consent is not None:  # applied by event time: apply_batch.lua keeps it only if ts >= cons_t
        sets.append(("=", "cons", "1" if event.consent else "0"))
    if store_profile:
        if event.device:
            sets.append(("=", "dev", event.device))
        if event.segment:
            sets.append(("=", "seg", event.segment))
    # positional (a class's __init__ called with keywords gets them in a new dict): user_id, digest, ts,
    # want_state, counters, sets
    return FeatureUpdate(event.user_id, event_digest(event.event_id), event.ts,
                         kind.requests_decision or kind.reward is not None, counters, sets)
