"""Promotion gate: a candidate replaces the current policy only when the log shows it is better.

Rule: promote when the *lower* end of the candidate's 95 % interval is above the current policy's
estimate plus ``min_lift``, and none of the candidate's warnings is one that makes the interval
untrustworthy (``blocking``). The decision carries its evidence, so it can go to an audit log as it is.

The current policy's estimate is normally ``estimators.on_policy(log)``: the mean reward of the very log
it produced (``cadence ope`` does this), so it needs no weighting; it covers the same decisions as the
candidate estimates (those with a usable logged probability), so both describe the same traffic. Event
time of the last decision covered is recorded instead of a wall-clock time, so a replayed gate gives the same record.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ope.estimators import Estimate

DEFAULT_BLOCKING = frozenset({"support_not_covered", "low_effective_sample_size", "no_rewards", "no_overlap"})


@dataclass(slots=True)
class PromotionDecision:
    candidate: str
    current: str
    promote: bool
    reason: str
    estimator: str
    candidate_value: float
    candidate_ci_low: float
    candidate_ci_high: float
    candidate_std_error: float
    current_value: float
    current_estimator: str
    min_lift: float
    n: int
    ess: float
    clip: float | None
    ci_method: str
    evidence_until_ts: float  # event time of the last logged decision the evidence covers
    warnings: list[dict[str, str]] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


def decide_promotion(
    candidate: Estimate,
    current: Estimate,
    *,
    min_lift: float = 0.0,
    blocking: Collection[str] = DEFAULT_BLOCKING,
    evidence_until_ts: float = 0.0,
) -> PromotionDecision:
    """Promote ``candidate`` over ``current`` or not, and say why in one sentence."""
    found = sorted({w.code for w in candidate.warnings} & set(blocking))
    bar = current.value + min_lift
    if not (math.isfinite(candidate.ci_low) and math.isfinite(current.value)):
        promote, reason = False, "the estimates are not finite numbers, so nothing can be concluded"
    elif found:
        promote, reason = (
            False,
            (
                f"not promoted: the {candidate.estimator} estimate has warnings that make its "
                f"interval untrustworthy ({', '.join(found)})"
            ),
        )
    elif candidate.ci_low > bar:
        promote, reason = (
            True,
            (
                f"promoted: lower bound {candidate.ci_low:.5g} of the {candidate.estimator} "
                f"interval is above the current value {current.value:.5g}"
                + (f" + lift {min_lift:g}" if min_lift else "")
            ),
        )
    else:
        promote, reason = (
            False,
            (
                f"not promoted: lower bound {candidate.ci_low:.5g} of the {candidate.estimator} "
                f"interval does not exceed the current value {current.value:.5g}"
                + (f" + lift {min_lift:g}" if min_lift else "")
            ),
        )
    return PromotionDecision(
        candidate=candidate.candidate,
        current=current.candidate,
        promote=promote,
        reason=reason,
        estimator=candidate.estimator,
        candidate_value=candidate.value,
        candidate_ci_low=candidate.ci_low,
        candidate_ci_high=candidate.ci_high,
        candidate_std_error=candidate.std_error,
        current_value=current.value,
        current_estimator=current.estimator,
        min_lift=min_lift,
        n=candidate.n,
        ess=candidate.ess,
        clip=candidate.clip,
        ci_method=candidate.ci_method,
        evidence_until_ts=evidence_until_ts,
        warnings=[asdict(w) for w in candidate.warnings],
        blocking=found,
    )
