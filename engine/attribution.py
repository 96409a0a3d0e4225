"""Reward join on event time: which pending decision a click or conversion is credited to, and which decision
of the lift's groups it counts on (pure).

Credit is once per reward type and decision, within its window (``match_pending``, ``credit``); the lift counts
every reward of a grouped user after one of their decisions within its window, once (``lift_decision``): a
reward the credit leaves out of the lift goes there as a lift-only reward sample (``lift_only_reward``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from contracts.decisions import LearningSample, decision_id_for, user_bucket
from contracts.events import Event
from engine.pending import PendingDecision
from policy.catalogue import NO_ACTION

LIFT_ONLY_REWARD = "lift-only-reward"  # the "placement" a lift-only reward's id is made with (never a real one)


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
    (kept for the lift) takes the reward when no action shown qualifies.

    A decision_id the ring no longer keeps (``KEEP`` newer decisions of its placement showed an action since:
    three more page views with the same sticky offer) is matched as a reward without one, but only to a
    decision that may still take it: one that showed an action (the event's action and placement, when it
    says them), at or before the reward, within its window, not yet credited with this reward type (None
    otherwise). Before, such a conversion was dropped as no_decision inside its 7-day window."""
    if event.decision_id:
        found = next((p for p in pending if p.decision_id == event.decision_id), None)
        if found is not None:
            return found
        return max(_creditable_shown(event, _candidates(event, pending), windows), key=_ts, default=None)
    candidates = _candidates(event, pending)
    before = [p for p in candidates if p.ts <= event.ts]
    return max(_creditable_shown(event, before, windows) or before or candidates, key=_ts, default=None)


def _ts(p: PendingDecision) -> float:
    return p.ts


def _candidates(event: Event, pending: list[PendingDecision]) -> list[PendingDecision]:
    """The pending decisions of the event's action and placement (each when the event says it)."""
    candidates = [p for p in pending if event.action_id is None or p.action == event.action_id]
    if event.placement:
        candidates = [p for p in candidates if p.placement == event.placement]
    return candidates


def _creditable_shown(event: Event, candidates: list[PendingDecision], windows: Windows | None
                      ) -> list[PendingDecision]:
    """Those of ``candidates`` that showed an action, at or before the reward and within its window, and are
    not credited with its reward type yet."""
    reward_type = event.kind.reward or ""
    window = windows.of(reward_type) if windows is not None else math.inf
    return [p for p in candidates if p.action != NO_ACTION and 0 <= event.ts - p.ts <= window
            and reward_type not in p.credited]


def lift_decision(event: Event, pending: list[PendingDecision], windows: Windows,
                  covers: Callable[[str], bool]) -> PendingDecision | None:
    """The decision a reward counts on in the lift, whether or not it can be credited: the user's latest
    pending decision on a placement the holdout ``covers``, made at or before the reward and within its
    window, whatever it showed and whatever the event says of its decision, action or placement (None: the
    reward is in neither of the lift's groups).

    The holdout assigns users, and the lift measures reward per decision at the user's level: every reward of
    a grouped user that follows one of their decisions within its window counts once, in their group. Credit,
    by contrast, is once per reward type and decision, and how many decisions a user has to credit depends on
    what they were shown (the ring keeps ``KEEP`` that showed an action and one "none"): a treated user's
    second conversion went to an older offer, a control user's (who saw only "none") was already_credited,
    and an A/A test read +100 %. Whether a reward counts here depends only on when the user's decisions were
    made (the latest decision of a placement is always kept), so an A/A test reads no lift. A reward the
    event's fields tie to one decision would not do: the decision they name is kept in one group and pushed
    out in the other."""
    window = windows.of(event.kind.reward or "")
    found = [p for p in pending if covers(p.placement) and 0 <= event.ts - p.ts <= window]
    return max(found, key=_ts, default=None)


def lift_only_decision(event: Event, pending: list[PendingDecision], credited: PendingDecision | None,
                       windows: Windows, covers: Callable[[str], bool]) -> PendingDecision | None:
    """The decision a lift-only reward sample goes on (``lift_only_reward``): ``lift_decision``'s, unless the
    reward's own credit already counts in the lift (``credited``, the decision credited with it, on a
    placement the holdout covers). None: nothing to add, so the lift counts each reward once at most."""
    if credited is not None and covers(credited.placement):
        return None
    return lift_decision(event, pending, windows, covers)


def lift_only_reward(event: Event, decision: PendingDecision, reward: float) -> LearningSample:
    """The reward sample of a reward the lift counts but no decision is credited with (``lift_decision``):
    action "none", so only the lift reads it (no policy, model or off-policy estimate), on ``decision``'s
    placement and mode (its lift group: "holdout" for a control user), in the user's bucket. Its id comes
    from the reward event's, so a redelivered event yields the same sample (applied once)."""
    return LearningSample(kind="reward", decision_id=decision_id_for(event.event_id, LIFT_ONLY_REWARD),
                          action=NO_ACTION, x=decision.x, reward=reward, placement=decision.placement,
                          ts=event.ts, mode=decision.mode, reward_type=event.kind.reward or "",
                          user_bucket=user_bucket(event.user_id))


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
