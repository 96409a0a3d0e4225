"""CPU cost of the live models in the engine: µs per decision (with / without models) and per learning sample.

    python -m learning.bench_live_models [--events 4000] [--repeats 5] [--json out.json]

No Kafka and no Redis: the feature store is replaced by an in-memory one that returns each user's state,
so the figures are the engine's own CPU per event (parse, features, policy, models), which is what the
models add to; Redis round trips come on top and do not change with the models. Each figure is the best of
--repeats runs (the machine is shared). (A benchmark; it belongs in load_tests/ once that folder is free.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from bandits import make_policy
from cadence.metrics import Metrics
from cadence.settings import DEFAULT_CATALOGUE
from contracts.decisions import LearningSample
from engine.processor import Engine, EngineConfig, RawMessage
from features.context import CONTEXT_DIM
from features.keys import UserDigest
from features.state import UserState
from features.updates import FeatureUpdate
from learning.label_join import JoinConfig
from learning.live_models import LiveModels, ModelConfig
from policy.catalogue import load_catalogue
from policy.pipeline import PolicyContext

T0 = 1_767_571_200.0


class MemoryStore:
    """Just enough of RedisFeatureStore for Engine.process: every event applied, a fixed state per user."""

    client = None
    user_digest = UserDigest(bytes(32))  # the erasure key does not matter here

    def __init__(self) -> None:
        self._states: dict[str, UserState] = {}

    async def apply(self, updates: Sequence[FeatureUpdate]) -> list[tuple[bool, UserState | None]]:
        out = []
        for u in updates:
            state = self._states.setdefault(u.user_id, UserState(u.user_id, {
                "dev": "mobile", "seg": "loyal", "cons": "1", "fs": repr(T0 - 86400), "t:pv": repr(u.ts - 60),
                "pvh": f"{int(u.ts // 3600)}:3:1", "pvd": f"{int(u.ts // 86400)}:7:2"}))
            out.append((True, UserState(u.user_id, dict(state.fields)) if u.want_state else None))
        return out

    async def write_fields(self, writes: dict, *cas: object) -> dict:
        return {}


def trained_models(training: bool) -> LiveModels:
    catalogue = load_catalogue(DEFAULT_CATALOGUE)
    models = LiveModels(ModelConfig(join=JoinConfig(window_s=600.0, grace_s=0.0), min_samples=1), 0.1,
                        catalogue.value_scale)
    models.training = True
    rng = np.random.default_rng(1)
    actions = sorted(catalogue.actions)
    samples = []
    for i in range(3000):
        x = rng.random(CONTEXT_DIM).tolist()
        a = actions[i % len(actions)]
        samples.append(LearningSample("exposure", f"w{i}", a, x, ts=T0 + i))
        if rng.random() < 0.1:
            samples.append(LearningSample("reward", f"w{i}", a, x, reward=0.5, ts=T0 + i + 1))
    models.learn(samples, T0 + 1e6)
    while models.train(1000):
        pass
    models.publish()
    models.training = training
    return models


def engine(models: LiveModels | None) -> Engine:
    ctx = PolicyContext(load_catalogue(DEFAULT_CATALOGUE))
    store: Any = MemoryStore()
    return Engine(store, ctx, make_policy("linucb", CONTEXT_DIM, seed=1), Metrics(), EngineConfig(), models=models)


def requests(n: int, users: int = 2000) -> list[RawMessage]:
    return [RawMessage("web-events", 0, i, orjson.dumps({
        "event_id": f"e{i}", "user_id": f"u{i % users}", "ts": T0 + i * 0.5, "type": "page_view",
        "placement": "home_hero", "device": "mobile"})) for i in range(n)]


def decision_us(n: int, repeats: int) -> dict[str, float]:
    """Best µs per decision without and with models; the two alternate, so both see the same machine load."""
    best = {"none": float("inf"), "models": float("inf")}
    for _ in range(repeats):
        for kind in best:
            eng = engine(trained_models(training=False) if kind == "models" else None)
            msgs = requests(n)

            async def run(eng: Engine = eng, msgs: list[RawMessage] = msgs) -> float:
                started = time.perf_counter()
                for i in range(0, len(msgs), 500):
                    await eng.process(msgs[i:i + 500])
                return time.perf_counter() - started

            best[kind] = min(best[kind], asyncio.run(run()) / n * 1e6)
    return best


def parts_us(repeats: int, calls: int = 20_000) -> dict[str, float]:
    """What the models add to one decision, piece by piece."""
    from engine.decide import trace_scores

    models = trained_models(training=False)
    scorer = models.scorer
    assert scorer is not None
    x = np.random.default_rng(0).random(CONTEXT_DIM)
    actions = load_catalogue(DEFAULT_CATALOGUE).placement_actions("home_hero")
    scores = scorer.score(x, actions)
    counter = iter(range(10**9))
    digest = MemoryStore.user_digest.of  # as the engine names customers

    def observe() -> None:
        i = next(counter)
        models.observe(digest(f"u{i % 2000}"), T0 + i, x)

    def best(fn) -> float:  # noqa: ANN001
        out = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                fn()
            out = min(out, (time.perf_counter() - started) / calls * 1e6)
        return out

    return {
        "score_placement_us": best(lambda: scorer.score(x, actions)),
        "churn_observe_us": best(observe),
        "trace_scores_us": best(lambda: trace_scores(scores, "offer_bundle", 1)),
    }


def learning_samples(n: int) -> list[LearningSample]:
    rng = np.random.default_rng(2)
    out = []
    for i in range(n):
        x = rng.random(CONTEXT_DIM).tolist()
        out.append(LearningSample("exposure", f"d{i}", "offer_bundle", x, ts=T0 + i))
        if i % 20 == 0:
            out.append(LearningSample("reward", f"d{i}", "offer_bundle", x, reward=0.5, ts=T0 + i + 30))
    return sorted(out, key=lambda s: s.ts)


def learn_us(mode: str, n: int, repeats: int) -> float:
    """µs per learning sample in Engine.learn (+ training the labels it yields, for "train")."""
    samples = learning_samples(n)
    best = float("inf")
    for _ in range(repeats):
        models = None if mode == "policy_only" else trained_models(training=mode == "train")
        eng = engine(models)
        started = time.perf_counter()
        for i in range(0, len(samples), 500):
            eng.learn(samples[i:i + 500])
        if models is not None:
            models.learn([], T0 + 1e9)  # close every window: all labels exist
            while models.train(1000):
                pass
        best = min(best, (time.perf_counter() - started) / len(samples) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    decisions = decision_us(args.events, args.repeats)
    results = {
        "decision_us_without_models": decisions["none"],
        "decision_us_with_models": decisions["models"],
        **parts_us(args.repeats),
        "learn_us_per_sample_policy_only": learn_us("policy_only", args.events, args.repeats),
        "learn_us_per_sample_follower_join": learn_us("follow", args.events, args.repeats),
        "learn_us_per_sample_trainer": learn_us("train", args.events, args.repeats),
    }
    for name, value in results.items():
        print(f"{name:45s} {value:10.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
