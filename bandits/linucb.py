"""Disjoint LinUCB with Sherman–Morrison updates and an ε floor that keeps every probability > 0.

The floor shrinks as the played estimate sharpens (from ``epsilon`` down to ``epsilon_min``), see
``LinUCB``; it is computed from the statistics alone, so every worker with the same samples uses the
same floor and a snapshot needs no extra state.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from bandits.base import Choice
from bandits.explore import greedy_pick
from bandits.ridge import LinearPolicy, ddot

log = logging.getLogger(__name__)

EPSILON_MIN = 0.005  # default lowest exploration share: every eligible action keeps ≥ 0.005/K
EXPLORE_SAMPLES = 30  # default: the floor is ε until the greedy arm has about this many samples like x
RIDGE = 10.0  # default prior λ of Aₐ = λI + Σ x xᵀ (coefficients ~ N(0, σ²/λ): click-rate effects are small)


class LinUCB(LinearPolicy):
    """Score = θₐ·x + α √(xᵀ Aₐ⁻¹ x); Aₐ⁻¹ is kept up to date with rank-one updates (no inversion).

    With probability ε(x) the action is drawn uniformly from the eligible set instead, so the logged
    selection probability of every eligible action is at least ε(x)/K ≥ ``epsilon_min``/K (needed for
    off-policy evaluation); the logged probabilities are the true ones for the ε(x) used.
    The exploration share decays with what the policy knows about the arm it would play:

        ε(x) = max(ε_min, ε · min(1, √(n₀ / (1 + k(x))))),   k(x) = xᵀx / wᵍ(x)² − ridge

    where wᵍ(x) = √(xᵀA_g⁻¹x) is the width of the greedy arm g at x; k(x) is what the greedy arm has
    learned in x's direction beyond its prior (n·xᵀx after n samples equal to x, whatever the ridge):
    ε while that is below n₀ = ``explore_samples``, then ε·√(n₀/(1 + k)) down to ε_min. (With ridge 1 this
    is the ε·√n₀·wᵍ/w₀ of earlier versions, w₀ = √(xᵀx) a cold arm's width.) A new action or a new kind
    of context brings the full ε back. Uniform picks of an arm already well known are what the floor costs
    (each loses the gap to the best arm), so paying ε only while the estimate is young keeps the coverage
    where it is cheap. ``epsilon_min = epsilon`` gives the constant floor of earlier versions.

    Ties on the best score are broken uniformly at random and reported as such (ε(x) uses the width of
    the first of them). A new action starts with θ = 0 and the widest interval, so it is tried soon after
    it appears. The ridge prior λ = 10 (by default; coefficients a priori ~ N(0, σ²/λ)) suits rewards in
    [0, 1] whose dependence on each feature is small: it shrinks the estimates of rarely played actions
    and narrows a cold action's interval by √λ (load_tests/README_bandits.md). ``Choice.means`` holds θₐ·x
    (the estimate without the bonus), for rules that must not be optimistic.
    """

    name = "linucb"
    has_width = True  # score = mean + alpha * width
    decision_params = ("alpha", "epsilon", "epsilon_min", "explore_samples")

    def __init__(
        self,
        dim: int,
        alpha: float = 0.5,
        epsilon: float = 0.02,
        ridge: float = RIDGE,
        seed: int = 0,
        refresh_every: int = 512,
        epsilon_min: float | None = None,
        explore_samples: float = EXPLORE_SAMPLES,
    ) -> None:
        if not alpha >= 0 or not 0 <= epsilon <= 1:
            raise ValueError(f"need alpha >= 0 and 0 <= epsilon <= 1, got alpha={alpha}, epsilon={epsilon}")
        if epsilon_min is None:
            epsilon_min = min(EPSILON_MIN, epsilon)
        if not 0 <= epsilon_min <= epsilon:
            raise ValueError(f"need 0 <= epsilon_min <= epsilon, got epsilon_min={epsilon_min}, epsilon={epsilon}")
        if not explore_samples > 0:
            raise ValueError(f"explore_samples must be > 0, got {explore_samples}")
        super().__init__(dim, ridge=ridge, seed=seed, refresh_every=refresh_every)
        self.alpha = alpha
        self.epsilon = epsilon
        self.epsilon_min = epsilon_min
        self.explore_samples = explore_samples

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "epsilon_min" not in state:  # a snapshot of a LinUCB with the constant floor (same statistics)
            state["epsilon_min"] = min(EPSILON_MIN, state["epsilon"])
            state["explore_samples"] = EXPLORE_SAMPLES
            log.warning(
                "LinUCB snapshot from before the decaying exploration floor: its statistics are read as they "
                "are; the floor now decays from epsilon=%g to epsilon_min=%g (explore_samples=%g)",
                state["epsilon"], state["epsilon_min"], EXPLORE_SAMPLES,
            )
        self.__dict__.update(state)

    def _epsilon(self, width: float, sq_norm: float) -> float:
        """ε(x) from the greedy arm's width and x·x (both >= 0)."""
        eps, low = self.epsilon, self.epsilon_min
        if low >= eps or sq_norm <= 0.0:
            return eps
        # 1 + k with k = xᵀx/w² − ridge (= n·xᵀx after n samples equal to x): the prior does not count
        if width <= 0.0:
            return low
        seen = 1.0 + sq_norm / (width * width) - self.ridge
        if seen <= self.explore_samples:
            return eps
        return max(low, eps * math.sqrt(self.explore_samples / seen))

    def _select(self, x: np.ndarray, actions: tuple[str, ...], idx: np.ndarray | None) -> Choice:
        mean, var = self._moments(x, idx)
        # a handful of arms: Python floats from here on are faster than more small numpy calls
        # (the same IEEE operations as numpy's element-wise ones, so the same scores from the same moments)
        means, alpha, sqrt = mean.tolist(), self.alpha, math.sqrt
        widths = [sqrt(v) if v > 0.0 else 0.0 for v in var.tolist()]
        scores = [m + alpha * w for m, w in zip(means, widths)]  # noqa: B905 (both one per arm)
        eps = self._epsilon(widths[scores.index(max(scores))], ddot(x, x))
        u = self._rng.random()
        pick, best, probs = greedy_pick(scores, eps, u)
        return self._choice(actions, scores, probs, pick, best, means, u < eps, eps / len(scores))

    def _prepare(self, xs: np.ndarray) -> tuple[np.ndarray, list[float]]:
        mean, var = self._moments_many(xs)
        np.maximum(var, 0.0, out=var)
        width = np.sqrt(var)
        scores = mean + self.alpha * width
        sq_norms = np.einsum("rd,rd->r", xs, xs)
        # (row, [scores, means, widths], arm), made Python floats one row at a time in _select_prepared: the
        # floats a request reads are then fresh in the cache (a batch's worth made here were cold by the time
        # they were read: measured), and those of rows decided otherwise are never made
        return np.stack((scores, mean, width), axis=1), sq_norms.tolist()

    def _select_prepared(
        self, rows: tuple[np.ndarray, list[float]], row: int, actions: tuple[str, ...], idx: np.ndarray | None
    ) -> Choice:
        values = rows[0][row]
        if idx is not None:
            values = values.take(idx, axis=1)  # the eligible arms only (one numpy call, not three list scans)
        scores, mean, width = values.tolist()
        eps = self._epsilon(width[scores.index(max(scores))], rows[1][row])
        u = self._rng.random()
        pick, best, probs = greedy_pick(scores, eps, u)
        return self._choice(actions, scores, probs, pick, best, mean, u < eps, eps / len(scores))
