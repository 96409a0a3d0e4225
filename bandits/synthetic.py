"""A seeded synthetic world with a hidden linear click model, for tests and benchmarks.

Contexts look like ``features.context.build_context`` (bias, device and segment one-hots, cyclic hour,
weekend, log-counts, recency, tenure); the click probability of action a is clip(θₐ·x, 0, 1) with a
base rate per action and a context part whose spread is set by ``spread`` (its standard deviation over
contexts), so the best action depends on the context and a context-free bandit cannot reach the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ENGINE_LIKE_DIM = 20
BASE_LOW, BASE_HIGH = 0.2, 0.3  # click rate of each action for a context at the mean
CALIBRATION_ROWS = 4096
# (column, mean count of an average user, divisor) like the log-count features of the engine's context
COUNT_FEATURES = ((11, 1, 1), (12, 8, 2), (13, 0.5, 1), (14, 0.1, 1), (15, 2, 4), (17, 1, 1), (18, 0.3, 1))


@dataclass(frozen=True, slots=True)
class Stream:
    """``n`` requests: contexts (n, d), click probabilities of every action (n, K), and one uniform per
    request so that every policy replayed on the stream gets the same luck: reward = uniform < p."""

    contexts: np.ndarray
    probabilities: np.ndarray
    uniforms: np.ndarray

    def reward(self, t: int, arm: int) -> float:
        return 1.0 if self.uniforms[t] < self.probabilities[t, arm] else 0.0


class LinearWorld:
    """Hidden truth: θₐ for each of ``n_actions`` actions in ``dim`` features, drawn from ``seed``."""

    def __init__(
        self, n_actions: int = 10, dim: int = ENGINE_LIKE_DIM, seed: int = 0, spread: float = 0.1
    ) -> None:
        if n_actions < 1 or dim < 1 or spread < 0:
            raise ValueError(f"need n_actions >= 1, dim >= 1, spread >= 0; got {n_actions}, {dim}, {spread}")
        self.n_actions = n_actions
        self.dim = dim
        self.seed = seed
        self.spread = spread
        self.actions = [f"offer_{i}" for i in range(n_actions)]
        self._rng = np.random.default_rng(seed)
        raw = self._rng.normal(size=(n_actions, dim))
        raw[:, 0] = 0.0
        part = self.contexts(CALIBRATION_ROWS) @ raw.T  # context part of each action's click rate
        sd = part.std(axis=0)
        scale = spread / np.where(sd > 0, sd, 1.0)
        self._theta = raw * scale[:, None]
        base = self._rng.uniform(BASE_LOW, BASE_HIGH, size=n_actions)
        self._theta[:, 0] = base - part.mean(axis=0) * scale

    def contexts(self, n: int) -> np.ndarray:
        rng = self._rng
        x = np.zeros((n, max(self.dim, ENGINE_LIKE_DIM)))
        x[:, 0] = 1.0
        x[np.arange(n), 1 + rng.integers(0, 3, n)] = 1.0  # device
        x[np.arange(n), 4 + rng.integers(0, 4, n)] = 1.0  # segment
        hour = rng.uniform(0, 24, n)
        x[:, 8], x[:, 9] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
        x[:, 10] = rng.random(n) < 2 / 7
        activity = rng.gamma(1.0, 1.0, n)  # users differ in how active they are; counts follow
        for col, rate, scale in COUNT_FEATURES:
            x[:, col] = np.log1p(rng.poisson(rate * activity)) / scale
        x[:, 16] = np.exp(-rng.exponential(2.0, n))
        x[:, 19] = rng.random(n)
        if self.dim > ENGINE_LIKE_DIM:
            x[:, ENGINE_LIKE_DIM:] = rng.random((n, self.dim - ENGINE_LIKE_DIM))
        return x[:, : self.dim]

    def probabilities(self, contexts: np.ndarray) -> np.ndarray:
        return np.clip(contexts @ self._theta.T, 0.0, 1.0)

    def stream(self, n: int) -> Stream:
        xs = self.contexts(n)
        return Stream(xs, self.probabilities(xs), self._rng.random(n))
