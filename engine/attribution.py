"""Reward join on event time: which pending decision a click or conversion is credited to (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from contracts.events import Event
from engine.pending import PendingDecision
from policy.catalogue import NO_ACTION


class Credit(StrEnum):
    CREDITED = "credited"
    NO_DECISION = "no_decision"  # nothing pending matches (never decided, or superseded)
    ALREADY_CREDITED = "already_credited"
    LATE = "late"  # after the attribution window: counted, not learned
    BEFORE_DECISION = "before_decision"  # ts earlier than the decision: cannot be its effect


@dataclass(frozen=True, slots=True)
class Windows:
    click_s: float
    conversion_s: float

    def of(self, reward_type: str) -> float:
        return self.click_s if reward_type == "click" else self.conversion_s


def match_pending(event: Event, pending: list[PendingDecision], windows: Windows | None = None
                  ) -> PendingDecision | None:
    """The decision a reward event refers to: by decision_id, else the latest one with its action/placement
    made at or before the reward's event time (a reward read after a newer decision still belongs to the
    one it followed). If every candidate is later than the reward, the latest: ``credit`` says why not.

    Without a decision_id, a decision that showed something (within the reward's window, given ``windows``,
    and not yet credited with this reward type) goes before a later one that showed "none": showing nothing
    cannot have caused the reward, so the action shown before it is credited and learned. A "none" decision
    (kept for the lift) takes the reward when no action shown qualifies, so the reward still counts in the
    user's lift group (a second conversion after a treated "none" as after a control one)."""
    if event.decision_id:
        return next((p for p in pending if p.decision_id == event.decision_id), None)
    candidates = [p for p in pending if event.action_id is None or p.action == event.action_id]
    if event.placement:
        candidates = [p for p in candidates if p.placement == event.placement]
    before = [p for p in candidates if p.ts <= event.ts]
    reward_type = event.kind.reward or ""
    window = windows.of(reward_type) if windows is not None else math.inf
    shown = [p for p in before
             if p.action != NO_ACTION and event.ts - p.ts <= window and reward_type not in p.credited]
    return max(shown or before or candidates, key=lambda p: p.ts, default=None)


def credit(event: Event, decision: PendingDecision | None, windows: Windows) -> Credit:
    """Whether ``event`` (a reward) may be learned for ``decision``; marks it credited when it may."""
    reward_type = event.kind.reward
    assert reward_type is not None, "credit() is only for reward events"
    if decision is None:
        return Credit.NO_DECISION
    if event.ts < decision.ts:
        return Credit.BEFORE_DECISION
    if reward_type in decision.credited:
        return Credit.ALREADY_CREDITED
    if event.ts - decision.ts > windows.of(reward_type):
        return Credit.LATE
    decision.credited.append(reward_type)
    return Credit.CREDITED
