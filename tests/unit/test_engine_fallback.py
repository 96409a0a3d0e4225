"""engine.decide.fallback: the default a fallback shows outside the policy pipeline (no consent, Redis away,
an erased user) is withheld by a ban lever too, for the user's stored segment as the pipeline judges it."""

from __future__ import annotations

import dataclasses

from bandits.linucb import LinUCB
from cadence.settings import DEFAULT_CATALOGUE
from contracts.events import Event
from engine.decide import decide
from features.context import CONTEXT_DIM
from features.state import UserState
from policy.catalogue import load_catalogue
from policy.levers import Lever, LeverBook, LeverKind
from policy.pipeline import PolicyContext

TS = 1_780_012_800.0 + 12 * 3600


def test_a_segment_ban_on_a_service_default_holds_for_a_user_without_consent() -> None:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    # a service email (no consent needed): the default a user who refused marketing still gets
    catalogue.actions["email_digest"] = dataclasses.replace(catalogue.actions["email_digest"], consent_needed=False)
    book = LeverBook()
    book.apply(Lever("b1", LeverKind.BAN, "ana", "legal hold", action="email_digest", segment="vip"))
    context = PolicyContext(catalogue, book)
    state = UserState("u1", {"seg": "vip"})  # the segment is stored, not on the event

    def decided(consent: bool | None) -> tuple[str, dict]:
        event = Event(event_id="e1", user_id="u1", ts=TS, type="email_request", topic="email-events",
                      channel="email", placement="newsletter", consent=consent)
        d = decide(event, state, context, LinUCB(CONTEXT_DIM)).decision
        return d.action, d.trace

    assert decided(None)[0] != "email_digest"
    action, trace = decided(False)
    assert (action, trace["fallback"], trace["default_withheld"]) == ("none", "no_marketing_consent", "ban")
    book.revoke("b1", "ana", "hold lifted", TS)
    assert decided(False)[0] == "email_digest"
