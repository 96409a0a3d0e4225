"""A seeded stream with known truth for the models' tests and benchmarks (no I/O, no global randomness).

Contexts are laid out like ``features.context.build_context`` vectors: device and segment one-hots,
cyclic hour, then the history block (log-counts, recency, tenure) weighted by ``HISTORY_WEIGHT``. The
hidden truth reads the history features unweighted:

- conversion: ``σ(base_a + w_a · x)`` per action, weights drawn from the seed (offers suit different users);
- churn: ``σ(-0.3 - 2.5·recency_web - 1.2·log_views_24h + 1.5·segment_new - 1·segment_vip)``;
- revenue: log-normal with ``log-mean = 3 + 1.2·vip + 0.6·loyal + 0.8·log_revenue_7d``, σ = 0.5.

``change_at``: after that many draws of a kind, the truth flips abruptly (conversion weights and base
rates invert, churn weights change sign, revenue level triples) so drift detection can be tested.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from contracts.events import DEVICES
from features.context import CONTEXT_DIM, CONTEXT_NAMES, HISTORY_SLICE, HISTORY_WEIGHT, SEGMENTS
from models.inputs import model_features

_IDX = {name: i for i, name in enumerate(CONTEXT_NAMES)}
REVENUE_SIGMA = 0.5


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class SyntheticStream:
    def __init__(
        self, actions: Sequence[str] = ("a", "b", "c", "d"), seed: int = 0, change_at: int | None = None,
        draw_seed: int | Sequence[int] | None = None,
    ):
        self.actions = tuple(actions)
        self.seed = seed  # the world: base rates and weights
        self.change_at = change_at
        self.draw_seed = seed if draw_seed is None else draw_seed  # the contexts and outcomes drawn from it
        self._rng = np.random.default_rng(self.draw_seed)
        truth_rng = np.random.default_rng([seed, 1])
        self._base = truth_rng.normal(-3.2, 0.3, size=len(self.actions))
        self._weights = truth_rng.normal(0.0, 0.5, size=(len(self.actions), CONTEXT_DIM))
        self._weights[:, 0] = 0.0  # the bias slot: base rates live in _base
        self._draws = {"conversion": 0, "churn": 0, "revenue": 0}

    def _changed(self, kind: str) -> bool:
        self._draws[kind] += 1
        return self.change_at is not None and self._draws[kind] > self.change_at

    def context(self) -> np.ndarray:
        rng = self._rng
        x = np.zeros(CONTEXT_DIM)
        x[0] = 1.0
        x[_IDX[f"device_{DEVICES[rng.integers(len(DEVICES))]}"]] = 1.0
        x[_IDX[f"segment_{SEGMENTS[rng.choice(len(SEGMENTS), p=(0.35, 0.35, 0.2, 0.1))]}"]] = 1.0
        hour = rng.uniform(0, 24)
        x[_IDX["hour_sin"]], x[_IDX["hour_cos"]] = (
            math.sin(2 * math.pi * hour / 24),
            math.cos(2 * math.pi * hour / 24),
        )
        x[_IDX["weekend"]] = float(rng.random() < 2 / 7)
        for name, scale in (
            ("log_views_1h", 2.0),
            ("log_views_24h", 5.0),
            ("log_clicks_7d", 1.0),
            ("log_conversions_7d", 0.3),
            ("log_email_opens_7d", 1.0),
            ("log_ad_clicks_7d", 0.5),
        ):
            x[_IDX[name]] = math.log1p(rng.poisson(scale))
        x[_IDX["log_revenue_7d"]] = math.log1p(rng.exponential(40.0)) / 4 if rng.random() < 0.3 else 0.0
        x[_IDX["recency_web"]] = math.exp(-rng.exponential(2.0))
        x[_IDX["tenure"]] = rng.random()
        x[HISTORY_SLICE] *= HISTORY_WEIGHT  # as build_context lays them out
        return x

    @staticmethod
    def _unweighted(x: np.ndarray) -> np.ndarray:
        """The context with its history block back in natural units (what the truth reads)."""
        out = x.copy()
        out[HISTORY_SLICE] /= HISTORY_WEIGHT
        return out

    def conversion(self) -> tuple[dict[str, float], str, int, float]:
        """(features, action shown uniformly at random, converted, true probability)."""
        x = self.context()
        i = int(self._rng.integers(len(self.actions)))
        sign = -1.0 if self._changed("conversion") else 1.0
        base = self._base[i] if sign > 0 else -1.0 - self._base[i] / 3
        p = _sigmoid(base + sign * float(self._weights[i] @ self._unweighted(x)))
        return model_features(x), self.actions[i], int(self._rng.random() < p), p

    def churn(self) -> tuple[dict[str, float], int, float]:
        """(features, churned, true probability)."""
        x = self.context()
        u = self._unweighted(x)
        sign = -1.0 if self._changed("churn") else 1.0
        z = -0.3 + sign * (
            -2.5 * u[_IDX["recency_web"]]
            - 1.2 * u[_IDX["log_views_24h"]]
            + 1.5 * u[_IDX["segment_new"]]
            - 1.0 * u[_IDX["segment_vip"]]
        )
        p = _sigmoid(z)
        return model_features(x), int(self._rng.random() < p), p

    def revenue(self) -> tuple[dict[str, float], float, float]:
        """(features, revenue of a conversion, true expected revenue)."""
        x = self.context()
        u = self._unweighted(x)
        level = math.log(3.0) if self._changed("revenue") else 0.0
        mu = (
            3.0
            + level
            + 1.2 * u[_IDX["segment_vip"]]
            + 0.6 * u[_IDX["segment_loyal"]]
            + 0.8 * u[_IDX["log_revenue_7d"]]
        )
        revenue = float(self._rng.lognormal(mu, REVENUE_SIGMA))
        return model_features(x), revenue, math.exp(mu + REVENUE_SIGMA**2 / 2)
