"""Size of a realistic snapshot blob, for the Redis memory that snapshot retention takes.

    python -m load_tests.snapshot_size [--samples 50000]

Builds a worker's engine with the default settings (LinUCB, the default catalogue, the River models on, no
shadow policy unless CADENCE_SHADOW_POLICY is set), applies ``--samples`` exposures over every action (a reward
for one in four), trains the models on as many labels of each kind, and prints the size of the blob the leading worker
saves (learning.state.LearnedState.pack). The digests of applied samples are full (50,000, 400 KB) from
50,000 samples on; the policy's and models' sizes do not grow with the samples (fixed-size statistics).
"""

from __future__ import annotations

import argparse

import numpy as np
import redis.asyncio as aioredis

from cadence.metrics import Metrics
from cadence.settings import Settings
from contracts.decisions import LearningSample
from features.context import CONTEXT_DIM
from models import ModelSample
from models.synthetic import SyntheticStream
from streams.app import build_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    args = parser.parse_args()
    engine = build_engine(Settings(), Metrics(), aioredis.Redis.from_url("redis://127.0.0.1:1/0"))
    actions = sorted(engine.policy_ctx.catalogue.actions)
    rng = np.random.default_rng(1)
    samples = []
    for i in range(args.samples):
        x = np.zeros(CONTEXT_DIM)
        x[0] = 1.0
        x[1:] = rng.random(CONTEXT_DIM - 1) < 0.2
        action, decision = actions[i % len(actions)], f"{i:024x}"
        samples.append(LearningSample("exposure", decision, action, x.tolist(), probability=0.5,
                                      placement="home_hero", ts=1000.0 + i, mode="holdout" if i % 10 == 0
                                      else "exploit", user_bucket=i % 997))
        if i % 4 == 0:
            samples.append(LearningSample("reward", decision, action, x.tolist(), reward=1.0, probability=0.5,
                                          placement="home_hero", ts=1001.0 + i, mode="exploit",
                                          reward_type="click", user_bucket=i % 997))
    engine.learn(samples, {0: len(samples)})
    if engine.models is not None:
        stream = SyntheticStream(actions, seed=3)
        for _ in range(args.samples):
            features, action, converted, _ = stream.conversion()
            engine.models.models.learn_one(ModelSample.conversion(features, action, converted, 0.0))
            features, churned, _ = stream.churn()
            engine.models.models.learn_one(ModelSample.churn(features, churned, 0.0))
            features, revenue, _ = stream.revenue()
            engine.models.models.learn_one(ModelSample.revenue(features, revenue, 0.0))
        # River's RollingROCAUC buffers its updates until it is read; the worker reads the metrics every second
        # (LiveModels.export), so its snapshots never hold that buffer
        engine.models.models.metrics()
    blob = engine.learned_state().pack()
    models = engine.models.models.snapshot() if engine.models is not None else b""
    print(f"actions {len(actions)}, context {CONTEXT_DIM}, samples {len(samples)}, policy version "
          f"{engine.policy.version}: blob {len(blob):,} B (models {len(models):,} B, "
          f"policy {len(engine.policy.snapshot()):,} B, digests {len(engine.learned_state().seen):,} B)")


if __name__ == "__main__":
    main()
