"""The decision for one request (pure apart from the policy's own random generator)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bandits.base import Policy
from contracts.decisions import Decision, Mode, decision_id_for
from contracts.events import Event
from engine.pending import PendingDecision
from features.context import build_context
from features.state import UserState
from policy.catalogue import Catalogue

TOP_SCORES = 3


@dataclass(slots=True)
class Decided:
    decision: Decision
    pending: PendingDecision | None  # None when nothing was learned from this decision (fallbacks)


def fallback(event: Event, catalogue: Catalogue, policy: Policy, reason: str) -> Decided:
    """The placement's default action, marked as a fallback with its reason."""
    placement = event.placement or ""
    decision = Decision(
        decision_id=decision_id_for(event.event_id, placement),
        request_event_id=event.event_id,
        user_id=event.user_id,
        ts=event.ts,
        channel=event.channel,
        placement=placement,
        action=catalogue.default_action(placement),
        probability=1.0,
        mode=Mode.FALLBACK,
        policy=policy.name,
        policy_version=policy.version,
        trace={"fallback": reason},
    )
    return Decided(decision, None)


def decide(event: Event, state: UserState | None, catalogue: Catalogue, policy: Policy) -> Decided:
    placement = event.placement or ""
    consent = event.consent if event.consent is not None else (state.consent if state else None)
    if consent is False:
        return fallback(event, catalogue, policy, "no_marketing_consent")
    eligible = catalogue.eligible(placement)
    if not eligible:
        return fallback(event, catalogue, policy, "no_eligible_action")
    x = build_context(event, state)
    choice = policy.select(x, eligible)
    top = sorted(choice.scores.items(), key=lambda kv: kv[1], reverse=True)[:TOP_SCORES]
    decision_id = decision_id_for(event.event_id, placement)
    decision = Decision(
        decision_id=decision_id,
        request_event_id=event.event_id,
        user_id=event.user_id,
        ts=event.ts,
        channel=event.channel,
        placement=placement,
        action=choice.action,
        probability=round(choice.probability, 6),
        mode=Mode.EXPLORE if choice.explored else Mode.EXPLOIT,
        policy=policy.name,
        policy_version=policy.version,
        trace={
            "eligible": len(eligible),
            "top_scores": [{"action": a, "score": round(s, 4)} for a, s in top],
            "greedy": choice.greedy,
        },
    )
    pending = PendingDecision(
        decision_id=decision_id,
        placement=placement,
        action=choice.action,
        probability=choice.probability,
        ts=event.ts,
        policy_version=policy.version,
        x=np.asarray(x, dtype=np.float64),
    )
    return Decided(decision, pending)
