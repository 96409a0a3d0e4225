"""Cost of the River models on the hot path: µs per score and per learn call, snapshot size and times.

    python -m load_tests.bench_models [--samples 20000] [--actions 4 8] [--repeats 5] [--json out.json]

Samples are generated first (models.synthetic), so only model work is timed; each figure is the best of
--repeats timed loops (the machine is shared). Prints one line per measurement and, with --json, writes
them as one JSON object. "compiled_*" is ModelSet.compile(): the numpy scorer deciders use.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Sequence

import numpy as np

from models import ModelSample, ModelSet, PropensityModel, model_features
from models.synthetic import SyntheticStream


def _best_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """µs per call, best of ``repeats`` timed loops (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def _best_loop_us(
    make: Callable[[], Callable[[ModelSample], object]], items: Sequence[ModelSample], repeats: int
) -> float:
    """µs per item of ``make()(item)`` over ``items``, best of ``repeats`` (a fresh target each time)."""
    best = float("inf")
    for _ in range(repeats):
        fn = make()
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - start) / len(items) * 1e6)
    return best


def _bare_propensity_learner() -> Callable[[ModelSample], None]:
    model = PropensityModel()
    return lambda s: model.learn_one(s.features, s.action or "", s.target)


def run(samples: int, action_counts: Sequence[int], seed: int, repeats: int) -> dict[str, float]:
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
    contexts = [stream.context() for _ in range(1000)]

    # learn_one = predict + metrics + drift detector + learn (progressive validation); new models per repeat
    for name, items in (("propensity", conversions), ("churn", churns), ("value", revenues)):
        results[f"learn_{name}_us"] = _best_loop_us(lambda: ModelSet().learn_one, items, repeats)
    results["learn_propensity_model_only_us"] = _best_loop_us(_bare_propensity_learner, conversions, repeats)
    models = ModelSet()
    models.learn_many([*conversions, *churns, *revenues])

    features = [model_features(x) for x in contexts]
    n = len(features)
    tick = itertools.count()
    results["model_features_us"] = _best_us(lambda: model_features(contexts[next(tick) % n]), 10_000, repeats)
    results["score_churn_us"] = _best_us(
        lambda: models.churn.predict_one(features[next(tick) % n]), 10_000, repeats
    )
    results["score_value_us"] = _best_us(
        lambda: models.value.predict_one(features[next(tick) % n]), 10_000, repeats
    )
    start = time.perf_counter()
    scorer = models.compile()
    results["compile_ms"] = (time.perf_counter() - start) * 1e3
    batch = np.array(contexts)
    for k in action_counts:
        subset = actions[:k]

        def propensity_only(s: list[str] = subset) -> object:
            return models.propensity.predict_many(features[next(tick) % n], s)

        def river_all(s: list[str] = subset) -> object:
            return models.score(features[next(tick) % n], s)

        def compiled_all(s: list[str] = subset) -> object:
            return scorer.score(contexts[next(tick) % n], s)

        def compiled_batch(s: list[str] = subset) -> object:
            return scorer.score_batch(batch, s)

        results[f"score_propensity_{k}_actions_us"] = _best_us(propensity_only, 10_000, repeats)
        results[f"score_all_{k}_actions_us"] = _best_us(river_all, 10_000, repeats)
        results[f"compiled_score_all_{k}_actions_us"] = _best_us(compiled_all, 10_000, repeats)
        results[f"compiled_batch_{n}_all_{k}_actions_us_per_row"] = _best_us(compiled_batch, 50, repeats) / n

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
    parser.add_argument("--repeats", type=int, default=5, help="timed loops per measurement; the best counts")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    results = run(args.samples, args.actions, args.seed, args.repeats)
    for name, value in results.items():
        print(f"{name:46s} {value:12.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"benchmark": "models", "samples": args.samples, "repeats": args.repeats, **results},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
