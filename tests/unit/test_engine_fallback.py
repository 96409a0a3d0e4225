"""The default shown outside the policy pipeline (no consent, Redis away, an erased user): withheld by a ban
lever too, for the user's stored segment as the pipeline judges it, and held to the contact rules."""

from __future__ import annotations

import dataclasses

from bandits.linucb import LinUCB
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import Mode
from contracts.events import Event
from engine.decide import POLICY_STATE_FIELD, PolicyStates, decide, fallback
from features.context import CONTEXT_DIM
from features.state import UserState
from policy.catalogue import load_catalogue
from policy.levers import Lever, LeverBook, LeverKind
from policy.pipeline import PolicyContext
from policy.state import UserPolicyState

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


def service_catalogue_context(**contact: object) -> PolicyContext:
    """The shipped catalogue with the newsletter's default (email_digest) a service email: no consent needed."""
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    catalogue.actions["email_digest"] = dataclasses.replace(catalogue.actions["email_digest"], consent_needed=False)
    if contact:
        catalogue.contact["email"] = dataclasses.replace(catalogue.contact["email"], **contact)
    return PolicyContext(catalogue)


def email_request(i: int, ts: float, consent: bool | None = False) -> Event:
    return Event(event_id=f"e{i}", user_id="u1", ts=ts, type="email_request", topic="email-events",
                 channel="email", placement="newsletter", consent=consent)


def test_a_service_default_shown_without_consent_keeps_to_the_contact_rules_and_is_recorded() -> None:
    # email: 3 per 7 days, quiet 22:00-06:00 UTC. A user who refused consent used to get the service email on
    # every request, at night included, and the contacts were not recorded (so not counted for later requests).
    context = service_catalogue_context()
    states = PolicyStates()
    fields: dict[str, str] = {"cons": "0"}
    seen = []
    for i, ts in enumerate([TS + 11 * 3600, TS, TS + 3600, TS + 86400, TS + 2 * 86400, TS + 3 * 86400]):
        d = decide(email_request(i, ts), UserState("u1", dict(fields)), context, LinUCB(CONTEXT_DIM), states=states)
        assert d.pending is None and not d.lift_only and d.x is None  # no learning, in neither lift group
        if d.policy_state is not None:
            fields[POLICY_STATE_FIELD] = d.policy_state
        seen.append((d.decision.action, d.decision.mode, d.decision.trace))
    consent = {"fallback": "no_marketing_consent"}
    assert seen == [
        ("none", Mode.SUPPRESSED, {**consent, "caps": ["quiet_hours"]}),  # 23:00 UTC
        ("email_digest", Mode.FALLBACK, consent),
        ("email_digest", Mode.FALLBACK, consent),
        ("email_digest", Mode.FALLBACK, consent),
        ("none", Mode.SUPPRESSED, {**consent, "caps": ["channel_cap"]}),  # the 4th in 7 days
        ("none", Mode.SUPPRESSED, {**consent, "caps": ["channel_cap"]}),
    ]
    history = UserPolicyState.decode(fields[POLICY_STATE_FIELD].encode()).contacts["email"]
    assert history.contacts == [TS, TS + 3600, TS + 86400]


def test_a_service_default_shown_without_consent_keeps_to_its_daily_cap() -> None:
    context = service_catalogue_context(max_contacts=None, max_per_action_per_day=1)
    fields: dict[str, str] = {"cons": "0"}
    seen = []
    for i in range(2):
        d = decide(email_request(i, TS + i * 60), UserState("u1", dict(fields)), context, LinUCB(CONTEXT_DIM))
        if d.policy_state is not None:
            fields[POLICY_STATE_FIELD] = d.policy_state
        seen.append((d.decision.action, d.decision.mode, d.decision.trace.get("default_withheld")))
    assert seen == [("email_digest", Mode.FALLBACK, None), ("none", Mode.FALLBACK, "action_daily_cap")]


def test_fallbacks_without_a_readable_state_keep_to_the_rules_that_need_no_history() -> None:
    # Redis away or an erased user: no history to count, nothing recorded; quiet hours still hold
    context = service_catalogue_context()
    night, noon = email_request(1, TS + 11 * 3600, True), email_request(2, TS, True)
    for reason in ("feature_store_unavailable", "erased_user"):
        d = fallback(night, context, LinUCB(CONTEXT_DIM), reason, True)
        assert (d.decision.action, d.decision.mode, d.decision.trace) == (
            "none", Mode.SUPPRESSED, {"fallback": reason, "caps": ["quiet_hours"]})
        d = fallback(noon, context, LinUCB(CONTEXT_DIM), reason, True)
        assert (d.decision.action, d.decision.mode, d.decision.trace) == ("email_digest", Mode.FALLBACK,
                                                                          {"fallback": reason})
        assert d.policy_state is None and d.pending is None
