"""Do the estimators' intervals cover the truth? A repeated-sampling study on simulator worlds.

For each seed: a World (its hidden truth), a logging policy with known probabilities (ope/synthetic.py),
a sampled log joined like a real export, the candidates built by ``plan`` (learners train on the first
half, all are evaluated on the second), and each candidate's exact value. Each (seed, candidate,
estimator) is one trial: was the truth inside the 95 % interval, how far off was the estimate.

Besides the real estimators, ``dr_oracle_model`` is DR given the hidden truth as its reward model. Nobody
can run it on real logs; it shows how much any reward model could help in this world, which puts the
DR-versus-IPS comparison in proportion (with sparse click/conversion rewards, not much).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ope.candidates import plan
from ope.estimators import dr_with_model, estimate_all, prepare, with_ess_warning
from ope.log import join_samples
from ope.synthetic import SyntheticLogs
from policy.catalogue import Catalogue
from simulator.world import World

ORACLE_DR = "dr_oracle_model"  # not an estimator one can use: shows the best DR could do in this world
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {"kind": "uniform"},
    {
        "kind": "constant",
        "name": "constant:top_value",
        "action": ["offer_premium_trial", "email_winback", "creative_product"],
    },
    {"kind": "greedy_model", "epsilon": 0.05},
    {"kind": "bandit", "policy": "linucb", "params": {"alpha": 0.5, "epsilon": 0.1}},
)


def _summary(
    trials: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]
) -> dict[Any, dict[str, float]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for t in trials:
        groups[key(t)].append(t)
    out = {}
    for k, group in sorted(groups.items()):
        err = np.array([t["value"] - t["truth"] for t in group])
        out[k] = {
            "trials": len(group),
            "coverage": float(np.mean([t["covered"] for t in group])),
            "mean_abs_error": float(np.abs(err).mean()),
            "mean_error": float(err.mean()),
            "mean_ci_width": float(np.mean([t["ci_high"] - t["ci_low"] for t in group])),
        }
    return out


def _paired(trials: list[dict[str, Any]], a: str, b: str) -> dict[str, float]:
    """|error of a| − |error of b| on the same (seed, candidate): negative means a was closer to the truth."""
    err = {(t["seed"], t["candidate"], t["estimator"]): abs(t["value"] - t["truth"]) for t in trials}
    diff = np.array([err[(s, c, a)] - err[(s, c, b)] for (s, c, e) in err if e == a and (s, c, b) in err])
    return {
        "pairs": len(diff),
        "mean_abs_error_difference": float(diff.mean()),
        "difference_std_error": float(diff.std(ddof=1) / np.sqrt(len(diff)))
        if len(diff) > 1
        else float("nan"),
        "share_closer": float((diff < 0).mean()),
    }


def run_study(
    catalogue: Catalogue,
    seeds: Sequence[int],
    n: int,
    candidates: Sequence[dict[str, Any]] = DEFAULT_CANDIDATES,
    clip: float | None = None,
    n_users: int = 500,
    epsilon: float = 0.1,
    estimators: Sequence[str] = ("ips", "snips", "dr"),
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []
    for done, seed in enumerate(seeds):
        synthetic = SyntheticLogs(World(catalogue, n_users=n_users, seed=seed), epsilon=epsilon, seed=seed)
        log = join_samples(synthetic.sample(n, seed=seed), catalogue)
        built, held_out, _ = plan(log, candidates, catalogue)
        for candidate in built:
            truth = synthetic.true_value(candidate)
            prep = prepare(held_out, candidate, clip=clip)
            found = estimate_all(prep, estimators, seed=seed)
            if "dr" in estimators:  # diagnostic: DR with the hidden truth as its reward model
                oracle = synthetic.truth_matrix(held_out, prep.actions)[prep.rows]
                found[ORACLE_DR] = with_ess_warning(dr_with_model(prep, oracle, ORACLE_DR))
            for name, est in found.items():
                trials.append(
                    {
                        "seed": seed,
                        "candidate": candidate.name,
                        "estimator": name,
                        "truth": truth,
                        "value": est.value,
                        "ci_low": est.ci_low,
                        "ci_high": est.ci_high,
                        "ess": est.ess,
                        "n": est.n,
                        "covered": bool(est.ci_low <= truth <= est.ci_high),
                        "warnings": [w.code for w in est.warnings],
                    }
                )
        if progress is not None:
            progress(done + 1, len(seeds))
    by_estimator = _summary(trials, lambda t: t["estimator"])
    pairs = {}
    if {"dr", "ips"} <= set(estimators):
        pairs = {
            "dr_vs_ips": _paired(trials, "dr", "ips"),
            "oracle_dr_vs_ips": _paired(trials, ORACLE_DR, "ips"),
        }
    return {
        "config": {
            "seeds": list(seeds),
            "n": n,
            "n_users": n_users,
            "epsilon": epsilon,
            "clip": clip,
            "candidates": list(candidates),
            "ci": "normal approximation, 95%",
        },
        "by_estimator": by_estimator,
        **pairs,
        "by_candidate": {
            f"{c} / {e}": v
            for (c, e), v in _summary(trials, lambda t: (t["candidate"], t["estimator"])).items()
        },
        "trials": trials,
    }
