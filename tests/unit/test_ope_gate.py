"""The promotion gate and the shadow-mode record."""

from __future__ import annotations

import orjson
import pytest

from bandits.base import Choice
from contracts.decisions import Decision, Mode
from ope.diagnostics import warning
from ope.estimators import Estimate
from ope.gate import decide_promotion
from ope.shadow import ShadowLog


def estimate(value: float, half_width: float, name: str = "challenger", warnings=()) -> Estimate:
    return Estimate(
        "dr",
        name,
        value,
        half_width / 1.96,
        value - half_width,
        value + half_width,
        800.0,
        5000,
        20.0,
        warnings=list(warnings),
    )


CURRENT = Estimate("on_policy", "logged policy", 0.050, 0.001, 0.048, 0.052, 5000.0, 5000, None)


@pytest.mark.parametrize(
    ("candidate", "min_lift", "promote", "reason"),
    [
        (estimate(0.060, 0.005), 0.0, True, "promoted: lower bound 0.055 of the dr interval is above"),
        (
            estimate(0.053, 0.005),
            0.0,
            False,
            "lower bound 0.048 of the dr interval does not exceed",
        ),  # mean better
        (estimate(0.060, 0.005), 0.01, False, "+ lift 0.01"),
        (
            estimate(0.080, 0.005, warnings=[warning("support_not_covered", share=0.2, pairs="x on y")]),
            0.0,
            False,
            "untrustworthy (support_not_covered)",
        ),
        (
            estimate(0.080, 0.005, warnings=[warning("clipped", count=3, clip=20.0, largest=40.0)]),
            0.0,
            True,
            "promoted",
        ),
        (estimate(float("nan"), 0.005), 0.0, False, "not finite"),
    ],
)
def test_promotion_needs_the_lower_bound_above_the_current_value(candidate, min_lift, promote, reason):
    d = decide_promotion(candidate, CURRENT, min_lift=min_lift, evidence_until_ts=1_767_600_000.0)
    assert d.promote is promote
    assert reason in d.reason


def test_decision_record_carries_its_evidence_as_json():
    cand = estimate(0.06, 0.005, warnings=[warning("clipped", count=3, clip=20.0, largest=40.0)])
    doc = orjson.loads(decide_promotion(cand, CURRENT, evidence_until_ts=1_767_600_000.0).to_json())
    assert doc["candidate"] == "challenger" and doc["current"] == "logged policy"
    assert doc["estimator"] == "dr" and doc["current_estimator"] == "on_policy"
    assert (doc["candidate_ci_low"], doc["current_value"], doc["n"], doc["clip"]) == (
        pytest.approx(0.055),
        0.05,
        5000,
        20.0,
    )
    assert doc["warnings"][0]["code"] == "clipped" and doc["blocking"] == []
    assert doc["evidence_until_ts"] == 1_767_600_000.0 and "normal" in doc["ci_method"]


def test_blocking_codes_can_be_chosen():
    cand = estimate(0.08, 0.005, warnings=[warning("low_effective_sample_size", ess=50.0, n=5000)])
    assert not decide_promotion(cand, CURRENT).promote
    assert decide_promotion(cand, CURRENT, blocking=()).promote


def test_shadow_record_keeps_what_ope_needs():
    live = Decision(
        "d1", "e1", "u1", 1_767_571_300.0, "web", "home_hero", "offer_10pct", 0.9, Mode.EXPLOIT, "linucb", 12
    )
    choice = Choice.from_maps(
        "offer_bundle",
        0.8,
        "offer_bundle",
        probabilities={"offer_bundle": 0.8, "offer_10pct": 0.15, "offer_free_shipping": 0.05},
    )
    rec = ShadowLog("thompson").record(live, choice, challenger_version=7)
    assert (rec.decision_id, rec.live_action, rec.challenger_action) == ("d1", "offer_10pct", "offer_bundle")
    assert rec.challenger_probability == 0.8
    assert rec.challenger_probability_of_live == 0.15  # the importance-weight numerator for the live log
    assert not rec.agrees
    doc = orjson.loads(rec.to_json())
    assert doc["challenger"] == "thompson" and doc["challenger_version"] == 7 and doc["agrees"] is False
    assert doc["ts"] == live.ts


def test_shadow_record_when_the_challenger_cannot_choose_the_live_action():
    live = Decision("d2", "e2", "u1", 0.0, "web", "home_hero", "none", 1.0, Mode.FALLBACK, "linucb", 0)
    rec = ShadowLog("c").record(
        live, Choice.from_maps("offer_bundle", 1.0, "offer_bundle", probabilities={"offer_bundle": 1.0})
    )
    assert rec.challenger_probability_of_live == 0.0
