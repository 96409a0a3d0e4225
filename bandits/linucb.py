"""Disjoint LinUCB with Sherman–Morrison updates and an ε floor that keeps every probability > 0."""

from __future__ import annotations

import numpy as np

from bandits.base import Choice
from bandits.explore import greedy_pick
from bandits.ridge import LinearPolicy


class LinUCB(LinearPolicy):
    """Score = θₐ·x + α √(xᵀ Aₐ⁻¹ x); Aₐ⁻¹ is kept up to date with rank-one updates (no inversion).

    With probability ``epsilon`` the action is drawn uniformly from the eligible set instead, so the
    logged selection probability of every eligible action is at least ε/K (needed for off-policy
    evaluation). Ties on the best score are broken uniformly at random and reported as such.
    A new action starts with θ = 0 and the widest interval, so it is tried soon after it appears.
    ``Choice.means`` holds θₐ·x (the estimate without the bonus), for rules that must not be optimistic.
    """

    name = "linucb"

    def __init__(
        self,
        dim: int,
        alpha: float = 0.5,
        epsilon: float = 0.02,
        ridge: float = 1.0,
        seed: int = 0,
        refresh_every: int = 512,
    ) -> None:
        if not alpha >= 0 or not 0 <= epsilon <= 1:
            raise ValueError(f"need alpha >= 0 and 0 <= epsilon <= 1, got alpha={alpha}, epsilon={epsilon}")
        super().__init__(dim, ridge=ridge, seed=seed, refresh_every=refresh_every)
        self.alpha = alpha
        self.epsilon = epsilon

    def _select(self, x: np.ndarray, actions: list[str], idx: np.ndarray | None) -> Choice:
        mean, var = self._moments(x, idx)
        np.maximum(var, 0.0, out=var)
        scores = (mean + self.alpha * np.sqrt(var)).tolist()
        pick, best, probs = greedy_pick(scores, self.epsilon, self._rng.random())
        return self._choice(actions, scores, probs, pick, best, mean.tolist())

    def _prepare(self, xs: np.ndarray) -> tuple[list[list[float]], list[list[float]]]:
        mean, var = self._moments_many(xs)
        np.maximum(var, 0.0, out=var)
        return (mean + self.alpha * np.sqrt(var)).tolist(), mean.tolist()

    def _select_prepared(self, rows: tuple[list[list[float]], list[list[float]]], row: int, actions: list[str],
                         idx: np.ndarray | None) -> Choice:
        scores, mean = rows[0][row], rows[1][row]
        if idx is not None:
            arms = idx.tolist()
            scores, mean = [scores[a] for a in arms], [mean[a] for a in arms]
        pick, best, probs = greedy_pick(scores, self.epsilon, self._rng.random())
        return self._choice(actions, scores, probs, pick, best, mean)
