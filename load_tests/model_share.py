"""What the River models lose when they learn from a share of the exposures (``CADENCE_MODELS_EXPOSURE_SHARE``).

    python -m load_tests.model_share [--exposures 20000 100000 300000] [--shares 1 0.5 0.25 0.1]
                                     [--seeds 0 1 2] [--json out.json]

The label join (learning/label_join.py) follows an exposure when a stable hash of its decision id falls
below the share; only followed exposures become labels, so the trainer's CPU scales with the share. This
replays one seeded synthetic stream (models.synthetic: exposures of 8 offers shown at random, conversions
drawn from known probabilities, a revenue for each conversion) through a propensity and a value model per
share, chosen with the join's own ``followed``, and scores every model against the truth on the same
held-out contexts at each checkpoint:

- ``kl``: mean excess log loss of the predicted conversion probability over the true one (nats per
  exposure; 0 = the truth), the part of log loss a model can still remove;
- ``rank``: Spearman correlation of predicted and true probabilities over the held-out (offer, context)
  pairs: does the model order customers and offers right;
- ``calib``: mean predicted ÷ mean true probability;
- ``value_rel_err``: mean |predicted − true expected revenue| ÷ mean true expected revenue;
- ``train_us``: process CPU µs per exposure spent learning (so the share's saving is measured, not assumed).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from learning.label_join import followed
from models import ModelSample, ModelSet
from models.synthetic import SyntheticStream

ACTIONS = tuple(f"offer_{i}" for i in range(8))
HOLDOUT = 3_000


@dataclass
class Holdout:
    features: list[dict[str, float]]
    actions: list[str]
    p_true: np.ndarray
    value_features: list[dict[str, float]]
    value_true: np.ndarray


def _holdout(seed: int) -> Holdout:
    """Contexts drawn from the same world (same truth) as the training stream, with another draw seed."""
    stream = SyntheticStream(actions=ACTIONS, seed=seed, draw_seed=[seed, 99])  # same truth, other contexts
    conv = [stream.conversion() for _ in range(HOLDOUT)]
    rev = [stream.revenue() for _ in range(HOLDOUT)]
    return Holdout([c[0] for c in conv], [c[1] for c in conv], np.array([c[3] for c in conv]),
                   [r[0] for r in rev], np.array([r[2] for r in rev]))


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def score(models: ModelSet, h: Holdout) -> dict[str, float]:
    q = np.array([models.propensity.predict_one(f, a) for f, a in zip(h.features, h.actions, strict=True)])
    q = np.clip(q, 1e-9, 1 - 1e-9)
    p = h.p_true
    kl = float(np.mean(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))))
    rank = float(np.corrcoef(_ranks(q), _ranks(p))[0, 1])
    v = np.array([models.value.predict_one(f) for f in h.value_features])
    value_err = float(np.mean(np.abs(v - h.value_true)) / np.mean(h.value_true))
    return {"kl": round(kl, 5), "rank": round(rank, 4), "calib": round(float(q.mean() / p.mean()), 3),
            "value_rel_err": round(value_err, 4)}


def run_share(share: float, seed: int, checkpoints: Sequence[int], h: Holdout) -> list[dict[str, float]]:
    stream = SyntheticStream(actions=ACTIONS, seed=seed)
    models = ModelSet()
    out: list[dict[str, float]] = []
    cpu = 0.0
    labels = 0
    for i in range(1, max(checkpoints) + 1):
        features, action, converted, _ = stream.conversion()
        # a conversion's revenue (its own context: the value world is drawn apart); the same draws for every share
        sale = stream.revenue() if converted else None
        if followed(f"d{seed}-{i}", share):
            started = time.process_time()
            models.learn_one(ModelSample.conversion(features, action, converted, float(i)))
            if sale is not None:
                models.learn_one(ModelSample.revenue(sale[0], sale[1], float(i)))
            cpu += time.process_time() - started
            labels += 1
        if i in checkpoints:
            out.append({"share": share, "seed": seed, "exposures": i, "labels": labels,
                        "train_us": round(cpu / i * 1e6, 2), **score(models, h)})
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exposures", type=int, nargs="+", default=[20_000, 100_000, 300_000])
    ap.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows: list[dict[str, float]] = []
    for seed in args.seeds:
        h = _holdout(seed)
        for share in args.shares:
            rows.extend(run_share(share, seed, sorted(args.exposures), h))
    keys = ("labels", "train_us", "kl", "rank", "calib", "value_rel_err")
    header = " ".join(f"{k:>14}" for k in keys)
    print(f"{'share':>6} {'exposures':>10} {header}   (mean ± sd, seeds {args.seeds})")
    table = []
    for share in args.shares:
        for n in sorted(args.exposures):
            group = [r for r in rows if r["share"] == share and r["exposures"] == n]
            stats = {k: (float(np.mean([r[k] for r in group])), float(np.std([r[k] for r in group]))) for k in keys}
            table.append({"share": share, "exposures": n, **{k: {"mean": m, "sd": s} for k, (m, s) in stats.items()}})
            print(f"{share:>6} {n:>10,} " + " ".join(f"{m:>8.4g} ±{s:<5.2g}" for m, s in stats.values()))
    report = {"seeds": args.seeds, "table": table, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
