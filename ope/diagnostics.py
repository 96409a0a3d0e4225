"""What can go wrong with a log or a candidate: the errors that stop an evaluation and the warnings that
qualify it. Every warning has a stable code (for the gate and for scripts) and a sentence for people;
all the sentences are here, in one table, so they read alike.

``tiny_probability`` is about what tiny logged probabilities do to a candidate's estimate, not about their
presence: the engine's exploration floor decays to ε_min = 0.005, so with 3 actions every action it does not
prefer is logged with ≈ 0.0017, and nearly every real log holds such decisions. They matter only where the
candidate chooses what the log rarely showed: there the weight π/p is large and a handful of decisions carry
the estimate. So the warning fires when the decisions logged with p < ``TINY_PROBABILITY`` carry at least
``TINY_WEIGHT_SHARE`` of the candidate's total importance weight (as used: after clipping) and at least twice
their share of the decisions (they weigh more than the average decision). A candidate close to the logging
policy gives them weights near 1 and no warning; uniform on such a log gives them weights of ≈ 200 and it.
It does not block promotion by itself: the few decisions it names also lower the effective sample size,
which does (``low_effective_sample_size``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ope.log import DecisionLog

TINY_PROBABILITY = 0.01  # logged probabilities below this give weights above 100 × π
TINY_WEIGHT_SHARE = 0.10  # share of the total importance weight such decisions must carry to be warned about
MIN_ESS = 100.0  # below this many effective decisions the normal interval is not to be trusted
MAX_PAIRS_LISTED = 6

WARNING_TEXT = {
    "missing_probability": (
        "{count} of {n} logged decisions carry no selection probability and were left out; without it a "
        "decision cannot be weighted. Make the logging policy record Choice.probability with every exposure."
    ),
    "zero_probability": (
        "{count} of {n} logged decisions have a selection probability of 0 or outside (0, 1] (smallest "
        "{smallest:.3g}) and were left out: an action that was taken cannot have had probability 0, so the "
        "logging policy misreports its probabilities. Keep an exploration floor (epsilon > 0) in the policy."
    ),
    "tiny_probability": (
        "{count} of {n} logged decisions were taken with probability below {tiny:g} "
        "(smallest {smallest:.3g}) and carry {share:.0%} of the candidate's importance weight (their importance "
        "weights reach {weight:,.0f}): the candidate often chooses what the logging policy seldom showed, so "
        "these few decisions dominate the estimate. Use clipping (--clip), evaluate a candidate closer to the "
        "logging policy, or keep more exploration in the logging policy."
    ),
    "support_not_covered": (
        "the candidate puts {share:.1%} of its probability on actions the log gives no evidence for ({pairs}): "
        "never taken for that placement, or with probability 0 in the decision (another action logged with "
        "probability 1, as where arbitration overrides a bandit without exploration, or, as the importance "
        "weights show, another action logged with p < 1); IPS and SNIPS count them as earning nothing and DR "
        "relies on its reward model there. "
        "Collect logs in which those actions were explored, or leave them out of the candidate."
    ),
    "clipped": (
        "{count} importance weights were clipped at {clip:g} (largest was {largest:,.1f}); clipping lowers "
        "variance but biases the estimate (downward when rewards are non-negative)."
    ),
    "no_rewards": (
        "no decision in the log earned a reward, so every estimate is 0 and its interval says nothing; "
        "check that rewards (clicks, conversions) reach the learning topic."
    ),
    "no_overlap": (
        "the candidate gives probability 0 to every logged action, so SNIPS is undefined; the log says "
        "nothing about this candidate."
    ),
    "low_effective_sample_size": (
        "only about {ess:,.0f} of {n} decisions effectively count (the candidate seldom chooses what the log "
        "did, or the weights are uneven), so the normal interval may be too narrow; collect more logs or "
        "evaluate a candidate closer to the logging policy."
    ),
}

# added to "support_not_covered" when the importance weights show it (``support_warning``)
SUPPORT_WEIGHT_NOTE = (
    "The candidate's importance weights average {mean_weight:.3f}, where a log that can show every action the "
    "candidate chooses gives 1 ± {noise:.3f}: the logging policy gave some of them probability 0 where the "
    "candidate chooses them (as arbitration overrides did, in engines before every eligible action kept the "
    "exploration floor)."
)


class OPEError(ValueError):
    """The log or the candidate cannot be evaluated; the message says what was wrong and what to do."""


@dataclass(frozen=True, slots=True)
class OPEWarning:
    """A machine-readable code and a sentence a person understands."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def warning(code: str, **values: object) -> OPEWarning:
    return OPEWarning(code, WARNING_TEXT[code].format(**values))


def usable_rows(log: DecisionLog) -> tuple[np.ndarray, list[OPEWarning]]:
    """Rows whose logged probability can be used, and warnings about the others."""
    if len(log) == 0:
        raise OPEError(log.report.why_empty())
    p = log.probabilities
    n = len(p)
    missing = np.isnan(p)
    invalid = ~missing & ((p <= 0) | (p > 1))
    found = []
    if missing.any():
        found.append(warning("missing_probability", count=int(missing.sum()), n=n))
    if invalid.any():
        found.append(
            warning("zero_probability", count=int(invalid.sum()), n=n, smallest=float(p[invalid].min()))
        )
    ok = ~missing & ~invalid
    if not ok.any():
        raise OPEError(
            f"none of the {n} logged decisions has a usable selection probability ({int(missing.sum())} "
            f"missing, {int(invalid.sum())} zero or out of range), so no importance weight can be computed; "
            "log Choice.probability (> 0) with every exposure"
        )
    return ok, found


def tiny_probability_warning(
    propensity: np.ndarray, weights: np.ndarray, tiny: float = TINY_PROBABILITY
) -> OPEWarning | None:
    """Warn when the decisions logged with p < ``tiny`` carry the estimate (module docstring): at least
    ``TINY_WEIGHT_SHARE`` of the candidate's total importance weight, and at least twice their share of the
    decisions. ``propensity`` and ``weights`` are the usable rows' logged probabilities and (clipped) weights."""
    small = propensity < tiny
    total = float(weights.sum())
    if not small.any() or total <= 0:
        return None
    share = float(weights[small].sum()) / total
    if share < TINY_WEIGHT_SHARE or share < 2 * float(small.mean()):
        return None
    return warning(
        "tiny_probability",
        count=int(small.sum()),
        n=len(propensity),
        tiny=tiny,
        smallest=float(propensity[small].min()),
        share=share,
        weight=float(weights[small].max()),
    )


UNCOVERED_SHARE = 0.01  # share of a candidate's probability on actions the log gave probability 0: warn above
COVERAGE_Z = 3.0  # standard errors the mean importance weight must fall short of 1 by (with UNCOVERED_SHARE)


def support_warning(
    log: DecisionLog, rows: np.ndarray, target: np.ndarray, index: dict[str, int]
) -> OPEWarning | None:
    """Warn when the candidate gives probability to actions the logging policy could not have shown:

    - (placement, action) pairs the log never took;
    - actions a decision logged with probability 1 for another action could not have shown (above
      ``UNCOVERED_SHARE`` of the candidate's probability: a few such decisions among many draws leave the
      estimate sound);
    - actions the logging policy gave probability 0 in some contexts while logging the shown action with
      p < 1 (with three or more actions, as arbitration overrides did before the uniform draw was kept
      from them). A single decision does not say that, but the log as a whole does: the unclipped weights
      w = π(logged action)/p average to the candidate's probability on actions the logging policy could
      show, 1 when it covers the candidate. A mean weight more than ``COVERAGE_Z`` standard errors and
      ``UNCOVERED_SHARE`` below 1 is flagged; the pairs listed are those whose IPS count (Σ w for the
      pair's decisions) falls furthest below the candidate's probability on them (Σ π).
    """
    taken = log.actions_taken()
    logged_p = log.probabilities
    never, uncovered, w = np.zeros(len(log)), np.zeros(len(log)), np.zeros(len(log))
    pairs: dict[tuple[str, str], float] = {}
    sure_pairs: dict[tuple[str, str], float] = {}
    chosen: dict[tuple[str, str], float] = {}  # Σ π over the decisions: the candidate's mass on the pair
    counted: dict[tuple[str, str], float] = {}  # Σ w: the same mass as the log evidences it
    for i, d in enumerate(log):
        if not rows[i]:
            continue
        sure = d.probability == 1.0
        for a in d.eligible:
            pi = target[i, index[a]]
            if pi <= 0:
                continue
            chosen[(d.placement, a)] = chosen.get((d.placement, a), 0.0) + pi
            if a not in taken.get(d.placement, ()):
                never[i] += pi
                pairs[(d.placement, a)] = pairs.get((d.placement, a), 0.0) + pi
            elif sure and a != d.action:
                uncovered[i] += pi
                sure_pairs[(d.placement, a)] = sure_pairs.get((d.placement, a), 0.0) + pi
        w[i] = target[i, index[d.action]] / logged_p[i]
        counted[(d.placement, d.action)] = counted.get((d.placement, d.action), 0.0) + w[i]
    mass = never
    if sure_pairs and float(uncovered[rows].mean()) >= UNCOVERED_SHARE:
        mass = never + uncovered
        for pair, pi in sure_pairs.items():
            pairs[pair] = pairs.get(pair, 0.0) + pi
    share = float(mass[rows].mean())
    weights = w[rows]
    mean_weight = float(weights.mean())
    noise = COVERAGE_Z * float(weights.std(ddof=1)) / np.sqrt(len(weights)) if len(weights) > 1 else np.inf
    # the weights average 1 minus the mass on actions the logging policy could not show: beyond what the
    # checks above explain (never taken, p = 1 for another action), that mass hides behind p < 1
    explained = float((never + uncovered)[rows].mean())
    weights_short = mean_weight + explained + noise < 1.0 - UNCOVERED_SHARE
    if weights_short:
        share = max(share, 1.0 - mean_weight)
        shortfall = {pair: pi - counted.get(pair, 0.0) for pair, pi in chosen.items() if pair not in pairs}
        worst = sorted(shortfall, key=lambda k: -shortfall[k])
        for pair in worst[:1] + [k for k in worst[1:] if shortfall[k] > UNCOVERED_SHARE * len(weights)]:
            pairs[pair] = shortfall[pair]
    if not pairs:
        return None
    top = sorted(pairs, key=lambda k: -pairs[k])[:MAX_PAIRS_LISTED]
    listed = ", ".join(f"{a} on {p}" for p, a in top) + (" …" if len(pairs) > MAX_PAIRS_LISTED else "")
    found = warning("support_not_covered", share=share, pairs=listed)
    if weights_short:
        return OPEWarning(found.code, found.message + " " + SUPPORT_WEIGHT_NOTE.format(mean_weight=mean_weight,
                                                                                     noise=noise))
    return found
