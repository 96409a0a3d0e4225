"""Cost of the River models on the hot path: µs per score and per learn call, snapshot size and times.

    python -m load_tests.bench_models [--samples 20000] [--actions 4 8] [--json out.json]

Samples are generated first (models.synthetic), so only model work is timed. Prints one line per
measurement and, with --json, writes them as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

from models import ModelSample, ModelSet, model_features
from models.synthetic import SyntheticStream


def _per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def _timed_loop_us(items: Sequence[object], fn: Callable[[object], object]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e6


def run(samples: int, action_counts: Sequence[int], seed: int) -> dict[str, float]:
    results: dict[str, float] = {}
    actions = [f"offer_{i}" for i in range(max(action_counts))]
    stream = SyntheticStream(actions=actions, seed=seed)
    conversions = [
        ModelSample.conversion(f, a, y, float(i))
        for i, (f, a, y, _) in enumerate(stream.conversion() for _ in range(samples))
    ]
    churns = [
        ModelSample.churn(f, y, float(i))
        for i, (f, y, _) in enumerate(stream.churn() for _ in range(samples))
    ]
    revenues = [
        ModelSample.revenue(f, r, float(i))
        for i, (f, r, _) in enumerate(stream.revenue() for _ in range(samples))
    ]
    contexts = [stream.context() for _ in range(2000)]

    models = ModelSet()
    # learn_one = predict + metrics + drift detector + learn (progressive validation)
    results["learn_propensity_us"] = _timed_loop_us(conversions, models.learn_one)
    results["learn_churn_us"] = _timed_loop_us(churns, models.learn_one)
    results["learn_value_us"] = _timed_loop_us(revenues, models.learn_one)
    # the bare model learn, without validation, for comparison
    fresh = ModelSet()
    results["learn_propensity_model_only_us"] = _timed_loop_us(
        conversions, lambda s: fresh.propensity.learn_one(s.features, s.action, s.target)
    )

    features = [model_features(x) for x in contexts]
    results["model_features_us"] = _timed_loop_us(contexts, model_features)
    it = iter(range(10**9))
    n = len(features)
    results["score_churn_us"] = _per_call_us(lambda: models.churn.predict_one(features[next(it) % n]), 20_000)
    results["score_value_us"] = _per_call_us(lambda: models.value.predict_one(features[next(it) % n]), 20_000)
    for k in action_counts:
        subset = actions[:k]
        results[f"score_propensity_{k}_actions_us"] = _per_call_us(
            lambda s=subset: models.propensity.predict_many(features[next(it) % n], s), 20_000
        )
        results[f"score_all_{k}_actions_us"] = _per_call_us(
            lambda s=subset: models.score(features[next(it) % n], s), 20_000
        )

    start = time.perf_counter()
    blob = models.snapshot()
    results["snapshot_ms"] = (time.perf_counter() - start) * 1e3
    results["snapshot_bytes"] = float(len(blob))
    start = time.perf_counter()
    ModelSet.restore(blob)
    results["restore_ms"] = (time.perf_counter() - start) * 1e3
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=20_000, help="learning samples per model")
    parser.add_argument("--actions", type=int, nargs="+", default=[4, 8], help="offer counts to score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    results = run(args.samples, args.actions, args.seed)
    for name, value in results.items():
        print(f"{name:36s} {value:12.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"benchmark": "models", "samples": args.samples, **results}, fh, indent=2)


if __name__ == "__main__":
    main()
