"""IPS, self-normalised IPS and doubly robust estimates of a candidate policy's value from a decision log.

A candidate is anything with ``name`` and ``target_probs(x, eligible) -> {action: probability}``
(see ope/candidates.py). With logged probability p of the logged action a and the candidate's
probability π(a|x), the importance weight is w = π(a|x)/p (optionally clipped at ``clip``):

- IPS:   mean(w·r)
- SNIPS: Σ w·r / Σ w
- DR:    mean(Σₐ π(a|x) q̂(x,a) + w·(r − q̂(x,a_logged))) with q̂ a per-action ridge model fitted by
         cross-fitting, its penalty chosen by leave-one-out error (ope/reward_model.py).

Intervals are 95 % normal-approximation intervals, value ± 1.96 × standard error; the standard error is
the sample standard deviation of the per-decision terms over √n (IPS, DR) or the delta-method error of
the ratio (SNIPS). They assume enough effective samples; a warning says when there are not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ope.diagnostics import (
    MIN_ESS,
    TINY_PROBABILITY,
    OPEError,
    OPEWarning,
    support_warning,
    tiny_probability_warning,
    usable_rows,
    warning,
)
from ope.log import DecisionLog
from ope.reward_model import cross_fit_predictions

Z_95 = 1.959963984540054
DR_FOLDS = 2  # cross-fitting folds of DR's reward model: a log needs at least this many decisions for DR
CI_METHOD = "normal approximation, 95%: value ± 1.96 × standard error"


class TargetPolicy(Protocol):
    name: str

    def target_probs(self, x: np.ndarray, eligible: Sequence[str]) -> dict[str, float]: ...


@dataclass(slots=True)
class Estimate:
    estimator: str
    candidate: str
    value: float
    std_error: float
    ci_low: float
    ci_high: float
    ess: float  # effective sample size (Σw)² / Σw²
    n: int  # decisions used
    clip: float | None  # largest importance weight allowed, None for no clipping
    n_clipped: int = 0
    ci_method: str = CI_METHOD
    warnings: list[OPEWarning] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["warnings"] = [asdict(w) for w in self.warnings]
        return doc


@dataclass(slots=True)
class Prepared:
    """The log in columns plus the candidate's probabilities over one action index."""

    candidate: str
    actions: list[str]  # the action of each column below
    rows: np.ndarray  # (len(log),) which decisions of the log are used (usable probability)
    x: np.ndarray  # (n, d)
    logged: np.ndarray  # (n,) column of the logged action
    propensity: np.ndarray  # (n,) logged probability of the logged action
    rewards: np.ndarray  # (n,)
    target: np.ndarray  # (n, K) candidate probabilities, 0 for ineligible actions
    weights: np.ndarray  # (n,) clipped importance weights
    clip: float | None
    n_clipped: int
    warnings: list[OPEWarning]


# -- preparing a log and a candidate ----------------------------------------------------------------------
def _target_matrix(
    candidate: TargetPolicy,
    log: DecisionLog,
    index: dict[str, int],
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    n = len(log)
    target = np.zeros((n, len(index)))
    for i, d in enumerate(log):
        probs = candidate.target_probs(d.x, d.eligible)
        where = f"candidate {candidate.name!r} on decision {d.decision_id!r} (placement {d.placement!r})"
        outside = set(probs) - set(d.eligible)
        if outside:
            raise OPEError(
                f"{where} gives probability to ineligible actions {sorted(outside)}; "
                f"a candidate may only choose among {list(d.eligible)}"
            )
        values = np.fromiter(probs.values(), dtype=float, count=len(probs))
        if not np.all(np.isfinite(values)) or (values < 0).any() or abs(values.sum() - 1.0) > 1e-6:
            raise OPEError(
                f"{where} returns probabilities that are not a distribution ({probs}); "
                "they must be >= 0 and sum to 1"
            )
        for a, p in probs.items():
            target[i, index[a]] = p
        if progress is not None and (i % 1000 == 0 or i == n - 1):
            progress(i + 1, n)
    return target


def prepare(
    log: DecisionLog,
    candidate: TargetPolicy,
    clip: float | None = None,
    tiny: float = TINY_PROBABILITY,
    progress: Callable[[int, int], None] | None = None,
) -> Prepared:
    if clip is not None and not clip > 0:
        raise OPEError(f"clip must be a positive maximum importance weight, got {clip}")
    rows, warnings = usable_rows(log)
    actions = sorted({a for d in log for a in d.eligible})
    index = {a: i for i, a in enumerate(actions)}
    target = _target_matrix(candidate, log, index, progress)
    support = support_warning(log, rows, target, index)
    if support is not None:
        warnings.append(support)
    logged = np.array([index[a] for a in log.actions], dtype=np.intp)[rows]
    target = target[rows]
    propensity = log.probabilities[rows]
    raw = target[np.arange(len(logged)), logged] / propensity
    weights = raw if clip is None else np.minimum(raw, clip)
    n_clipped = int((raw > weights).sum())
    tiny_warning = tiny_probability_warning(propensity, weights, tiny)
    if tiny_warning is not None:
        warnings.append(tiny_warning)
    if n_clipped:
        warnings.append(warning("clipped", count=n_clipped, clip=clip, largest=float(raw.max())))
    rewards = log.rewards[rows]
    if not rewards.any():
        warnings.append(warning("no_rewards"))
    return Prepared(
        candidate.name,
        actions,
        rows,
        log.x[rows],
        logged,
        propensity,
        rewards,
        target,
        weights,
        clip,
        n_clipped,
        warnings,
    )


# -- the estimators ----------------------------------------------------------------------------------------
def _ess(w: np.ndarray) -> float:
    sq = float((w**2).sum())
    return float(w.sum()) ** 2 / sq if sq > 0 else 0.0


def _mean_estimate(name: str, prep: Prepared, terms: np.ndarray) -> Estimate:
    n = len(terms)
    value = float(terms.mean())
    se = float(terms.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate(
        name,
        prep.candidate,
        value,
        se,
        value - Z_95 * se,
        value + Z_95 * se,
        _ess(prep.weights),
        n,
        prep.clip,
        prep.n_clipped,
        warnings=list(prep.warnings),
    )


def ips(prep: Prepared, **_: Any) -> Estimate:
    return _mean_estimate("ips", prep, prep.weights * prep.rewards)


def snips(prep: Prepared, **_: Any) -> Estimate:
    w, r = prep.weights, prep.rewards
    total = float(w.sum())
    warnings = list(prep.warnings)
    if total == 0:
        warnings.append(warning("no_overlap"))
        nan = float("nan")
        return Estimate(
            "snips",
            prep.candidate,
            nan,
            nan,
            nan,
            nan,
            0.0,
            len(w),
            prep.clip,
            prep.n_clipped,
            warnings=warnings,
        )
    value = float((w * r).sum()) / total
    se = float(np.sqrt(((w * (r - value)) ** 2).sum())) / total
    return Estimate(
        "snips",
        prep.candidate,
        value,
        se,
        value - Z_95 * se,
        value + Z_95 * se,
        _ess(w),
        len(w),
        prep.clip,
        prep.n_clipped,
        warnings=warnings,
    )


def dr(prep: Prepared, folds: int = DR_FOLDS, seed: int = 0, **_: Any) -> Estimate:
    n_actions = prep.target.shape[1]
    if len(prep.rewards) < folds:
        raise OPEError(
            f"the log is too short for the dr estimator: its reward model is cross-fitted on {folds} folds, "
            f"which needs at least {folds} decisions with a usable logged probability, and this log has "
            f"{len(prep.rewards)}; evaluate a longer log, or leave dr out (--estimators ips,snips "
            "--gate-estimator snips)"
        )
    q = cross_fit_predictions(prep.x, prep.logged, prep.rewards, n_actions, folds=folds, seed=seed)
    return dr_with_model(prep, q)


def dr_with_model(prep: Prepared, q: np.ndarray, name: str = "dr") -> Estimate:
    """DR with given reward predictions ``q`` (rows of ``prep``, columns ``prep.actions``)."""
    direct = (prep.target * q).sum(axis=1)
    correction = prep.weights * (prep.rewards - q[np.arange(len(q)), prep.logged])
    return _mean_estimate(name, prep, direct + correction)


ESTIMATORS: dict[str, Callable[..., Estimate]] = {"ips": ips, "snips": snips, "dr": dr}


def evaluate(
    log: DecisionLog,
    candidate: TargetPolicy,
    estimators: Sequence[str] = ("ips", "snips", "dr"),
    clip: float | None = None,
    seed: int = 0,
    folds: int = DR_FOLDS,
    tiny: float = TINY_PROBABILITY,
    min_ess: float = MIN_ESS,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Estimate]:
    """Every requested estimator for one candidate on one log (the candidate is queried once per decision)."""
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise OPEError(f"unknown estimators {unknown}; choose from {sorted(ESTIMATORS)}")
    prep = prepare(log, candidate, clip=clip, tiny=tiny, progress=progress)
    return estimate_all(prep, estimators, seed=seed, folds=folds, min_ess=min_ess)


def estimate_all(
    prep: Prepared, estimators: Sequence[str], seed: int = 0, folds: int = DR_FOLDS, min_ess: float = MIN_ESS
) -> dict[str, Estimate]:
    out = {}
    for name in estimators:
        out[name] = with_ess_warning(ESTIMATORS[name](prep, folds=folds, seed=seed), min_ess)
    return out


def with_ess_warning(est: Estimate, min_ess: float = MIN_ESS) -> Estimate:
    if est.ess < min_ess:
        est.warnings.append(warning("low_effective_sample_size", ess=est.ess, n=est.n))
    return est


def on_policy(log: DecisionLog, name: str = "logged policy") -> Estimate:
    """The logging policy's own value: the mean logged reward, with its normal 95 % interval.

    Averaged over the decisions the estimators can weigh (``usable_rows``: a usable logged probability),
    the very population every candidate estimate covers; rows left out of one are left out of the other,
    so a candidate is never compared with the logging policy on other traffic.
    """
    rows, _ = usable_rows(log)  # an empty log: OPEError saying why
    r = log.rewards[rows]
    n = len(r)
    value = float(r.mean())
    se = float(r.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    return Estimate("on_policy", name, value, se, value - Z_95 * se, value + Z_95 * se, float(n), n, None)
