"""Which requests the lift counts, through engine.decide: a contact-blocked request is one of its observations,
in the user's group, as a lift-only exposure that no reward, policy or model can reach."""

from __future__ import annotations

from bandits.linucb import LinUCB
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import Mode, user_bucket
from contracts.events import Event
from engine.decide import decide, lift_only_exposure
from engine.lift import LiftTracker
from features.context import CONTEXT_DIM
from policy.catalogue import NO_ACTION, load_catalogue
from policy.holdout import HoldoutConfig
from policy.pipeline import PolicyContext

QUIET = 1_780_012_800.0 + 23 * 3600  # 23:00 UTC: inside the catalogue's email quiet hours


def test_a_contact_blocked_request_is_a_lift_only_observation_in_the_users_group() -> None:
    event = Event(event_id="e1", user_id="u1", ts=QUIET, type="email_request", topic="email-events",
                  channel="email", placement="newsletter", consent=True)
    tracker = LiftTracker()
    for share, group in ((0.0, "treated_decisions"), (1.0, "control_decisions")):
        context = PolicyContext(load_catalogue(DEFAULT_CATALOGUE), holdout=HoldoutConfig(share, "s"))
        decided = decide(event, None, context, LinUCB(CONTEXT_DIM))
        assert (decided.decision.action, decided.decision.mode) == (NO_ACTION, Mode.SUPPRESSED)
        # no pending decision: no reward can ever be credited to it
        assert decided.pending is None and decided.lift_only and decided.x is not None
        sample = lift_only_exposure(decided.decision, decided.x, decided.lift_control)
        # action "none": the learner hands it to the lift alone (no policy, model or off-policy estimate)
        assert (sample.kind, sample.action, sample.user_bucket) == ("exposure", NO_ACTION, user_bucket("u1"))
        assert sample.mode == ("holdout" if share == 1.0 else "suppressed")
        before = tracker.result()[group]
        tracker.add(sample)
        assert tracker.result()[group] == before + 1
